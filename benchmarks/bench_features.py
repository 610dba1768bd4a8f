"""Features + segmentation benchmark: segscale vs one DuckDB query vs straightforward PySpark jobs.

Every engine reads the same generated input files (Delta tables written by `segscale generate`; DuckDB reads their
Parquet files) and write their result. Each engine runs in a fresh process, one after the other, so peak memory
is its own and the timings are ratios measured in one run.

    python benchmarks/bench_features.py --customers 6000000   # reuses benchmarks/data/customers-6000000
    python benchmarks/bench_features.py --customers 6000000 --engines duckdb,spark_floor   # Spark's floor alone
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

from common import ensure_generated, machine, python_peak_rss_mb, run_isolated, write_report

HERE = Path(__file__).resolve().parent
SNAPSHOT = dt.date(2024, 12, 31)


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
            "driver_python_peak_rss_mb": python_peak_rss_mb()}


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
    return {"wall_seconds": round(wall, 1), "driver_python_peak_rss_mb": python_peak_rss_mb()}


def engine_plain_pyspark(inputs: Path, work: Path) -> dict:
    """A first PySpark version of the same features and scores: plain groupBy/agg with countDistinct, a lag window
    over purchase days, one join per derived table, global-window ntile for the scores, percent_rank for tiers."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from segscale.transforms.rfm import segment_name

    spark, store, settings = _plain_session(inputs, work)
    start = time.perf_counter()
    snapshot = F.lit(SNAPSHOT)
    tx = (store.read(str(inputs / "transactions")).where(F.col("ts") < F.lit(SNAPSHOT + dt.timedelta(days=1)))
          .withColumn("day", F.to_date("ts")))
    purchases = tx.where(F.col("transaction_type") == "purchase")
    days_ago = F.datediff(snapshot, F.col("day"))
    per_customer = purchases.groupBy("customer_id").agg(
        F.count("*").alias("frequency"),
        F.sum("amount").alias("purchase_amount"),
        F.min("day").alias("first_day"),
        F.max("day").alias("last_day"),
        F.countDistinct("day").alias("purchase_days"),
        F.countDistinct("category").alias("distinct_categories"),
        F.avg(F.col("channel").isin("online", "app").cast("double")).alias("online_share"),
        *[F.count(F.when(days_ago < n, 1)).alias(f"purchases_{n}d") for n in (30, 90, 365)],
        *[F.coalesce(F.sum(F.when(days_ago < n, F.col("amount"))), F.lit(0.0)).alias(f"spend_{n}d")
          for n in (30, 90, 365)],
        F.coalesce(F.sum(F.when((days_ago >= 90) & (days_ago < 180), F.col("amount"))), F.lit(0.0)).alias("prev_90"),
    )
    returns = tx.where(F.col("transaction_type") == "return").groupBy("customer_id").agg(
        F.count("*").alias("returns"), F.sum("amount").alias("return_amount"))
    by_day = Window.partitionBy("customer_id").orderBy("day")
    gaps = (purchases.select("customer_id", "day").distinct()
            .select("customer_id", F.datediff("day", F.lag("day").over(by_day)).alias("gap"))
            .groupBy("customer_id").agg(F.avg("gap").alias("mean_gap"), F.stddev("gap").alias("std_gap")))
    repeat = (purchases.join(per_customer.select("customer_id", "first_day"), "customer_id")
              .where(F.col("day") > F.col("first_day")).groupBy("customer_id")
              .agg(F.sum("amount").alias("repeat_amount")))
    interactions = store.read(str(inputs / "interactions")).where(
        F.col("ts") < F.lit(SNAPSHOT + dt.timedelta(days=1)))
    recent = interactions.where(F.datediff(snapshot, F.to_date("ts")) < 365).groupBy("customer_id").agg(
        F.count("*").alias("interactions_365d"), F.sum("cost").alias("interaction_cost_365d"),
        F.count(F.when(F.col("kind") == "complaint", 1)).alias("complaints_365d"))
    latest = Window.partitionBy("customer_id").orderBy(F.col("ts").desc(), F.col("satisfaction").desc())
    last_satisfaction = (interactions.where(F.col("satisfaction").isNotNull())
                         .select("customer_id", "satisfaction", F.row_number().over(latest).alias("n"))
                         .where(F.col("n") == 1)
                         .select("customer_id", F.col("satisfaction").alias("last_satisfaction")))
    customers = store.read(str(inputs / "customers")).where(F.col("signup_date") <= snapshot)
    joined = customers.select("customer_id", "signup_date")
    for part in (per_customer, returns, gaps, repeat, recent, last_satisfaction):
        joined = joined.join(part, "customer_id", how="left")
    buyer = F.col("frequency") > 0
    features = joined.select(
        "customer_id",
        F.datediff(snapshot, "last_day").alias("recency_days"),
        F.coalesce("frequency", F.lit(0)).alias("frequency"),
        (F.coalesce("purchase_amount", F.lit(0.0)) - F.coalesce("return_amount", F.lit(0.0))).alias("monetary"),
        (F.col("purchase_amount") / F.col("frequency")).alias("avg_order_value"),
        F.datediff(snapshot, "signup_date").alias("tenure_days"),
        F.datediff(snapshot, "first_day").alias("days_since_first_purchase"),
        "mean_gap", "std_gap",
        *[F.coalesce(f"purchases_{n}d", F.lit(0)).alias(f"purchases_{n}d") for n in (30, 90, 365)],
        *[F.coalesce(f"spend_{n}d", F.lit(0.0)).alias(f"spend_{n}d") for n in (30, 90, 365)],
        (F.coalesce("spend_90d", F.lit(0.0)) - F.coalesce("prev_90", F.lit(0.0))).alias("spend_trend_90d"),
        F.coalesce("distinct_categories", F.lit(0)).alias("distinct_categories"),
        (F.coalesce("returns", F.lit(0)) / F.col("frequency")).alias("return_rate"),
        "online_share",
        F.coalesce("interactions_365d", F.lit(0)).alias("interactions_365d"),
        F.coalesce("interaction_cost_365d", F.lit(0.0)).alias("interaction_cost_365d"),
        F.coalesce("complaints_365d", F.lit(0)).alias("complaints_365d"),
        "last_satisfaction",
        (F.col("purchase_days") - 1).alias("bgnbd_frequency"),
        F.datediff("last_day", "first_day").alias("bgnbd_recency"),
        F.datediff(snapshot, "first_day").alias("bgnbd_T"),
        (F.col("repeat_amount") / (F.col("purchase_days") - 1)).alias("bgnbd_monetary"),
        buyer.alias("is_buyer"),
    )
    buyers_first = Window.partitionBy("is_buyer")
    scored = features.select(
        "*",
        F.when(F.col("is_buyer"), F.ntile(5).over(buyers_first.orderBy(F.col("recency_days").desc()))).alias("r_score"),
        F.when(F.col("is_buyer"), F.ntile(5).over(buyers_first.orderBy("frequency"))).alias("f_score"),
        F.when(F.col("is_buyer"), F.ntile(5).over(buyers_first.orderBy("monetary"))).alias("m_score"),
        F.percent_rank().over(buyers_first.orderBy("monetary")).alias("value_rank"),
    ).select(
        "*",
        segment_name(settings.rfm.segments).alias("rfm_segment"),
        F.when(F.col("is_buyer") & (F.col("value_rank") >= 0.8), "high_value")
        .when(F.col("is_buyer") & (F.col("value_rank") >= 0.5), "potential").otherwise("regular").alias("value_tier"),
        F.when(~F.col("is_buyer"), "prospect").when(F.col("recency_days") > 365, "churned")
        .when(F.col("recency_days") > 120, "at_risk").when(F.col("frequency") == 1, "new")
        .when(F.col("frequency") >= 5, "loyal").otherwise("repeat").alias("lifecycle_stage"),
    )
    scored.write.mode("overwrite").parquet(str(work / "plain_features"))
    wall = time.perf_counter() - start
    scan = _scan_seconds(spark, store, inputs)
    spark.stop()
    return {"wall_seconds": round(wall, 1), "input_scan_seconds": scan,
            "driver_python_peak_rss_mb": python_peak_rss_mb()}


