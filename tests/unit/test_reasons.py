"""Reason codes: TreeSHAP contributions of the calibrated churn model, their signs on crafted customers, the
phrases, and the same reasons from the executors (mapInPandas) as on the driver."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from segscale.models.reasons import (
    REASONS,
    contributions,
    explainers,
    fold_estimators,
    phrase,
    top_reasons,
    with_reasons,
)

FEATURES = ["recency_days", "purchases_90d", "complaints_365d", "mean_days_between_purchases", "spend_365d"]


@pytest.fixture(scope="module")
def model() -> CalibratedClassifierCV:
    """Churn rises with recency and complaints and falls with recent purchases; spend does nothing."""
    rng = np.random.default_rng(11)
    n = 6000
    frame = pd.DataFrame({
        "recency_days": rng.integers(0, 400, n).astype(float),
        "purchases_90d": rng.poisson(2, n).astype(float),
        "complaints_365d": rng.poisson(0.4, n).astype(float),
        "mean_days_between_purchases": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(10, 120, n)),
        "spend_365d": rng.gamma(2, 100, n),
    })
    logit = 0.012 * frame["recency_days"] - 0.6 * frame["purchases_90d"] + 1.2 * frame["complaints_365d"] - 1.5
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    pipeline = Pipeline([("classifier", HistGradientBoostingClassifier(max_iter=60, random_state=3))])
    return CalibratedClassifierCV(pipeline, method="isotonic", cv=3).fit(frame[FEATURES], churned)


def crafted() -> pd.DataFrame:
    base = {"recency_days": 20.0, "purchases_90d": 3.0, "complaints_365d": 0.0, "mean_days_between_purchases": 30.0,
            "spend_365d": 500.0}
    rows = {"lapsed": {**base, "recency_days": 360.0}, "complaining": {**base, "complaints_365d": 5.0},
            "silent": {**base, "purchases_90d": 0.0}, "fine": base}
    return pd.DataFrame.from_dict(rows, orient="index")[FEATURES]


def test_the_reason_codes_follow_the_signs_of_the_models_features(model):
    inputs = crafted()
    reasons = top_reasons(inputs, inputs, contributions(explainers(model), inputs)).set_index(inputs.index)
    assert reasons.loc["lapsed", "reason_features"][0] == "recency_days"
    assert reasons.loc["complaining", "reason_features"][0] == "complaints_365d"
    assert reasons.loc["silent", "reason_features"][0] == "purchases_90d"
    # A recent buyer's recency lowers their risk: never a reason.
    for name in ("complaining", "silent", "fine"):
        assert "recency_days" not in reasons.loc[name, "reason_features"]
    assert all(len(r) <= REASONS and all(c > 0 for c in r) for r in reasons["reason_contributions"])
    assert all(list(c) == sorted(c, reverse=True) for c in reasons["reason_contributions"])
    assert reasons.loc["lapsed", "reason_phrases"][0] == "no purchase for 360 days, 12.0× their usual gap"
    assert reasons.loc["complaining", "reason_phrases"][0] == "5 complaints in 365 days"
    assert reasons.loc["silent", "reason_phrases"][0] == "0 purchases in the last 90 days"


def test_contributions_add_up_to_the_folds_mean_log_odds(model):
    """TreeSHAP is exact: per row, the contributions plus each fold's expected value give its log-odds."""
    inputs = crafted()
    folds = fold_estimators(model)
    expected = np.mean([explainer.expected_value for explainer in explainers(model)])
    log_odds = np.mean([fold.decision_function(inputs.to_numpy()) for fold in folds], axis=0)
    np.testing.assert_allclose(contributions(explainers(model), inputs).sum(axis=1) + expected, log_odds,
                               rtol=1e-6, atol=1e-6)


def test_missing_values_have_phrases_of_their_own():
    row = pd.Series({"mean_days_between_purchases": np.nan})
    assert phrase("mean_days_between_purchases", np.nan, row) == "only one purchase day so far"
    assert phrase("recency_days", 94.0, row) == "no purchase for 94 days"
    assert phrase("complaints_365d", 1.0, row) == "1 complaint in 365 days"
    assert phrase("interactions_365d", np.nan, row) == "no interactions 365d recorded"


def test_the_executors_give_the_drivers_reasons(spark, model):
    inputs = crafted()
    frame = inputs.reset_index(names="customer_id")
    executed = with_reasons(spark.createDataFrame(frame), model, FEATURES).toPandas().set_index("customer_id")
    local = top_reasons(inputs, inputs, contributions(explainers(model), inputs)).set_index(inputs.index)
    for column in ("reason_features", "reason_phrases"):
        assert executed.loc[local.index, column].map(list).tolist() == local[column].tolist()


def test_a_model_treeshap_cannot_explain_is_refused_on_the_driver(spark):
    linear = LogisticRegression().fit(crafted().to_numpy(), [1, 1, 1, 0])
    frame = crafted().reset_index(names="customer_id")
    with pytest.raises(ValueError, match="TreeSHAP cannot explain LogisticRegression"):
        with_reasons(spark.createDataFrame(frame), linear, FEATURES)
