"""Model monitoring's statistics: the backtest's metrics equal scikit-learn's on the same rows (ties and several
partitions included), the drift bins follow the training quantiles, and the PSI finds an injected shift and
nothing where there is none."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from segscale.config import MonitoringSettings
from segscale.transforms.monitoring import (
    Reference,
    backtest,
    backtest_findings,
    bin_counts,
    drift_findings,
    psi,
    retrain_decision,
)


def deciles_by_hand(p: np.ndarray, y: np.ndarray) -> list[dict]:
    """Deciles of predicted risk, highest first, tied scores in the decile of the first customer with the score."""
    frame = pd.DataFrame({"p": p, "y": y}).sort_values("p", ascending=False, kind="stable").reset_index(drop=True)
    first = frame.groupby("p")["p"].transform(lambda s: s.index.min())
    frame["decile"] = np.minimum(first * 10 // len(frame), 9) + 1
    grouped = frame.groupby("decile").agg(customers=("y", "size"), mean_predicted=("p", "mean"),
                                          observed=("y", "mean"))
    return [{"decile": int(d), **{k: row[k] for k in ("customers", "mean_predicted", "observed")}}
            for d, row in grouped.iterrows()]


@pytest.mark.parametrize("distinct", [40, 5000])
def test_the_backtest_equals_scikit_learn_on_the_same_rows(spark, distinct):
    rng = np.random.default_rng(distinct)
    n = 5000
    p = np.round(rng.random(n) * distinct) / distinct  # 40 distinct scores: many ties
    y = (rng.random(n) < p * 0.8).astype(int)
    frame = pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "p": p, "y": y})
    result = backtest(spark.createDataFrame(frame).repartition(7))
    assert result.customers == n and result.churned == y.sum()
    assert result.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert result.pr_auc == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert result.brier == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    by_hand = deciles_by_hand(p, y)
    assert [d["decile"] for d in result.calibration] == [d["decile"] for d in by_hand]
    for ours, theirs in zip(result.calibration, by_hand, strict=True):
        assert ours["customers"] == theirs["customers"]
        assert ours["mean_predicted"] == pytest.approx(theirs["mean_predicted"], abs=1e-12)
        assert ours["observed"] == pytest.approx(theirs["observed"], abs=1e-12)
    assert result.top_decile_lift == pytest.approx(by_hand[0]["observed"] / y.mean(), abs=1e-12)


def test_a_backtest_where_everyone_has_one_label_has_no_auc(spark):
    frame = pd.DataFrame({"customer_id": ["a", "b"], "p": [0.2, 0.7], "y": [1, 1]})
    result = backtest(spark.createDataFrame(frame))
    assert result.roc_auc is None and result.pr_auc is None and result.brier == pytest.approx((0.64 + 0.09) / 2)


def test_drift_bins_follow_the_training_quantiles_and_missing_values_have_their_own(spark):
    rng = np.random.default_rng(1)
    train = rng.normal(size=10_000)
    train[:500] = np.nan
    reference = Reference.of({"x": train})
    assert len(reference.edges["x"]) == 9 and reference.shares["x"][-1] == pytest.approx(0.05)
    assert reference.shares["x"][:-1] == pytest.approx([0.095] * 10, abs=1e-3)
    current = rng.normal(size=2000)
    counts = bin_counts(spark.createDataFrame(pd.DataFrame({"x": current})), reference)["x"]
    expected = np.bincount(np.searchsorted(reference.edges["x"], current, side="left"), minlength=10)
    assert counts == [*expected.tolist(), 0]


def test_an_injected_shift_drifts_and_the_same_distribution_does_not(spark):
    rng = np.random.default_rng(2)
    reference = Reference.of({"spend": rng.gamma(2, 50, 20_000), "recency": rng.integers(0, 365, 20_000)},
                             dt.date(2024, 6, 30))
    current = pd.DataFrame({"spend": rng.gamma(2, 50, 5000) * 3, "recency": rng.integers(0, 365, 5000)})
    counts = bin_counts(spark.createDataFrame(current), reference)
    findings = {f.subject: f for f in drift_findings(counts, reference, MonitoringSettings())}
    assert findings["spend"].alert and findings["spend"].value > 1
    assert not findings["recency"].alert and findings["recency"].value < 0.01
    assert findings["spend"].reference_date == dt.date(2024, 6, 30)
    assert psi([0.5, 0.5], [50, 50]) == 0.0 and psi([0.5, 0.5], [0, 0]) is None


def test_the_policy_retrains_only_on_the_alerts_it_names(spark):
    rng = np.random.default_rng(3)
    p = rng.random(2000)
    frame = pd.DataFrame({"customer_id": [str(i) for i in range(2000)], "p": p,
                          "y": (rng.random(2000) < 0.5).astype(int)})  # the scores know nothing
    result = backtest(spark.createDataFrame(frame))
    findings = backtest_findings(result, dt.date(2024, 6, 30), 0.8, MonitoringSettings())
    auc = next(f for f in findings if f.metric == "roc_auc")
    assert auc.alert and auc.threshold == pytest.approx(0.75)
    assert retrain_decision(findings, MonitoringSettings()).alert
    assert not retrain_decision(findings, MonitoringSettings(retrain_on=["score_drift"])).alert