def engine_plain_pyspark_narrow(inputs: Path, work: Path) -> dict:
    """The same kind of job computing only 9 of the columns (kept as a lower bound for the plain approach)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark, store, _ = _plain_session(inputs, work)
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
    return {"wall_seconds": round(wall, 1), "driver_python_peak_rss_mb": python_peak_rss_mb()}


def _plain_session(inputs: Path, work: Path):
    from segscale.io.delta import DeltaStore
    from segscale.session import get_spark

    settings = _settings(inputs, work / "plain")
    spark = get_spark(settings)
    return spark, DeltaStore(spark, settings.delta), settings


def _scan_seconds(spark, store, inputs: Path) -> float:
    """How long reading the plain job's input columns alone takes (segscale's stage starts from validated rows
    that are already in memory, so this is the part of the plain job's time that segscale spent earlier)."""
    start = time.perf_counter()
    for name in ("customers", "transactions", "interactions"):
        store.read(str(inputs / name)).write.format("noop").mode("overwrite").save()
    return round(time.perf_counter() - start, 1)


def engine_spark_floor(inputs: Path, work: Path) -> dict:
    """What Spark alone costs on these files before any feature: reading every events row, then reading and
    shuffling every row once by customer (what any per-customer pass over whole rows needs). Each step is one
    action in the same session, with the embedded session's default settings (8 GB driver, shuffle partitions
    from the input's size)."""
    from segscale.config import Settings
    from segscale.io.delta import DeltaStore
    from segscale.session import get_spark

    settings = Settings.model_validate({"paths": {"input": str(inputs), "warehouse": str(work / "floor")},
                                        "delta": {"backend": "delta-rs"}})
    spark = get_spark(settings)
    store = DeltaStore(spark, settings.delta)
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    events = [store.read(str(inputs / name)) for name in ("transactions", "interactions")]
    seconds = {}
    for step, frames in {"read": events,
                         "read_and_shuffle": [e.repartition(partitions, "customer_id") for e in events]}.items():
        start = time.perf_counter()
        for frame in frames:
            frame.write.format("noop").mode("overwrite").save()
        seconds[step] = round(time.perf_counter() - start, 1)
    spark.stop()
    return {"wall_seconds": seconds["read_and_shuffle"], "seconds": seconds, "shuffle_partitions": partitions,
            "driver_python_peak_rss_mb": python_peak_rss_mb()}


