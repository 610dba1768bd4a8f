"""The closed retention loop's cost (`make bench`): a plan measured one horizon later, at 6M customers; and what
trusting the scores costs in the same routine run: model monitoring (drift, and the backtests of the first
snapshot, matured by then) and the at-risk queue's reason codes.

On the generated inputs in `benchmarks/data/customers-N` (those of bench_pipeline.py), in one fresh process with the
default configuration plus `retention.uplift_model` (so the outcomes stage also fits the per-customer uplift model)
on a new warehouse:
1. `segscale run` for 2024-09-30: trains the models (no champion yet) and publishes the first plan, with its
   control group;
2. `segscale run` for 2024-12-31, the routine run one quarter later: the first plan's horizon (90 days) has passed,
   so the outcomes stage measures it (treated against control, per tier, over the plan's rows joined with the
   window's transactions) and fits the uplift model on its treated and control customers, and the plan uses what
   was learned; then the plan and tier economics. The generated customers were not treated (no `segscale treat`),
   so the measured effects are about 0: the figures are the loop's cost, not its findings.
Per stage: wall time of both runs. The measured plan's size and the learned uplifts are reported with them.
Results: `benchmarks/results/<date>-retention.json`; summary in `docs/benchmarks.md`.

    python benchmarks/bench_retention.py                          # 6M, about 25 minutes on 2 cores
    python benchmarks/bench_retention.py --sizes 100000           # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

from common import ensure_generated, jvm_peak_rss_mb, machine, python_peak_rss_mb, run_isolated, write_report

HERE = Path(__file__).resolve().parent
PLAN, MEASURED = dt.date(2024, 9, 30), dt.date(2024, 12, 31)
LOOP_STAGES = ("outcomes", "plan", "economics")
TRUST_STAGES = ("monitor", "queue")  # model monitoring (drift, the first snapshot's backtests) and the reason codes


def step(inputs: Path, work: Path) -> dict:
    from segscale.config import load_settings
    from segscale.pipeline import run_pipeline
    from segscale.session import get_spark

    settings = load_settings(None, {"paths.input": str(inputs), "paths.warehouse": str(work / "warehouse"),
                                    "retention.uplift_model": True})
    spark = get_spark(settings)
    runs = {}
    for day in (PLAN, MEASURED):
        start = time.perf_counter()
        summary = run_pipeline(spark, settings, day)
        runs[day.isoformat()] = {"wall_seconds": round(time.perf_counter() - start, 1),
                                 "stages": {name: record["seconds"] for name, record in summary["stages"].items()},
                                 "plan": summary["stages"]["plan"]["retention"]}
    outcomes = summary["stages"]["outcomes"]
    monitored = {k: summary["stages"]["monitor"][k] for k in ("drift", "backtested", "alerts", "retrain")}
    queued = {k: summary["stages"]["queue"][k] for k in ("customers", "at_risk", "left_out")}
    jvm_rss = jvm_peak_rss_mb()
    spark.stop()
    routine = runs[MEASURED.isoformat()]
    return {"runs": {day: {k: v for k, v in run.items() if k != "plan"} for day, run in runs.items()},
            "measured": outcomes["measured"], "uplifts": outcomes["uplifts"],
            "uplift_model": outcomes["uplift_model"],
            "plan_candidates": sum(t["candidates"] for t in routine["plan"]["tiers"].values()),
            "plan_treated": routine["plan"]["customers_targeted"],
            "plan_controls": routine["plan"]["customers_controlled"],
            "loop_seconds": {name: routine["stages"][name] for name in LOOP_STAGES},
            "loop_share_of_routine_run": round(sum(routine["stages"][n] for n in LOOP_STAGES)
                                               / routine["wall_seconds"], 3),
            "monitoring": monitored, "queue": queued,
            "trust_seconds": {name: routine["stages"][name] for name in TRUST_STAGES},
            "trust_share_of_routine_run": round(sum(routine["stages"][n] for n in TRUST_STAGES)
                                                / routine["wall_seconds"], 3),
            "driver_python_peak_rss_mb": python_peak_rss_mb(), "driver_jvm_peak_rss_mb": jvm_rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="6000000")
    parser.add_argument("--data-dir", default=str(HERE / "data"))
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inputs:
        print("RESULT " + json.dumps(step(Path(args.inputs), Path(args.work))))
        return 0
    results = {}
    for customers in sorted(int(s) for s in args.sizes.split(",")):
        inputs, work = Path(args.data_dir) / f"customers-{customers}", Path(args.data_dir) / f"work-{customers}"
        ensure_generated(inputs, customers)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"{customers:,} customers: plan {PLAN}, measured by the run of {MEASURED} ...", flush=True)
        results[customers] = run_isolated(__file__, "--inputs", str(inputs), "--work", str(work))
        print(f"  {json.dumps(results[customers])}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    write_report("retention", {"benchmark": "closed retention loop, default settings", "date": dt.date.today()
                               .isoformat(), "machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
