"""CLV models against real data and the published papers: the CDNOW sample that the `lifetimes` wheel ships,
loaded through segscale's input contract, then BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader &
Hardie 2013) fitted on segscale's own histograms."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from scipy import optimize

from segscale.cli import main
from segscale.config import ClvSettings
from segscale.errors import ModelSkipped
from segscale.models.bgnbd import (
    CLV_COLUMNS,
    ClvParams,
    Laplace,
    bgnbd_log_likelihood,
    expected_avg_spend,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    lifetime_value,
    p_alive,
    predict_clv,
)
from segscale.models.clv import Resolution, bgnbd_histogram, choose_resolution, spend_histogram, with_clv

EXACT = Resolution(bin_days=1, spend_bin_relative=0.0)
SETTINGS = ClvSettings()
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # weeks
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}
PUBLISHED = ClvParams(PUBLISHED_BGNBD, PUBLISHED_GG, 7)


def with_bands(params: ClvParams, variance: float = 0.01) -> ClvParams:
    """`params` with a Laplace approximation of variance `variance` in every fitting coordinate."""
    r, alpha, a, b = (params.bgnbd[k] for k in ("r", "alpha", "a", "b"))
    p, q, gamma = (params.gamma_gamma[k] for k in ("p", "q", "gamma"))
    bgnbd = (np.log(r), np.log(r / alpha), np.log(a / b), np.log(a + b))
    spend = (np.log(p), np.log(q - 1), np.log(gamma / (q - 1)))
    return dataclasses.replace(params, bgnbd_laplace=Laplace(bgnbd, tuple(map(tuple, variance * np.eye(4)))),
                               gamma_gamma_laplace=Laplace(spend, tuple(map(tuple, variance * np.eye(3)))))


def cdnow_file(name: str) -> Path:
    # Read by path: importing lifetimes.datasets needs pkg_resources, which current setuptools no longer has.
    spec = importlib.util.find_spec("lifetimes")
    if spec is None:
        pytest.fail("the lifetimes package (a dev dependency: pip install -e '.[dev]') ships the CDNOW data")
    return Path(spec.submodule_search_locations[0]) / "datasets" / name


@pytest.fixture(scope="module")
def cdnow_features(spark, tmp_path_factory):
    """customer_features as of 1997-09-30 from CDNOW_sample.txt, written as contract CSV and run through
    `segscale features` (validation included)."""
    root = tmp_path_factory.mktemp("cdnow")
    raw = pd.read_csv(cdnow_file("CDNOW_sample.txt"), sep=r"\s+", header=None,
                      names=["master_id", "sample", "date", "quantity", "amount"], dtype={"date": str})
    day = pd.to_datetime(raw["date"], format="%Y%m%d")
    transactions = pd.DataFrame({
        "transaction_id": [f"t{i}" for i in range(len(raw))], "customer_id": raw["sample"].astype(str),
        "ts": day.dt.strftime("%Y-%m-%dT12:00:00Z"), "amount": raw["amount"], "quantity": raw["quantity"],
        "category": "music", "channel": "mail", "transaction_type": "purchase"})
    first = transactions.groupby("customer_id")["ts"].min().str[:10]
    customers = pd.DataFrame({"customer_id": first.index, "signup_date": first.to_numpy()})
    for name, frame in (("customers", customers), ("transactions", transactions)):
        (root / "in" / name).mkdir(parents=True)
        frame.to_csv(root / "in" / name / "part-0.csv", index=False)
    assert main(["features", "--input", str(root / "in"), "--warehouse", str(root / "wh"), "--snapshot-date",
                 "1997-09-30"], spark=spark) == 0
    return spark.read.parquet(*DeltaTable(str(root / "wh" / "customer_features")).file_uris())


def test_bgnbd_inputs_equal_the_published_cdnow_summary(cdnow_features):
    summary = pd.read_csv(cdnow_file("cdnow_customers_summary_with_transactions.csv"))
    ours = cdnow_features.select(
        F.col("customer_id").cast("int").alias("ID"), F.col("bgnbd_frequency").alias("x"),
        F.col("bgnbd_recency").alias("recency_days"), F.col("bgnbd_T").alias("T_days"),
        F.col("bgnbd_monetary").alias("zbar")).toPandas()  # small: 2,357 customers
    merged = summary.merge(ours, on="ID", how="outer", suffixes=("", "_ours"), indicator=True)
    assert len(summary) == 2357 and (merged["_merge"] == "both").all()
    assert (merged["x"] == merged["x_ours"]).all()
    # The summary is rounded to 2 decimals (half up), so ours must lie within half a cent of it.
    half_unit = 0.005 + 1e-9
    np.testing.assert_allclose(merged["recency_days"] / 7, merged["t_x"], rtol=0, atol=half_unit)
    np.testing.assert_allclose(merged["T_days"] / 7, merged["T"], rtol=0, atol=half_unit)
    repeat = merged["x"] > 0
    np.testing.assert_allclose(merged.loc[repeat, "zbar_ours"], merged.loc[repeat, "zbar"], rtol=0, atol=half_unit)
    assert merged.loc[~repeat, "zbar_ours"].isna().all()  # no repeat purchase, no mean repeat spend


def test_bgnbd_fit_on_the_histogram_gives_the_published_parameters_and_standard_errors(cdnow_features):
    histogram = bgnbd_histogram(cdnow_features, EXACT)
    assert histogram["customers"].sum() == 2357 and len(histogram) < 2357  # distinct triples, weighted
    keys = list(histogram[["x", "t_x", "T"]].itertuples(index=False))
    assert keys == sorted(keys)  # in key order, so the fit does not depend on the order Spark returns groups in
    fit = fit_bgnbd(histogram, SETTINGS)
    assert fit.converged and fit.boundary == ()
    # Fader, Hardie & Lee (2005)
    assert {k: round(v, 3) for k, v in fit.params.items()} == PUBLISHED_BGNBD
    assert fit.log_likelihood == pytest.approx(-9582.43, abs=0.005)  # the paper's LL
    # The same standard errors as the lifetimes reference (from its Hessian) on the published summary.
    from lifetimes import BetaGeoFitter

    summary = pd.read_csv(cdnow_file("cdnow_customers_summary_with_transactions.csv"))
    reference = BetaGeoFitter().fit(summary["x"], summary["t_x"], summary["T"])
    for name, se in reference.summary["se(coef)"].items():
        assert fit.standard_errors[name] == pytest.approx(se, rel=0.02), name


def test_gamma_gamma_fit_gives_the_published_parameters(cdnow_features):
    histogram = spend_histogram(cdnow_features, EXACT)
    assert histogram["customers"].sum() == 946
    assert histogram[["x", "m"]].equals(histogram[["x", "m"]].sort_values(["x", "m"], ignore_index=True))
    fit = fit_gamma_gamma(histogram, SETTINGS)
    assert {k: round(v, 2) for k, v in fit.params.items()} == PUBLISHED_GG  # Fader & Hardie (2013)
    assert all(se is not None and 0 < se < value for se, value in zip(fit.standard_errors.values(),
                                                                       fit.params.values(), strict=True))


def test_the_histograms_are_exact_while_small_and_coarser_only_beyond_the_limit(cdnow_features):
    resolution, estimates = choose_resolution(cdnow_features, SETTINGS)
    assert resolution == EXACT  # a few thousand cells: exact days and spend
    exact_rows = len(bgnbd_histogram(cdnow_features, EXACT))
    assert estimates["bgnbd_rows_by_bin_days"][1] == pytest.approx(exact_rows, rel=0.05)
    tight = ClvSettings(max_histogram_rows=1000)  # below the exact histogram's 1,016 rows
    coarser, estimates = choose_resolution(cdnow_features, tight)
    assert coarser.bin_days > 1 and estimates["bgnbd_rows_by_bin_days"][coarser.bin_days] <= 1000
    assert len(bgnbd_histogram(cdnow_features, coarser)) <= 1000 * 1.05
    weekly = Resolution(bin_days=7, spend_bin_relative=0.01)
    binned = fit_bgnbd(bgnbd_histogram(cdnow_features, weekly), SETTINGS)
    exact = fit_bgnbd(bgnbd_histogram(cdnow_features, EXACT), SETTINGS)
    for name, value in exact.params.items():
        assert binned.params[name] == pytest.approx(value, rel=0.05), name
    # A fixed resolution in the config is used as it is.
    assert choose_resolution(cdnow_features, ClvSettings(bin_days=7, spend_bin_relative=0.01))[0] == weekly


def test_the_gradients_are_those_of_the_log_likelihoods():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 12, 300).astype(float)
    T = rng.uniform(1, 60, 300)
    t_x = np.where(x > 0, T * rng.uniform(0, 1, 300), 0.0)
    weight = rng.integers(1, 5, 300).astype(float)
    for theta in ([0.2, -2.0, -1.0, 1.0], [3.0, -3.0, 0.5, 6.0], [-1.0, -1.5, -2.0, -0.5]):
        assert optimize.check_grad(lambda th: bgnbd_log_likelihood(th, x, t_x, T, weight),
                                   lambda th: bgnbd_log_likelihood(th, x, t_x, T, weight, gradient=True)[1],
                                   np.array(theta), epsilon=1e-7) < 1e-3 * weight.sum()
    repeat, m = x[x > 0], rng.lognormal(3, 0.5, int((x > 0).sum()))
    for theta in ([0.5, 1.0, 2.0], [2.0, 3.0, 0.5]):
        assert optimize.check_grad(lambda th: gamma_gamma_log_likelihood(th, repeat, m, weight[x > 0]),
                                   lambda th: gamma_gamma_log_likelihood(th, repeat, m, weight[x > 0],
                                                                        gradient=True)[1],
                                   np.array(theta), epsilon=1e-7) < 1e-3 * weight.sum()


def one_dropout_probability(customers: int, seed: int) -> pd.DataFrame:
    """A BG/NBD histogram of a base where every customer drops out with probability 0.2 after a purchase."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(customers):
        rate, horizon = rng.gamma(1.0, 1 / 20.0), rng.uniform(30, 365)
        times, t = [], 0.0
        while (t := t + rng.exponential(1 / rate)) <= horizon:
            times.append(np.floor(t))
            if rng.random() < 0.2:
                break
        if times:
            days = np.unique(times)
            rows.append((len(days) - 1.0, days[-1] - days[0], np.floor(horizon) - days[0]))
    frame = pd.DataFrame(rows, columns=["x", "t_x", "T"])
    return frame.groupby(["x", "t_x", "T"]).size().rename("customers").reset_index()


