"""The Makefile explains a missing or old Java before anything else happens."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from frames import ROOT


def _bin_dir(tmp_path: Path, java_version: str | None) -> Path:
    """A PATH holding only what the check needs, and a fake `java` when a version is given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "sed", "head"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    if java_version:
        fake = bin_dir / "java"
        fake.write_text(f'#!/bin/sh\necho \'openjdk version "{java_version}" 2021-01-01\' >&2\n')
        fake.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(("java_version", "message"), [
    (None, "'java' was not found on PATH"),
    ("11.0.2", "'java' on PATH is version 11"),
])
def test_make_explains_what_java_to_install(tmp_path, java_version, message):
    make = shutil.which("make")
    result = subprocess.run([make, "-s", "-C", str(ROOT), "check-java"], capture_output=True, text=True,
                            env={"PATH": str(_bin_dir(tmp_path, java_version))})
    assert result.returncode != 0
    assert message in result.stdout
    assert "Java 17" in result.stdout or "JDK 17" in result.stdout


def test_make_accepts_java_17(tmp_path):
    make = shutil.which("make")
    result = subprocess.run([make, "-s", "-C", str(ROOT), "check-java"], capture_output=True, text=True,
                            env={"PATH": str(_bin_dir(tmp_path, "17.0.15"))})
    assert result.returncode == 0, result.stdout + result.stderr
