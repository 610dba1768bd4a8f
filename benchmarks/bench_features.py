"""Features + segmentation benchmark: segscale vs one DuckDB query vs a straightforward PySpark job.

All three read the same generated input files (Delta tables written by `segscale generate`; DuckDB reads their
Parquet files) and write their result. Each engine runs in a fresh process, one after the other, so peak memory
is its own and the timings are ratios measured in one run.

    python benchmarks/bench_features.py --customers 6000000   # reuses benchmarks/data/customers-6000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import run_isolated, write_report

HERE = Path(__file__).resolve().parent
SNAPSHOT = dt.date(2024, 12, 31)


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _settings(inputs: Path, warehouse: Path):
    from segscale.config import Settings
    return Settings.model_validate({
        "paths": {"input": str(inputs), "warehouse": str(warehouse)},
        "spark": {"driver_memory": "12g"},
        "delta": {"backend": "delta-rs"},
    })


def engine_segscale(inputs: Path, work: Path) -> dict:
    from segscale.pipeline import run_pipeline
    from segscale.session import get_spark

    settings = _settings(inputs, work / "warehouse")
    spark = get_spark(settings)
    start = time.perf_counter()
    summary = run_pipeline(spark, settings, SNAPSHOT)
    wall = time.perf_counter() - start
    stages = {name: record["seconds"] for name, record in summary["stages"].items()}
    spark.stop()
    return {"wall_seconds": round(wall, 1), "stages": stages,
            "features_and_segmentation_seconds": round(stages["features"] + stages["segment"], 1),
            "driver_python_peak_rss_mb": _rss_mb()}


def engine_duckdb(inputs: Path, work: Path) -> dict:
    import duckdb
    from deltalake import DeltaTable

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name in ("customers", "transactions", "interactions"):
        files = ", ".join(f"'{f}'" for f in DeltaTable(str(inputs / name)).file_uris())
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{files}])")
    query = (HERE / "reference_features.sql").read_text().split("\n", 3)[3]
    params = {"snapshot": SNAPSHOT, "snapshot_end": dt.datetime.combine(SNAPSHOT + dt.timedelta(days=1), dt.time()),
              "lookback_days": 100_000}
    start = time.perf_counter()
    con.execute(f"COPY ({query}) TO '{work / 'duckdb_features.parquet'}' (FORMAT parquet)", params)
    wall = time.perf_counter() - start
    return {"wall_seconds": round(wall, 1), "driver_python_peak_rss_mb": _rss_mb()}


def engine_plain_pyspark(inputs: Path, work: Path) -> dict:
    """What a first PySpark version looks like: groupBy/agg with countDistinct, then global-window ntile."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from segscale.session import get_spark
    from segscale.tables import DeltaStore

    settings = _settings(inputs, work / "plain")
    spark = get_spark(settings)
    store = DeltaStore(spark, settings.delta)
    start = time.perf_counter()
    tx = store.read(str(inputs / "transactions")).where(F.col("ts") < F.lit(SNAPSHOT + dt.timedelta(days=1)))
    purchases = tx.where(F.col("transaction_type") == "purchase")
    per_customer = purchases.groupBy("customer_id").agg(
        F.count("*").alias("frequency"),
        F.sum("amount").alias("monetary"),
        F.datediff(F.lit(SNAPSHOT), F.max(F.to_date("ts"))).alias("recency_days"),
        F.countDistinct("category").alias("distinct_categories"),
        F.countDistinct(F.to_date("ts")).alias("purchase_days"),
        F.sum(F.when(F.col("ts") >= F.lit(SNAPSHOT - dt.timedelta(days=29)), F.col("amount"))).alias("spend_30d"),
        F.sum(F.when(F.col("ts") >= F.lit(SNAPSHOT - dt.timedelta(days=89)), F.col("amount"))).alias("spend_90d"),
        F.sum(F.when(F.col("ts") >= F.lit(SNAPSHOT - dt.timedelta(days=364)), F.col("amount"))).alias("spend_365d"),
    )
    customers = store.read(str(inputs / "customers")).select("customer_id")
    features = customers.join(per_customer, "customer_id", how="left")
    scored = features.select(
        "*",
        F.ntile(5).over(Window.orderBy(F.col("recency_days").desc())).alias("r_score"),
        F.ntile(5).over(Window.orderBy("frequency")).alias("f_score"),
        F.ntile(5).over(Window.orderBy("monetary")).alias("m_score"),
    )
    scored.write.mode("overwrite").parquet(str(work / "plain_features"))
    wall = time.perf_counter() - start
    spark.stop()
    return {"wall_seconds": round(wall, 1), "driver_python_peak_rss_mb": _rss_mb()}


ENGINES = {"segscale": engine_segscale, "duckdb": engine_duckdb, "plain_pyspark": engine_plain_pyspark}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=6_000_000)
    parser.add_argument("--data-dir", default=str(HERE / "data"))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    args = parser.parse_args()
    inputs = Path(args.data_dir) / f"customers-{args.customers}"
    work = Path(args.data_dir) / f"work-{args.customers}"
    if args.engine:
        print("RESULT " + json.dumps(ENGINES[args.engine](inputs, work)))
        return 0

    if not (inputs / "transactions" / "_delta_log").exists():
        print(f"generating {args.customers:,} customers into {inputs} ...", flush=True)
        subprocess.run([sys.executable, "-m", "segscale", "generate", "--customers", str(args.customers),
                        "--seed", "1", "--out", str(inputs)], check=True, capture_output=True)
    results = {}
    for engine in args.engines.split(","):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"running {engine} ...", flush=True)
        results[engine] = run_isolated(__file__, "--engine", engine, "--customers", str(args.customers),
                                       "--data-dir", args.data_dir)
        print(f"  {json.dumps(results[engine])}", flush=True)
    report = {
        "benchmark": "features + segmentation",
        "date": dt.date.today().isoformat(),
        "customers": args.customers,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": results,
    }
    if {"segscale", "duckdb", "plain_pyspark"} <= results.keys():
        ours = results["segscale"]["features_and_segmentation_seconds"]
        report["ratios"] = {
            "segscale_over_duckdb": round(ours / results["duckdb"]["wall_seconds"], 2),
            "plain_pyspark_over_segscale": round(results["plain_pyspark"]["wall_seconds"] / ours, 2),
        }
        print("ratios:", report["ratios"])
    write_report(f"features-{args.customers}", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