def test_a_base_with_one_common_dropout_probability_gets_a_boundary_solution_with_its_meaning():
    fit = fit_bgnbd(one_dropout_probability(800, seed=2), SETTINGS)
    assert fit.converged
    assert fit.boundary == ("a + b at its upper bound 1e8: every customer shares one dropout probability",)
    assert fit.params["a"] + fit.params["b"] == pytest.approx(1e8)
    assert fit.params["a"] / (fit.params["a"] + fit.params["b"]) == pytest.approx(0.2, abs=0.05)
    # r and alpha keep their standard errors; a and b, pinned by the bound, have none.
    assert fit.standard_errors["r"] > 0 and fit.standard_errors["alpha"] > 0
    assert fit.standard_errors["a"] is None and fit.standard_errors["b"] is None
    # Predictions on the boundary are the limit of the interior ones.
    x, t_x, T = np.array([0.0, 2.0, 9.0]), np.array([0.0, 20.0, 40.0]), np.array([30.0, 38.0, 52.0])
    near = {**fit.params, "a": fit.params["a"] / 100, "b": fit.params["b"] / 100}  # a + b = 1e6: interior
    np.testing.assert_allclose(expected_purchases(fit.params, 52.0, x, t_x, T),
                               expected_purchases(near, 52.0, x, t_x, T), rtol=1e-4)
    assert np.all(np.isfinite(p_alive(fit.params, x, t_x, T)))


