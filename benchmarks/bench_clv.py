"""CLV benchmark: histogram build, fit time and prediction throughput of BG/NBD + Gamma-Gamma on the whole base.

For each size, in a fresh process: the published customer_features of 2024-12-31 (computed once by `segscale
features` into benchmarks/data/clv-N/ and reused), then the resolution the fit would choose, the two Spark
histograms, the two fits on the driver, and the predictions of every customer to a no-op sink (after a small
warm-up), against reading the inputs alone, then the predictions with their P10 / P90 bands (what the bands add).
The fit time should not grow with the base once the histogram size is bounded by clv.max_histogram_rows.

    python benchmarks/bench_clv.py --sizes 1000000,6000000

With --histogram-rows, the driver-side fits alone, on histograms of exactly those many rows (exact days of bases
simulated from known BG/NBD and Gamma-Gamma parameters, no Spark): the measurement that chose the default of
clv.max_histogram_rows (docs/benchmarks.md).

    python benchmarks/bench_clv.py --histogram-rows 10000,50000,100000,250000,500000,1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ensure_generated, machine, python_peak_rss_mb, run_isolated, write_report

HERE = Path(__file__).resolve().parent
SNAPSHOT = dt.date(2024, 12, 31)


def measure(customers: int, data_dir: Path) -> dict:
    from pyspark.sql import functions as F

    from segscale.catalog import CUSTOMER_FEATURES
    from segscale.config import Settings
    from segscale.io.delta import Warehouse
    from segscale.models.bgnbd import ClvParams, Laplace, fit_bgnbd, fit_gamma_gamma
    from segscale.models.clv import bgnbd_histogram, choose_resolution, spend_histogram, with_clv
    from segscale.session import get_spark

    settings = Settings.model_validate({"paths": {"warehouse": str(data_dir / f"clv-{customers}")},
                                        "spark": {"driver_memory": "12g"}, "delta": {"backend": "delta-rs"}})
    spark = get_spark(settings)
    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    features_df = warehouse.read(CUSTOMER_FEATURES).where(F.col("snapshot_date") == F.lit(SNAPSHOT))
    timings = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        timings[name] = round(time.perf_counter() - start, 2)
        return value

    resolution, estimates = timed("resolution_seconds", lambda: choose_resolution(features_df, settings.clv))
    bgnbd_hist = timed("bgnbd_histogram_seconds", lambda: bgnbd_histogram(features_df, resolution))
    spend_hist = timed("spend_histogram_seconds", lambda: spend_histogram(features_df, resolution))
    bgnbd = timed("bgnbd_fit_seconds", lambda: fit_bgnbd(bgnbd_hist, settings.clv))
    spend = timed("gamma_gamma_fit_seconds", lambda: fit_gamma_gamma(spend_hist, settings.clv))
    inputs = ["customer_id", "bgnbd_frequency", "bgnbd_recency", "bgnbd_T", "bgnbd_monetary"]
    unit = settings.clv.time_unit_days
    # The predictions alone, then with their P10 / P90 bands (the parameters' covariances).
    predicted_df = features_df.select(*inputs).transform(
        with_clv, ClvParams(bgnbd.params, spend.params, unit), settings.clv)
    banded_df = features_df.select(*inputs).transform(
        with_clv, ClvParams(bgnbd.params, spend.params, unit, Laplace.of(bgnbd), Laplace.of(spend)), settings.clv)
    timed("warm_up_seconds", lambda: banded_df.limit(20_000).write.format("noop").mode("overwrite").save())
    timed("read_inputs_seconds", lambda: features_df.select(*inputs).write.format("noop").mode("overwrite").save())
    timed("read_and_predict_seconds", lambda: predicted_df.write.format("noop").mode("overwrite").save())
    timed("read_and_predict_with_bands_seconds", lambda: banded_df.write.format("noop").mode("overwrite").save())
    rows = features_df.count()
    spark.stop()
    predict_seconds = timings["read_and_predict_seconds"] - timings["read_inputs_seconds"]
    bands_seconds = timings["read_and_predict_with_bands_seconds"] - timings["read_and_predict_seconds"]
    return {
        "customers": rows, **timings, "resolution": vars(resolution), "histogram_estimates": estimates,
        "bgnbd_histogram_rows": bgnbd.histogram_rows, "spend_histogram_rows": spend.histogram_rows,
        "bgnbd_iterations": bgnbd.iterations, "gamma_gamma_iterations": spend.iterations,
        "bgnbd_params": bgnbd.params, "gamma_gamma_params": spend.params,
        "prediction_seconds": round(predict_seconds, 2),
        "prediction_rows_per_second": round(rows / predict_seconds) if predict_seconds > 0 else None,
        "bands_seconds": round(bands_seconds, 2),
        "bands_over_prediction": round(bands_seconds / predict_seconds, 2) if predict_seconds > 0 else None,
        "driver_python_peak_rss_mb": python_peak_rss_mb(),
    }


def simulated_histograms(rows: int, seed: int = 1) -> tuple:
    """BG/NBD and Gamma-Gamma histograms of exactly `rows` rows: customers of a base with known parameters (per
    day: r 0.7, alpha 45, a 0.6, b 20; p 4, q 6, gamma 100), up to 3 years old, in exact days and exact spend,
    drawn until there are enough distinct keys."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    bgnbd, spend = [], []
    found = 0
    while found < rows:
        n, events = 200_000, 60
        rate, dropout = rng.gamma(0.7, 1 / 45.0, n), rng.beta(0.6, 20.0, n)
        age = rng.integers(1, 3 * 365, n).astype(float)
        times = np.cumsum(rng.exponential(1 / rate[:, None], (n, events)), axis=1)
        # Repeat purchase k + 1 needs the customer to have stayed after each of purchases 0..k.
        alive = np.cumprod(rng.random((n, events)) >= dropout[:, None], axis=1).astype(bool)
        observed = (times <= age[:, None]) & alive
        x = observed.sum(axis=1).astype(float)
        t_x = np.floor(np.where(x > 0, np.max(np.where(observed, times, 0.0), axis=1), 0.0))
        ratio = rng.gamma(6.0, 1 / 100.0, n)
        m = np.round(rng.gamma(4.0 * np.maximum(x, 1), 1 / (ratio * np.maximum(x, 1))), 2)
        bgnbd.append(pd.DataFrame({"x": x, "t_x": t_x, "T": age}))
        spend.append(pd.DataFrame({"x": x, "m": m})[x > 0])
        found = len(pd.concat(bgnbd).drop_duplicates())
    histogram = pd.concat(bgnbd).groupby(["x", "t_x", "T"]).size().rename("customers").reset_index()
    spends = pd.concat(spend).groupby(["x", "m"]).size().rename("customers").reset_index()
    return histogram.sample(rows, random_state=seed), spends.sample(min(rows, len(spends)), random_state=seed)


