"""CLV models against real data and the published papers: the CDNOW sample that the `lifetimes` wheel ships,
loaded through segscale's input contract, then BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader &
Hardie 2013) fitted on segscale's own histograms."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from segscale.cli import main
from segscale.clv import (
    CLV_COLUMNS,
    ClvParams,
    bgnbd_histogram,
    expected_avg_spend,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    lifetime_value,
    p_alive,
    predict_clv,
    spend_histogram,
    with_clv,
)
from segscale.config import ClvSettings
from segscale.errors import InputError

EXACT = ClvSettings(bin_days=1, spend_bin_relative=0.0)
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # weeks
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}


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


def test_bgnbd_fit_on_the_histogram_gives_the_published_parameters(cdnow_features):
    histogram = bgnbd_histogram(cdnow_features, EXACT)
    assert histogram["customers"].sum() == 2357 and len(histogram) < 2357  # distinct triples, weighted
    fit = fit_bgnbd(histogram, EXACT)
    assert fit.converged
    # Fader, Hardie & Lee (2005)
    assert {k: round(v, 3) for k, v in fit.params.items()} == pytest.approx(PUBLISHED_BGNBD, abs=0.005)
    assert fit.log_likelihood == pytest.approx(-9582.43, abs=0.05)  # the paper's LL


def test_gamma_gamma_fit_gives_the_published_parameters(cdnow_features):
    histogram = spend_histogram(cdnow_features, EXACT)
    assert histogram["customers"].sum() == 946
    fit = fit_gamma_gamma(histogram, EXACT)
    assert {k: round(v, 2) for k, v in fit.params.items()} == PUBLISHED_GG  # Fader & Hardie (2013)


def test_binned_histograms_stay_small_and_fit_close_to_exact(cdnow_features):
    exact = fit_bgnbd(bgnbd_histogram(cdnow_features, EXACT), EXACT)
    weekly = ClvSettings()  # default: 7-day bins, spend on a 1 % log grid
    histogram = bgnbd_histogram(cdnow_features, weekly)
    assert len(histogram) < 0.7 * len(bgnbd_histogram(cdnow_features, EXACT))
    binned = fit_bgnbd(histogram, weekly)
    for name, value in exact.params.items():
        assert binned.params[name] == pytest.approx(value, rel=0.05), name
    spend = fit_gamma_gamma(spend_histogram(cdnow_features, weekly), weekly)
    assert spend.params["p"] == pytest.approx(6.25, rel=0.01)


def test_degenerate_bases_get_a_clear_error():
    only_first_purchases = pd.DataFrame({"x": [0.0, 0.0], "t_x": [0.0, 0.0], "T": [30.0, 60.0],
                                         "customers": [10, 5]})
    with pytest.raises(InputError, match="none of the 15 buyers has bought on a second day"):
        fit_bgnbd(only_first_purchases, EXACT)
    with pytest.raises(InputError, match="no buyers"):
        fit_bgnbd(only_first_purchases.iloc[:0], EXACT)
    with pytest.raises(InputError, match="at least 2 repeat buyers with positive spend, found 1"):
        fit_gamma_gamma(pd.DataFrame({"x": [2.0], "m": [10.0], "customers": [1]}), EXACT)



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
    undiscounted = lifetime_value(PUBLISHED_BGNBD, PUBLISHED_GG, x, t_x, T, m, ClvSettings(annual_discount_rate=0))
    np.testing.assert_allclose(undiscounted["clv"], undiscounted["expected_avg_spend"]
                               * undiscounted["expected_purchases"], rtol=1e-12)
    discounted = lifetime_value(PUBLISHED_BGNBD, PUBLISHED_GG, x, t_x, T, m, ClvSettings())
    ratio = discounted["clv"] / undiscounted["clv"]
    assert ((ratio > 1 / 1.1) & (ratio < 1)).all()  # a year at 10 %: between no discount and a full year's
    weeks = lifetime_value(PUBLISHED_BGNBD, PUBLISHED_GG, x, t_x, T, m, ClvSettings(horizon_days=70))
    np.testing.assert_allclose(weeks["expected_purchases"],
                               expected_purchases(PUBLISHED_BGNBD, 10.0, x, t_x / 7, T / 7), rtol=1e-12)


def test_with_clv_scores_buyers_on_the_executors_and_leaves_prospects_null(spark):
    features = spark.createDataFrame(
        [("repeat", 3, 150, 250, 40.0), ("once", 0, 0, 200, None), ("prospect", None, None, None, None)],
        "customer_id string, bgnbd_frequency long, bgnbd_recency int, bgnbd_T int, bgnbd_monetary double")
    settings = ClvSettings()
    params = ClvParams(PUBLISHED_BGNBD, PUBLISHED_GG, 7)
    scored = features.transform(with_clv, params, settings, 3).toPandas().set_index("customer_id")
    expected = lifetime_value(PUBLISHED_BGNBD, PUBLISHED_GG, np.array([3.0, 0.0]), np.array([150.0, 0.0]),
                              np.array([250.0, 200.0]), np.array([40.0, np.nan]), settings)
    np.testing.assert_allclose(scored.loc[["repeat", "once"], list(CLV_COLUMNS)].to_numpy(), expected.to_numpy(),
                               rtol=1e-12)
    assert scored.loc["prospect", list(CLV_COLUMNS)].isna().all()
    assert scored.loc["once", "expected_avg_spend"] == pytest.approx(6.25 * 15.44 / 2.74)  # population mean
    assert (scored["clv_model_version"] == 3).all()


def test_predictions_are_never_nan_only_null():
    """NaN or missing inputs and numerical overflow give NaN from predict_clv, which the table stores as null."""
    inputs = pd.DataFrame({"bgnbd_frequency": [3.0, np.nan, 2.0, 5.0], "bgnbd_recency": [150.0, 10.0, np.nan, 1e6],
                           "bgnbd_T": [250.0, 20.0, 30.0, 1e6], "bgnbd_monetary": [40.0, 5.0, 5.0, 1e308]})
    predicted = predict_clv(ClvParams(PUBLISHED_BGNBD, PUBLISHED_GG, 7), inputs, ClvSettings())
    assert predicted.iloc[0].notna().all()
    assert predicted.iloc[1:3].isna().all(axis=None)  # a missing input: nothing is predicted
    assert not np.isinf(predicted.to_numpy()).any()


def test_a_single_customer_gets_a_clear_error():
    one = pd.DataFrame({"x": [4.0], "t_x": [100.0], "T": [200.0], "customers": [1]})
    with pytest.raises(InputError, match="at least 2 repeat buyers"):
        fit_gamma_gamma(pd.DataFrame({"x": [4.0], "m": [25.0], "customers": [1]}), EXACT)
    with pytest.raises(InputError, match="BG/NBD"):
        fit_bgnbd(one, EXACT)