def test_too_few_repeat_buyers_skip_the_model_with_the_reason():
    only_first_purchases = pd.DataFrame({"x": [0.0, 0.0], "t_x": [0.0, 0.0], "T": [30.0, 60.0],
                                         "customers": [10, 5]})
    with pytest.raises(ModelSkipped, match="BG/NBD needs at least clv.min_repeat_buyers = 10 buyers who bought on a "
                                           "second day .*this base has 0 of 15 buyers"):
        fit_bgnbd(only_first_purchases, SETTINGS)
    with pytest.raises(ModelSkipped, match="has 0 of 0 buyers"):
        fit_bgnbd(only_first_purchases.iloc[:0], SETTINGS)
    with pytest.raises(ModelSkipped, match="Gamma-Gamma needs at least clv.min_repeat_buyers = 10 .* has 1$"):
        fit_gamma_gamma(pd.DataFrame({"x": [2.0], "m": [10.0], "customers": [1]}), SETTINGS)
    one = pd.DataFrame({"x": [4.0], "t_x": [100.0], "T": [200.0], "customers": [1]})
    with pytest.raises(ModelSkipped, match="BG/NBD"):
        fit_bgnbd(one, SETTINGS)


def test_a_fit_that_ends_at_the_limit_of_precision_is_converged_in_any_row_order():
    """L-BFGS-B ends some orderings of the same histogram "ABNORMAL" at the optimum (its line search runs out of
    precision there); those are maxima like the others, with the same parameters."""
    rng = np.random.default_rng(5)
    x = rng.integers(1, 8, 250).astype(float)
    m = np.round(rng.gamma(3.0 * x, 1 / (rng.gamma(3.0, 1 / 500.0, 250) * x)), 2)
    histogram = pd.DataFrame({"x": x, "m": m}).groupby(["x", "m"]).size().rename("customers").reset_index()
    fits = [fit_gamma_gamma(histogram.sample(frac=1, random_state=seed), SETTINGS) for seed in range(40)]
    assert any(not fit.message.startswith("CONVERGENCE") for fit in fits)  # the case this test is about occurs
    for fit in fits:
        assert fit.converged
        np.testing.assert_allclose(list(fit.params.values()), list(fits[0].params.values()), rtol=1e-5)


