"""Whole-pipeline benchmark (`make bench`): the main job at 1M and 6M customers with default settings, per stage.

For each size, on the generated inputs in `benchmarks/data/customers-N` (generated once with seed 1, then reused),
each step in a fresh process, one after the other:
1. `segscale`: the main job as a scheduled run does it on a new warehouse (`run_pipeline`: ingest, validate,
   churn training and the CLV fit since no champion exists yet, features, segment with scoring, migration, plan)
   with the default configuration. Per stage: wall time; rows/s (input rows for ingest and validate, customers
   for the others); and from Spark's own metrics, rows read from files, shuffle bytes written and spill (memory
   and disk). Every pipeline stage tags its Spark jobs `segscale-stage:<name>`; at the end the step reads the
   metrics of those jobs' stages from the driver's REST API. Plus the driver's peak RSS: the Python process and,
   in local mode, the JVM (which is driver and executors at once);
   `segscale_delta_spark`: the same with every table written by delta-spark (`delta.backend: delta-spark`, the
   jars of `segscale jars`), compared with the first as ratios;
2. `duckdb`: the reference feature query of `benchmarks/reference_features.sql` over the same Parquet files;
3. `plain_pyspark`: the straightforward PySpark version of the features and scores (see `bench_features.py`).

Ratios within the run: time(6M) / time(1M), driver peak RSS 6M / 1M, segscale's features stage against the DuckDB
query, and the plain PySpark job against segscale's features + segment stages. Results:
`benchmarks/results/<date>-pipeline.json`; summary in `docs/benchmarks.md`.

    python benchmarks/bench_pipeline.py                      # 1M and 6M, about 90 minutes on 2 cores
    python benchmarks/bench_pipeline.py --sizes 100000 --steps segscale   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from common import ensure_generated, jvm_peak_rss_mb, machine, python_peak_rss_mb, run_isolated, write_report

HERE = Path(__file__).resolve().parent
SNAPSHOT = dt.date(2024, 12, 31)
# segscale once per Delta backend: the embedded default (delta-rs), then delta-spark (docs/tables.md).
BACKEND_STEPS = {"segscale": "delta-rs", "segscale_delta_spark": "delta-spark"}
STEPS = (*BACKEND_STEPS, "duckdb", "plain_pyspark")
METRICS = {"shuffle_write_bytes": "shuffleWriteBytes", "memory_spill_bytes": "memoryBytesSpilled",
           "disk_spill_bytes": "diskBytesSpilled", "file_rows_read": "inputRecords"}


def step_segscale(inputs: Path, work: Path, backend: str) -> dict:
    from segscale.config import load_settings
    from segscale.pipeline import STAGE_TAG, run_pipeline
    from segscale.session import get_spark

    # The defaults, plus a Spark UI that keeps every job and stage of the run for the metrics read at the end.
    settings = load_settings(None, {"paths.input": str(inputs), "paths.warehouse": str(work / "warehouse"),
                                    "delta.backend": backend,
                                    "spark.conf": {"spark.ui.retainedJobs": "100000",
                                                   "spark.ui.retainedStages": "100000"}})
    spark = get_spark(settings)
    start = time.perf_counter()
    summary = run_pipeline(spark, settings, SNAPSHOT)
    wall = time.perf_counter() - start
    spark_metrics, spark_jobs = _stage_metrics(spark.sparkContext, STAGE_TAG)
    # The scheduled routine run: the same snapshot again, now that champions exist (no training), in the same
    # session (a warm JVM: a small advantage over a fresh process).
    start = time.perf_counter()
    routine = run_pipeline(spark, settings, SNAPSHOT)
    routine_wall = time.perf_counter() - start
    jvm_rss = jvm_peak_rss_mb()
    spark.stop()
    customers = summary["stages"]["features"]["published"]["customer_features"]["rows"]
    input_rows = {name: counts["rows"] for name, counts in summary["stages"]["validate"]["tables"].items()}
    stages = {}
    for name, record in summary["stages"].items():
        # Rows: every input row for the stages that read the inputs, customers for the others.
        rows = sum(input_rows.values()) if name in ("ingest", "validate") else customers
        seconds = record["seconds"]
        stages[name] = {"seconds": seconds, "rows": rows,
                        "rows_per_s": round(rows / seconds) if seconds >= 0.5 else None,
                        **spark_metrics.get(name, dict.fromkeys(METRICS, 0))}
    tables = {table.name: {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}
              for table in sorted((work / "warehouse").iterdir()) if (table / "_delta_log").is_dir()
              for files in [list(table.rglob("*.parquet"))]}
    return {"wall_seconds": round(wall, 1), "customers": customers, "input_rows": input_rows,
            "stages": stages, "tables": tables, "spark_jobs": spark_jobs,
            "routine": {"wall_seconds": round(routine_wall, 1),
                        "stages": {name: record["seconds"] for name, record in routine["stages"].items()}},
            "driver_python_peak_rss_mb": python_peak_rss_mb(), "driver_jvm_peak_rss_mb": jvm_rss}


def _stage_metrics(sc, prefix: str) -> tuple[dict[str, dict[str, int]], int]:
    """Shuffle, spill and records read per pipeline stage, summed over the Spark stages of its tagged jobs."""
    api = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
    jobs = json.load(urllib.request.urlopen(f"{api}/jobs"))
    owner: dict[int, str] = {}
    for job in sorted(jobs, key=lambda j: j["jobId"]):  # a stage reused by a later job ran in the first one
        tag = next((t[len(prefix):] for t in job.get("jobTags", []) if t.startswith(prefix)), None)
        for stage_id in job["stageIds"]:
            if tag is not None:
                owner.setdefault(stage_id, tag)
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(METRICS, 0))
    for stage in json.load(urllib.request.urlopen(f"{api}/stages")):
        name = owner.get(stage["stageId"])
        if name is None or stage["status"] != "COMPLETE":
            continue
        for key, field in METRICS.items():
            totals[name][key] += stage[field]
    return dict(totals), len(jobs)


def step_reference(engine: str, customers: int, data_dir: Path) -> dict:
    """The DuckDB query or the plain PySpark job, exactly as `bench_features.py` runs them (same files)."""
    return run_isolated(str(HERE / "bench_features.py"), "--engine", engine, "--customers", str(customers),
                        "--data-dir", str(data_dir))


def run_size(customers: int, data_dir: Path, steps: list[str]) -> dict:
    inputs = data_dir / f"customers-{customers}"
    work = data_dir / f"work-{customers}"
    ensure_generated(inputs, customers)
    results = {}
    for step in steps:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"{customers:,} customers: {step} ...", flush=True)
        if step in BACKEND_STEPS:
            results[step] = run_isolated(__file__, "--step", step, "--inputs", str(inputs), "--work", str(work))
        else:
            results[step] = step_reference(step, customers, data_dir)
        print(f"  {json.dumps(results[step])}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    if {"segscale", "duckdb"} <= results.keys():
        duckdb = results["duckdb"]["wall_seconds"]
        results["ratios"] = {
            "first_run_over_duckdb": round(results["segscale"]["wall_seconds"] / duckdb, 2),
            "routine_run_over_duckdb": round(results["segscale"]["routine"]["wall_seconds"] / duckdb, 2),
            # The routine run's features stage computes the features from the events; a first run's only writes
            # the features the CLV fit computed and kept.
            "features_over_duckdb": round(results["segscale"]["routine"]["stages"]["features"] / duckdb, 2),
        }
    if {"segscale", "segscale_delta_spark"} <= results.keys():
        rs, spark = results["segscale"], results["segscale_delta_spark"]
        results["backends"] = {
            "first_run_delta_spark_over_delta_rs": round(spark["wall_seconds"] / rs["wall_seconds"], 2),
            "routine_run_delta_spark_over_delta_rs": round(spark["routine"]["wall_seconds"]
                                                           / rs["routine"]["wall_seconds"], 2),
            "routine_stages_delta_spark_over_delta_rs": {
                name: round(seconds / rs["routine"]["stages"][name], 2)
                for name, seconds in spark["routine"]["stages"].items()
                if rs["routine"]["stages"].get(name, 0) >= 0.5},
        }
    if {"segscale", "duckdb", "plain_pyspark"} <= results.keys():
        stages = results["segscale"]["stages"]
        ours = stages["features"]["seconds"] + stages["segment"]["seconds"]
        results["ratios"]["plain_pyspark_over_features_and_segment"] = round(
            results["plain_pyspark"]["wall_seconds"] / ours, 2)
    return results


def scaling(by_size: dict[int, dict]) -> dict:
    """The targets: time(6M) / time(1M) ≤ 6.3 and driver peak RSS at 6M within 20% of 1M (largest over smallest)."""
    small, large = min(by_size), max(by_size)
    a, b = by_size[small]["segscale"], by_size[large]["segscale"]
    ratio = {"sizes": f"{large} / {small}", "customers": round(large / small, 2),
             "wall_time": round(b["wall_seconds"] / a["wall_seconds"], 2),
             "driver_python_peak_rss": round(b["driver_python_peak_rss_mb"] / a["driver_python_peak_rss_mb"], 2)}
    if a["driver_jvm_peak_rss_mb"] and b["driver_jvm_peak_rss_mb"]:
        ratio["driver_jvm_peak_rss"] = round(b["driver_jvm_peak_rss_mb"] / a["driver_jvm_peak_rss_mb"], 2)
    ratio["per_stage_time"] = {name: round(b["stages"][name]["seconds"] / a["stages"][name]["seconds"], 2)
                               for name in a["stages"] if name in b["stages"] and a["stages"][name]["seconds"] >= 0.5}
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,6000000")
    parser.add_argument("--data-dir", default=str(HERE / "data"))
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print("RESULT " + json.dumps(step_segscale(Path(args.inputs), Path(args.work), BACKEND_STEPS[args.step])))
        return 0

    sizes = sorted(int(s) for s in args.sizes.split(","))
    by_size = {n: run_size(n, Path(args.data_dir), args.steps.split(",")) for n in sizes}
    report = {"benchmark": "whole pipeline, default settings", "date": dt.date.today().isoformat(),
              "machine": machine(), "snapshot_date": SNAPSHOT.isoformat(), "results": by_size}
    if len(sizes) > 1 and all("segscale" in r for r in by_size.values()):
        report["scaling"] = scaling(by_size)
        print("scaling:", json.dumps(report["scaling"]))
    write_report("pipeline", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
