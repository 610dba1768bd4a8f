"""What the benchmark scripts share: running one measurement in a fresh process, and saving a report."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
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


def python_peak_rss_mb() -> float:
    """Peak resident memory of this Python process (the driver's Python side), in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def jvm_peak_rss_mb() -> float | None:
    """Peak RSS of this process's Java child (the local-mode JVM, driver and executors at once), from /proc."""
    try:
        children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            if "java" in Path(f"/proc/{pid}/comm").read_text():
                return round(int(next(line.split()[1] for line in status.splitlines()
                                      if line.startswith("VmHWM"))) / 1024, 1)
        except (OSError, StopIteration):
            continue
    return None


def machine() -> dict:
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "memory_gb": round(memory_gb, 1), "platform": platform.platform(),
            "python": platform.python_version()}


def ensure_generated(inputs: Path, customers: int) -> None:
    """Generate `customers` customers (seed 1) into `inputs` unless an earlier benchmark already did."""
    if (inputs / "transactions" / "_delta_log").exists():
        return
    print(f"generating {customers:,} customers into {inputs} ...", flush=True)
    subprocess.run([sys.executable, "-m", "segscale", "generate", "--customers", str(customers), "--seed", "1",
                    "--out", str(inputs)], check=True, capture_output=True)