def test_predictions_match_the_lifetimes_reference_implementation():
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    summary = pd.read_csv(cdnow_file("cdnow_customers_summary_with_transactions.csv"))
    reference = BetaGeoFitter()
    reference.params_ = pd.Series(PUBLISHED_BGNBD)
    x, t_x, T = (summary[c].to_numpy(float) for c in ("x", "t_x", "T"))
    np.testing.assert_allclose(expected_purchases(PUBLISHED_BGNBD, 52.0, x, t_x, T),
                               reference.conditional_expected_number_of_purchases_up_to_time(52, x, t_x, T),
                               rtol=1e-9)
    np.testing.assert_allclose(p_alive(PUBLISHED_BGNBD, x, t_x, T),
                               reference.conditional_probability_alive(x, t_x, T), rtol=1e-9)
    spend_reference = GammaGammaFitter()
    spend_reference.params_ = pd.Series({"p": 6.25, "q": 3.74, "v": 15.44})
    np.testing.assert_allclose(expected_avg_spend(PUBLISHED_GG, x, summary["zbar"].to_numpy(float)),
                               spend_reference.conditional_expected_average_profit(summary["x"], summary["zbar"]),
                               rtol=1e-9)


def test_clv_sums_discounted_monthly_spend_over_the_horizon():
    x, t_x, T, m = (np.array([3.0, 0.0]), np.array([150.0, 0.0]), np.array([250.0, 200.0]), np.array([40.0, np.nan]))
    undiscounted = lifetime_value(PUBLISHED, x, t_x, T, m, ClvSettings(annual_discount_rate=0))
    np.testing.assert_allclose(undiscounted["clv"], undiscounted["expected_avg_spend"]
                               * undiscounted["expected_purchases"], rtol=1e-12)
    discounted = lifetime_value(PUBLISHED, x, t_x, T, m, ClvSettings())
    ratio = discounted["clv"] / undiscounted["clv"]
    assert ((ratio > 1 / 1.1) & (ratio < 1)).all()  # a year at 10 %: between no discount and a full year's
    weeks = lifetime_value(PUBLISHED, x, t_x, T, m, ClvSettings(horizon_days=70))
    np.testing.assert_allclose(weeks["expected_purchases"],
                               expected_purchases(PUBLISHED_BGNBD, 10.0, x, t_x / 7, T / 7), rtol=1e-12)


def test_with_clv_scores_buyers_on_the_executors_and_leaves_prospects_null(spark):
    features = spark.createDataFrame(
        [("repeat", 3, 150, 250, 40.0), ("once", 0, 0, 200, None), ("prospect", None, None, None, None)],
        "customer_id string, bgnbd_frequency long, bgnbd_recency int, bgnbd_T int, bgnbd_monetary double")
    settings = ClvSettings()
    params = PUBLISHED
    scored = features.transform(with_clv, params, settings, 3).toPandas().set_index("customer_id")
    expected = lifetime_value(PUBLISHED, np.array([3.0, 0.0]), np.array([150.0, 0.0]),
                              np.array([250.0, 200.0]), np.array([40.0, np.nan]), settings)
    np.testing.assert_allclose(scored.loc[["repeat", "once"], list(CLV_COLUMNS)].to_numpy(), expected.to_numpy(),
                               rtol=1e-12)
    assert scored.loc["prospect", list(CLV_COLUMNS)].isna().all()
    assert scored.loc["once", "expected_avg_spend"] == pytest.approx(6.25 * 15.44 / 2.74)  # population mean
    assert (scored["clv_model_version"] == 3).all()


def test_the_executors_predict_clv_without_importing_mlflow_or_scikit_learn():
    """The CLV UDF's code lives in bgnbd.py and its settings in config.py: a Python worker that unpickles it imports
    only those (seconds less per worker than with MLflow and scikit-learn)."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, segscale.config, segscale.models.bgnbd; "
                             "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'sklearn'}))"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_predictions_are_never_nan_only_null():
    """NaN or missing inputs and numerical overflow give NaN from predict_clv, which the table stores as null."""
    inputs = pd.DataFrame({"bgnbd_frequency": [3.0, np.nan, 2.0, 5.0], "bgnbd_recency": [150.0, 10.0, np.nan, 1e6],
                           "bgnbd_T": [250.0, 20.0, 30.0, 1e6], "bgnbd_monetary": [40.0, 5.0, 5.0, 1e308]})
    predicted = predict_clv(with_bands(PUBLISHED), inputs, ClvSettings())
    assert predicted.iloc[0].notna().all()
    assert predicted.iloc[1:3].isna().all(axis=None)  # a missing input: nothing is predicted
    assert not np.isinf(predicted.to_numpy()).any()
