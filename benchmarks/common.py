"""What the benchmark scripts share: running one measurement in a fresh process, and saving a report."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_isolated(script: str, *args: str) -> dict:
    """Run `script` with `args` in a fresh Python process and return the JSON it prints after `RESULT `."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{Path(script).name} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def write_report(name: str, report: dict) -> Path:
    out = HERE / "results" / f"{dt.date.today().isoformat()}-{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")
    return out
