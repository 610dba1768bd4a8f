"""Foundation benchmark: generate N customers on the executors and write every table through the Delta layer.

For each size it runs a fresh process (so peak memory is that size's own) and reports per table: wall time,
rows, rows/s, files; and the driver's peak memory: the Python driver's peak RSS and, in local mode, the JVM's
(which is driver and executors at once). Sizes are compared as ratios inside one run.

    python benchmarks/bench_foundation.py                  # 1M and 6M customers
    python benchmarks/bench_foundation.py --sizes 200000   # quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

from common import jvm_peak_rss_mb, machine, python_peak_rss_mb, run_isolated, write_report

HERE = Path(__file__).resolve().parent


def run_one(customers: int, data_dir: Path) -> dict:
    from segscale.config import Settings
    from segscale.pipeline import generate_inputs
    from segscale.session import get_spark

    settings = Settings.model_validate({
        "spark": {"driver_memory": "12g"},
        "delta": {"backend": "delta-rs"},
        "generate": {"customers": customers, "seed": 1},
    })
    out = data_dir / f"customers-{customers}"
    shutil.rmtree(out, ignore_errors=True)
    spark = get_spark(settings)
    start = time.perf_counter()
    summary = generate_inputs(spark, settings, str(out))
    wall = time.perf_counter() - start
    jvm_peak = jvm_peak_rss_mb()  # VmHWM: the high-water mark of the whole run
    spark.stop()
    tables = {}
    for stage, record in summary["stages"].items():
        tables[stage.removeprefix("generate ")] = {
            "seconds": record["seconds"], "rows": record["rows"], "files": record["files"],
            "rows_per_s": round(record["rows"] / record["seconds"]) if record["seconds"] else None,
        }
    return {
        "customers": customers,
        "wall_seconds": round(wall, 1),
        "rows_written": sum(t["rows"] for t in tables.values()),
        "rows_per_s": round(sum(t["rows"] for t in tables.values()) / wall),
        "tables": tables,
        "driver_python_peak_rss_mb": python_peak_rss_mb(),
        "driver_jvm_peak_rss_mb": jvm_peak,
        "data_bytes": sum(f.stat().st_size for f in out.rglob("*.parquet")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,6000000", help="comma-separated customer counts")
    parser.add_argument("--data-dir", default=str(HERE / "data"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, data_dir)))
        return 0

    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"generating {size:,} customers ...", flush=True)
        result = run_isolated(__file__, "--one", str(size), "--data-dir", str(data_dir))
        results.append(result)
        print(f"  {result['wall_seconds']:8.1f} s  {result['rows_written']:>12,} rows  "
              f"{result['rows_per_s']:>10,} rows/s  driver Python peak RSS {result['driver_python_peak_rss_mb']} MB  "
              f"JVM peak RSS {result['driver_jvm_peak_rss_mb']} MB")
        for name, t in result["tables"].items():
            print(f"      {name:<15} {t['seconds']:8.1f} s {t['rows']:>12,} rows {t['rows_per_s']:>10,} rows/s "
                  f"{t['files']:>4} files")
    report = {
        "benchmark": "foundation: generate and write through the Delta layer",
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "results": results,
    }
    if len(results) > 1:
        small, large = results[0], results[-1]
        report["ratios"] = {
            "customers": large["customers"] / small["customers"],
            "wall_time": round(large["wall_seconds"] / small["wall_seconds"], 2),
            "driver_python_peak_rss": round(large["driver_python_peak_rss_mb"] / small["driver_python_peak_rss_mb"], 2),
        }
        print("ratios (largest / smallest):", report["ratios"])
    write_report("foundation", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
