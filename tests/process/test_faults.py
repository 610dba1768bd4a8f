"""Faults during a run lose or duplicate nothing: a Python worker killed mid-write, the process killed between the
data files and the commit, and two runs of the same snapshot at once. The faults are real (a dead worker, a
process exit, two processes); tests/faulty.py injects them from outside the library (docs/operations.md)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from frames import TESTS, free_port, run_command, settings_for
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from segscale import catalog
from segscale.analyst.sql import run_query, visible_tables
from segscale.cli import main
from segscale.config import Settings
from segscale.io.delta import Warehouse
from segscale.pipeline import generate_inputs, run_pipeline

SNAPSHOT = dt.date(2024, 6, 30)
TABLES = (catalog.QUARANTINE, catalog.CUSTOMER_FEATURES, catalog.CUSTOMER_SCORES)
# Small inputs and no models: these tests are about the writes, and each run starts its own JVM.
WITHOUT_MODELS = {"churn": {"enabled": False}, "clv": {"enabled": False}, "tiers": {"basis": "monetary"}}
ENV_WITHOUT_MODELS = {"SEGSCALE_CHURN__ENABLED": "false", "SEGSCALE_CLV__ENABLED": "false",
                      "SEGSCALE_TIERS__BASIS": "monetary"}


@pytest.fixture(scope="module")
def inputs(spark, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fault-inputs")
    generate_inputs(spark, Settings.model_validate({"generate": {"customers": 400, "seed": 4, "dirty_rate": 0.01}}),
                    str(out))
    return out


@pytest.fixture(scope="module")
def clean(spark, inputs, tmp_path_factory) -> Warehouse:
    """The same snapshot published by an undisturbed run: what every faulty run must end up with."""
    root = tmp_path_factory.mktemp("clean") / "wh"
    settings = settings_for(inputs, root, **WITHOUT_MODELS)
    run_pipeline(spark, settings, SNAPSHOT)
    return Warehouse(spark, str(root), settings.delta)


def run_process(inputs: Path, warehouse: Path, faults: str | None = None, master: str = "local[1]"
                ) -> subprocess.Popen:
    """`segscale run` in its own process and embedded session, optionally with faults (tests/faulty.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_", "SEGSCALE_"))}
    env.update(ENV_WITHOUT_MODELS, SEGSCALE_SPARK__MASTER=master)
    command = [str(TESTS / "faulty.py"), faults] if faults else ["-m", "segscale"]
    return subprocess.Popen(
        [sys.executable, *command, "run", "--input", str(inputs), "--warehouse", str(warehouse),
         "--snapshot-date", SNAPSHOT.isoformat(), "--config", str(warehouse.parent / "none.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=warehouse.parent)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=600)
    return process.returncode, err


def assert_same_tables(spark, warehouse: Path, clean: Warehouse) -> None:
    published = Warehouse(spark, str(warehouse), clean.store.settings)
    for table in TABLES:
        got = published.read(table).drop("run_id")
        assertDataFrameEqual(got, clean.read(table).drop("run_id"), rtol=0, atol=0)
        if table.key:
            assert got.count() == got.select(*table.key).distinct().count(), f"{table} has duplicates"


def published_cleanly(clean: Warehouse, warehouse: Path) -> None:
    """`warehouse` as the undisturbed run left its own: version 0 of every table."""
    shutil.copytree(clean.root.removeprefix("file://"), warehouse)


def committed_files(table: Path) -> set[str]:
    return {str(Path(uri.removeprefix("file://"))) for uri in DeltaTable(str(table)).file_uris()}


def data_files(table: Path) -> set[str]:
    return {str(p) for p in table.rglob("*.parquet")}


@pytest.fixture
def warehouse(tmp_path) -> Path:
    (tmp_path / "none.yaml").write_text("{}\n")  # no conf/local.yaml from the working directory
    return tmp_path / "wh"


def test_a_killed_worker_is_retried_and_a_process_killed_before_a_commit_leaves_that_table_as_it_was(
        spark, inputs, clean, warehouse):
    # One process, two faults (a cold `segscale run` costs about 30 CPU-seconds): while it writes
    # customer_features, the first attempt of the first task kills its Python worker after writing part of its file
    # (local[2,2]: two task attempts, as a cluster's spark.task.maxFailures allows); later the process exits as if
    # killed, after customer_scores' data files are written and before their commit.
    published_cleanly(clean, warehouse)
    features, scores = warehouse / "customer_features", warehouse / "customer_scores"
    before = {table: data_files(table) for table in (features, scores)}
    faults = "kill-worker:customer_features,exit-before-commit:customer_scores"
    code, err = finish(run_process(inputs, warehouse, faults, master="local[2,2]"))
    assert code == 137, err[-3000:]
    # The retried task's table was committed before the kill, with the undisturbed run's rows; the killed attempt's
    # file is on disk but not in the log.
    assert DeltaTable(str(features)).version() == 1
    killed_attempt = data_files(features) - committed_files(features) - before[features]
    assert killed_attempt and all(Path(f).name.startswith("part-00000-0-") for f in killed_attempt)
    # The table whose commit never came stays at its previous version; its orphaned files are invisible.
    assert DeltaTable(str(scores)).version() == 0 and committed_files(scores) == before[scores]
    orphans = data_files(scores) - before[scores]
    assert orphans
    assert_same_tables(spark, warehouse, clean)
    # Readers (`segscale sql`, the report, the notebooks) still see the clean run whole: not the quarantine and
    # features the killed run committed, but every table at the version the clean run recorded.
    (clean_run,) = DeltaTable(str(warehouse / "runs")).to_pyarrow_table()["run_id"].to_pylist()
    visible = visible_tables(str(warehouse))
    for table in TABLES:
        assert DeltaTable(str(warehouse / table.name)).version() == (0 if table is catalog.CUSTOMER_SCORES else 1)
        assert visible[table.name].version() == 0, table
    for table in (catalog.QUARANTINE, catalog.CUSTOMER_SCORES):
        assert run_query(str(warehouse), f"SELECT DISTINCT run_id FROM {table}").column(0).to_pylist() == [
            clean_run], table
    run_pipeline(spark, settings_for(inputs, warehouse, **WITHOUT_MODELS), SNAPSHOT)  # the rerun publishes correctly
    assert DeltaTable(str(scores)).version() == 1
    assert_same_tables(spark, warehouse, clean)
    # without keeping what earlier runs recorded (maintenance.keep_runs 0), only the committed files stay
    (warehouse.parent / "keep-no-runs.yaml").write_text("maintenance: {keep_runs: 0}\n")
    for table in (features, scores):
        assert main(["vacuum", table.name, "--warehouse", str(warehouse), "--retention-hours", "0",
                     "--config", str(warehouse.parent / "keep-no-runs.yaml")]) == 0
        assert data_files(table) == committed_files(table)
    assert not (killed_attempt | orphans) & (data_files(features) | data_files(scores))


def wait_for(signal: Path, process: subprocess.Popen) -> None:
    """Until `process` creates `signal`; the test fails if the process ends first."""
    deadline = time.monotonic() + 600
    while not signal.exists():
        assert process.poll() is None, f"exited {process.returncode} first: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {signal.name} after 600 s"
        time.sleep(0.1)


def test_two_runs_of_the_same_snapshot_at_once_publish_one_result(spark, inputs, clean, warehouse):
    # The race made certain: the first run has written customer_features' data files and waits to commit them
    # (tests/faulty.py) while a second run publishes the same snapshot whole; then the first commits.
    first = run_process(inputs, warehouse, "wait-before-commit:customer_features")
    wait_for(warehouse.parent / "customer_features.waiting", first)
    run_pipeline(spark, settings_for(inputs, warehouse, **WITHOUT_MODELS), SNAPSHOT)
    (warehouse.parent / "customer_features.go").touch()
    code, err = finish(first)
    # The loser says so, names the table, and publishes nothing half-way.
    assert code == 1, err[-3000:]
    assert "customer_features was created by another writer" in err and "Traceback" not in err
    for table in TABLES:
        history = DeltaTable(str(warehouse / table.name)).history()  # the log stays readable
        assert history and all("userMetadata" in entry for entry in history)
    assert_same_tables(spark, warehouse, clean)
    scores = Warehouse(spark, str(warehouse), clean.store.settings).read(catalog.CUSTOMER_SCORES)
    assert scores.where(F.col("snapshot_date") != F.lit(SNAPSHOT)).count() == 0


@pytest.fixture
def no_models(monkeypatch):
    for key, value in ENV_WITHOUT_MODELS.items():
        monkeypatch.setenv(key, value)


def assert_nothing_half_published(warehouse: Path) -> None:
    """Every table that exists is readable and holds exactly its committed files' rows."""
    for table in (p for p in warehouse.iterdir() if (p / "_delta_log").exists()):
        if not DeltaTable.is_deltatable(str(table)):  # a create that failed before its first commit: no table
            assert not list((table / "_delta_log").glob("*.json")), table.name
            continue
        delta = DeltaTable(str(table))
        delta.to_pyarrow_table()
        assert committed_files(table) <= data_files(table), table.name


def test_a_full_disk_is_a_clear_error_and_nothing_is_half_published(spark, inputs, tmp_path, capsys, no_models):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up here: {mounted.stderr.decode().strip()}")
    try:
        assert run_command(spark, inputs, small / "wh", SNAPSHOT) == 3
        err = capsys.readouterr().err
        assert "the warehouse storage refused the write to" in err and "No space left on device" in err
        assert "Traceback" not in err
        assert_nothing_half_published(small / "wh")
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_warehouse_without_write_permission_is_a_clear_error_and_nothing_changes(spark, inputs, clean, warehouse,
                                                                                  capsys, no_models):
    published_cleanly(clean, warehouse)
    versions = {t: DeltaTable(str(warehouse / t.name)).version() for t in TABLES}
    # Root may write anywhere a mode allows, so the warehouse is made immutable instead of read-only.
    locked = subprocess.run(["chattr", "-R", "+i", str(warehouse)], capture_output=True)
    if locked.returncode != 0:
        pytest.skip(f"cannot make the warehouse immutable here: {locked.stderr.decode().strip()}")
    try:
        assert run_command(spark, inputs, warehouse, SNAPSHOT) == 3
    finally:
        subprocess.run(["chattr", "-R", "-i", str(warehouse)], check=True)
    err = capsys.readouterr().err
    assert f"refused the write to {warehouse}/quarantine" in err and "Operation not permitted" in err
    assert {t: DeltaTable(str(warehouse / t.name)).version() for t in TABLES} == versions
    assert_same_tables(spark, warehouse, clean)


def test_storage_that_cannot_be_reached_on_read_exits_3_naming_the_table(tmp_path, monkeypatch, capsys):
    """A warehouse on an object store nothing answers at: reading a table's log is a storage error (exit 3) that
    names the table and the cause, not a missing table (exit 2). A path that names no table keeps exit 2, also
    when a regular file stands where a directory should be."""
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ALLOW_HTTP": "true",
                        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"
                        }.items():
        monkeypatch.setenv(name, value)
    assert main(["history", "customer_scores", "--warehouse", "s3://segscale-test/wh"]) == 3
    err = capsys.readouterr().err
    assert "cannot read s3://segscale-test/wh/customer_scores: the warehouse storage refused the read or " \
           "could not be reached" in err and "Connection refused" in err and "Traceback" not in err
    # sql and the report look for the warehouse first, through pyarrow (which retries for about 10 s)
    assert main(["sql", "--warehouse", "s3://segscale-test/wh", "select 1"]) == 3
    assert "cannot read s3://segscale-test/wh: the warehouse storage refused the read" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a directory")
    assert main(["history", "customer_scores", "--warehouse", str(tmp_path / "file" / "wh")]) == 2
    assert f"no Delta table at {tmp_path}/file/wh/customer_scores" in capsys.readouterr().err