ENGINES = {"segscale": engine_segscale, "duckdb": engine_duckdb, "plain_pyspark": engine_plain_pyspark,
           "plain_pyspark_narrow": engine_plain_pyspark_narrow, "spark_floor": engine_spark_floor}


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

    ensure_generated(inputs, args.customers)
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
        "machine": machine(),
        "results": results,
    }
    if {"segscale", "duckdb", "plain_pyspark"} <= results.keys():
        ours = results["segscale"]["features_and_segmentation_seconds"]
        plain = results["plain_pyspark"]
        report["ratios"] = {
            "segscale_over_duckdb": round(ours / results["duckdb"]["wall_seconds"], 2),
            "plain_pyspark_over_segscale": round(plain["wall_seconds"] / ours, 2),
            "plain_pyspark_without_input_scan_over_segscale": round(
                (plain["wall_seconds"] - plain["input_scan_seconds"]) / ours, 2),
        }
        if "plain_pyspark_narrow" in results:
            report["ratios"]["plain_pyspark_narrow_over_segscale"] = round(
                results["plain_pyspark_narrow"]["wall_seconds"] / ours, 2)
        print("ratios:", report["ratios"])
    if {"duckdb", "spark_floor"} <= results.keys():
        duckdb = results["duckdb"]["wall_seconds"]
        report.setdefault("ratios", {}).update({f"spark_{step}_over_duckdb": round(seconds / duckdb, 2)
                                                for step, seconds in results["spark_floor"]["seconds"].items()})
        print("ratios:", report["ratios"])
    write_report(f"features-{args.customers}", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
