"""Model benchmark: churn training time and driver memory at the default sample cap, the CLV fit inside
`segscale train`, scoring throughput, the share of an end-to-end run spent in churn scoring, and the retention
plan's stage.

Each step runs in a fresh process on the same generated inputs, one after the other (ratios within one run):
1. `train`: `segscale train` as of the snapshot (default config: 3 cutoffs, 500,000 rows per side at most; then
   the CLV fit on the whole base);
2. `run`: the main job with the champions from step 1 (validate, features, segment with churn and CLV scoring,
   migration, plan); then,
   in the same process, after a warm-up that lets each Python worker load the model, the published features are
   read to a no-op sink with and without the churn UDF, and the difference is the scoring time of every
   customer; then `segscale score` re-scores the published snapshot (read, join, score, write).

    python benchmarks/bench_churn.py --customers 6000000   # reuses benchmarks/data/customers-6000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

from common import ensure_generated, machine, python_peak_rss_mb, run_isolated, write_report

HERE = Path(__file__).resolve().parent
SNAPSHOT = dt.date(2024, 12, 31)


def _session(inputs: Path, work: Path):
    from segscale.config import Settings
    from segscale.session import get_spark

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the embedded store beside the warehouse
    settings = Settings.model_validate({
        "paths": {"input": str(inputs), "warehouse": str(work / "warehouse")},
        "spark": {"driver_memory": "12g"},
        "delta": {"backend": "delta-rs"},
    })
    return get_spark(settings), settings


def step_train(inputs: Path, work: Path) -> dict:
    from segscale.pipeline import train_models

    spark, settings = _session(inputs, work)
    start = time.perf_counter()
    summary = train_models(spark, settings, SNAPSHOT)
    wall = time.perf_counter() - start
    spark.stop()
    stages = summary["stages"]
    return {"wall_seconds": round(wall, 1), "stages": {n: r["seconds"] for n, r in stages.items()},
            "clv_fit": {k: stages["clv fit"][k] for k in ("buyers", "repeat_buyers", "fit_seconds",
                                                          "histogram_rows")},
            "train_rows": stages["training set"]["train_rows"], "holdout_rows": stages["training set"]["holdout_rows"],
            "holdout_roc_auc": round(stages["train"]["metrics"]["roc_auc"], 4),
            "driver_python_peak_rss_mb": python_peak_rss_mb()}


def step_run(inputs: Path, work: Path) -> dict:
    from pyspark.sql import functions as F

    from segscale.catalog import CUSTOMER_FEATURES
    from segscale.io.delta import Warehouse
    from segscale.models import registry
    from segscale.models.churn import churn_udf, with_churn_scores
    from segscale.pipeline import run_pipeline, score_snapshot

    spark, settings = _session(inputs, work)
    start = time.perf_counter()
    summary = run_pipeline(spark, settings, SNAPSHOT)
    run_wall = time.perf_counter() - start
    assert "train" not in summary["stages"], "the run step expects the champion of the train step"

    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    features_df = warehouse.read(CUSTOMER_FEATURES).where(F.col("snapshot_date") == F.lit(SNAPSHOT))
    model = registry.scoring_model(registry.connect(settings.paths.warehouse, settings.churn.experiment),
                                   settings.churn.model_name)
    scored_df = features_df.transform(with_churn_scores, settings.churn.risk_bands, model,
                                      churn_udf(model))

    def noop_seconds(df) -> float:
        begin = time.perf_counter()
        df.write.format("noop").mode("overwrite").save()
        return time.perf_counter() - begin

    rows = features_df.count()
    buyers = features_df.where(F.col("recency_days").isNotNull()).count()
    # Python workers load the model once each and keep it: measure that apart from the steady throughput.
    warm_up_seconds = noop_seconds(scored_df.select("customer_id", "churn_probability").limit(20_000))
    read_seconds = noop_seconds(features_df.select(*model.inputs))
    read_and_score_seconds = noop_seconds(scored_df.select("customer_id", "churn_probability"))
    scoring_seconds = read_and_score_seconds - read_seconds

    start = time.perf_counter()
    score_snapshot(spark, settings, SNAPSHOT)
    score_command_seconds = time.perf_counter() - start
    spark.stop()
    return {
        "run_wall_seconds": round(run_wall, 1),
        "run_stages": {n: r["seconds"] for n, r in summary["stages"].items()},
        "customers": rows, "buyers_scored": buyers,
        "warm_up_seconds": round(warm_up_seconds, 1),
        "read_features_seconds": round(read_seconds, 1),
        "read_and_score_seconds": round(read_and_score_seconds, 1),
        "scoring_seconds": round(scoring_seconds, 1),
        "scoring_rows_per_second": round(rows / scoring_seconds) if scoring_seconds > 0 else None,
        "scoring_share_of_run": round(scoring_seconds / run_wall, 3),
        "score_command_seconds": round(score_command_seconds, 1),
        "retention_plan": {k: v for k, v in summary["stages"]["plan"]["retention"].items() if k != "tiers"}
        | {"rows": summary["stages"]["plan"]["published"]["retention_plan"]["rows"]},
        "driver_python_peak_rss_mb": python_peak_rss_mb(),
    }


STEPS = {"train": step_train, "run": step_run}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=6_000_000)
    parser.add_argument("--data-dir", default=str(HERE / "data"))
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    inputs = Path(args.data_dir) / f"customers-{args.customers}"
    work = Path(args.data_dir) / f"churn-{args.customers}"
    if args.step:
        print("RESULT " + json.dumps(STEPS[args.step](inputs, work)))
        return 0

    ensure_generated(inputs, args.customers)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results = {}
    for step in STEPS:
        print(f"running {step} ...", flush=True)
        results[step] = run_isolated(__file__, "--step", step, "--customers", str(args.customers),
                                     "--data-dir", args.data_dir)
        print(f"  {json.dumps(results[step])}", flush=True)
    report = {
        "benchmark": "model training, scoring and the retention plan",
        "date": dt.date.today().isoformat(),
        "customers": args.customers,
        "machine": machine(),
        "results": results,
    }
    write_report(f"churn-{args.customers}", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
