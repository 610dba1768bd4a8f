"""The P10 / P90 bands of expected purchases and CLV: on bases drawn from BG/NBD and Gamma-Gamma with known
parameters, refitted each time, the band around each customer's prediction covers the prediction the true
parameters make at about its nominal 80 %."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segscale.config import ClvSettings
from segscale.models.bgnbd import (
    CLV_BAND_COLUMNS,
    ClvParams,
    Laplace,
    fit_bgnbd,
    fit_gamma_gamma,
    lifetime_value,
)

TRUE_BGNBD = {"r": 0.5, "alpha": 6.0, "a": 0.8, "b": 2.5}  # weeks
TRUE_GG = {"p": 6.0, "q": 4.0, "gamma": 15.0}
SETTINGS = ClvSettings()


def simulated_base(rng: np.random.Generator, customers: int) -> pd.DataFrame:
    """x, t_x, T (days) and mean spend m of a base drawn from the true models: purchase rate lambda ~ Gamma(r,
    alpha), dropout probability p ~ Beta(a, b) after each repeat purchase, so a customer makes K ~ Geometric(p)
    repeat purchases at most; of the N ~ Poisson(lambda T) arrivals in (0, T] the first min(K, N) are seen and the
    last seen one falls at T times the x-th order statistic of N uniforms. Spend per purchase ~ Gamma(p, nu), nu ~
    Gamma(q, gamma)."""
    weeks = rng.uniform(10, 80, customers)
    rate = rng.gamma(TRUE_BGNBD["r"], 1 / TRUE_BGNBD["alpha"], customers)
    dropout = rng.beta(TRUE_BGNBD["a"], TRUE_BGNBD["b"], customers)
    arrivals = rng.poisson(rate * weeks)
    x = np.minimum(rng.geometric(dropout), arrivals)
    t_x = np.where(x > 0, weeks * rng.beta(np.maximum(x, 1), arrivals - x + 1), 0.0)
    nu = rng.gamma(TRUE_GG["q"], 1 / TRUE_GG["gamma"], customers)
    m = np.where(x > 0, rng.gamma(TRUE_GG["p"] * np.maximum(x, 1), 1 / nu) / np.maximum(x, 1), np.nan)
    return pd.DataFrame({"x": x.astype(float), "t_x": np.round(t_x * 7), "T": np.round(weeks * 7), "m": m})


def fitted(base: pd.DataFrame) -> ClvParams:
    bgnbd = fit_bgnbd(base.groupby(["x", "t_x", "T"]).size().rename("customers").reset_index(), SETTINGS)
    repeat = base[base["x"] > 0]
    spend = fit_gamma_gamma(repeat.groupby(["x", "m"]).size().rename("customers").reset_index(), SETTINGS)
    return ClvParams(bgnbd.params, spend.params, SETTINGS.time_unit_days, Laplace.of(bgnbd), Laplace.of(spend))


def predictions(params: ClvParams, base: pd.DataFrame) -> pd.DataFrame:
    return lifetime_value(params, *(base[c].to_numpy() for c in ("x", "t_x", "T", "m")), SETTINGS)


def test_bands_cover_the_true_models_predictions_at_their_nominal_rate():
    rng = np.random.default_rng(20)
    truth_params = ClvParams(TRUE_BGNBD, TRUE_GG, SETTINGS.time_unit_days)
    covered = {"expected_purchases": [], "clv": []}
    for _ in range(100):
        base = simulated_base(rng, 2000)
        predicted, truth = predictions(fitted(base), base), predictions(truth_params, base)
        for name in covered:
            inside = (predicted[f"{name}_p10"] <= truth[name]) & (truth[name] <= predicted[f"{name}_p90"])
            covered[name].append(inside.mean())
    for name, rates in covered.items():
        # 100 refits: the mean coverage's standard error is about 0.02.
        assert np.mean(rates) == pytest.approx(0.8, abs=0.06), (name, np.round(rates, 2))


def test_bands_bracket_the_prediction_and_narrow_as_the_base_grows():
    rng = np.random.default_rng(3)
    widths = []
    for customers in (1000, 16000):
        base = simulated_base(rng, customers)
        predicted = predictions(fitted(base), base)
        assert (predicted["clv_p10"] < predicted["clv"]).all() and (predicted["clv"] < predicted["clv_p90"]).all()
        assert (predicted["expected_purchases_p10"] < predicted["expected_purchases"]).all()
        widths.append(np.median(np.log(predicted["clv_p90"] / predicted["clv_p10"])))
    # Parameter uncertainty shrinks as 1 / sqrt(customers): 16 times the base, about a quarter of the width.
    assert widths[1] == pytest.approx(widths[0] / 4, rel=0.35)


def test_without_a_covariance_the_bands_are_unknown():
    base = simulated_base(np.random.default_rng(5), 200)
    predicted = predictions(ClvParams(TRUE_BGNBD, TRUE_GG, SETTINGS.time_unit_days), base)
    assert predicted[list(CLV_BAND_COLUMNS)].isna().all().all()
    assert predicted["clv"].notna().all()