def measure_fits(rows: int) -> dict:
    """Both fits (with their standard errors) on histograms of `rows` rows, in this process."""
    from segscale.config import ClvSettings
    from segscale.models.bgnbd import fit_bgnbd, fit_gamma_gamma

    bgnbd_hist, spend_hist = simulated_histograms(rows)
    settings = ClvSettings()
    start = time.perf_counter()
    bgnbd = fit_bgnbd(bgnbd_hist, settings)
    middle = time.perf_counter()
    spend = fit_gamma_gamma(spend_hist, settings)
    end = time.perf_counter()
    return {"rows": rows, "bgnbd_fit_seconds": round(middle - start, 2), "bgnbd_iterations": bgnbd.iterations,
            "gamma_gamma_rows": len(spend_hist), "gamma_gamma_fit_seconds": round(end - middle, 2),
            "converged": bgnbd.converged and spend.converged, "driver_python_peak_rss_mb": python_peak_rss_mb()}


def ensure_features(customers: int, data_dir: Path) -> None:
    inputs = data_dir / f"customers-{customers}"
    warehouse = data_dir / f"clv-{customers}"
    ensure_generated(inputs, customers)
    if (warehouse / "customer_features" / "_delta_log").exists():
        return
    print(f"publishing customer_features of {customers:,} customers into {warehouse} ...", flush=True)
    subprocess.run([sys.executable, "-m", "segscale", "features", "--input", str(inputs), "--warehouse",
                    str(warehouse), "--snapshot-date", SNAPSHOT.isoformat()], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,6000000")
    parser.add_argument("--data-dir", default=str(HERE / "data"))
    parser.add_argument("--histogram-rows", help="time the driver-side fits alone on histograms of these sizes")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-fit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, data_dir)))
        return 0
    if args.one_fit:
        print("RESULT " + json.dumps(measure_fits(args.one_fit)))
        return 0
    if args.histogram_rows:
        fits = []
        for rows in (int(r) for r in args.histogram_rows.split(",")):
            fits.append(run_isolated(__file__, "--one-fit", str(rows)))
            print(f"  {json.dumps(fits[-1])}", flush=True)
        write_report("clv-fit", {"benchmark": "clv fit by histogram rows", "date": dt.date.today().isoformat(),
                                 "machine": machine(), "results": fits})
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for size in sizes:
        ensure_features(size, data_dir)
        print(f"measuring {size:,} customers ...", flush=True)
        results[str(size)] = run_isolated(__file__, "--one", str(size), "--data-dir", str(data_dir))
        print(f"  {json.dumps(results[str(size)])}", flush=True)
    report = {"benchmark": "clv fit and prediction", "date": dt.date.today().isoformat(), "machine": machine(),
              "results": results}
    if len(sizes) == 2:
        small, large = (results[str(s)] for s in sizes)
        fit = ("bgnbd_fit_seconds", "gamma_gamma_fit_seconds")
        report["ratios"] = {"customers": round(large["customers"] / small["customers"], 2),
                            "fit_seconds": round(sum(large[k] for k in fit) / sum(small[k] for k in fit), 2)}
        print("ratios:", report["ratios"])
    write_report("clv", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
