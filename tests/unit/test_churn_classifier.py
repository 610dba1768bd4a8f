"""The churn classifier's driver-side helpers on small pandas frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from segscale.models import churn_classifier


@pytest.fixture(scope="module")
def fitted() -> tuple[CalibratedClassifierCV, pd.DataFrame, pd.Series]:
    """y follows `signal`; `noise` carries nothing."""
    rng = np.random.default_rng(3)
    inputs = pd.DataFrame({"signal": rng.normal(size=600), "noise": rng.normal(size=600)})
    y = pd.Series((inputs["signal"] + rng.normal(scale=0.5, size=600) > 0).astype(int))
    model = CalibratedClassifierCV(HistGradientBoostingClassifier(max_iter=20), cv=2).fit(inputs, y)
    return model, inputs, y


def test_permutation_importance_is_the_auc_lost_by_shuffling_each_feature(fitted):
    model, inputs, y = fitted
    signal, noise = churn_classifier.permutation_importance(model, inputs, y, seed=1)
    assert signal > 0.3 and abs(noise) < 0.03


def test_permutation_importance_does_not_depend_on_how_the_shuffles_are_batched(fitted, monkeypatch):
    model, inputs, y = fitted
    batched = churn_classifier.permutation_importance(model, inputs, y, seed=1)
    monkeypatch.setattr(churn_classifier, "IMPORTANCE_BATCH_ROWS", len(inputs))  # one shuffle per call
    assert churn_classifier.permutation_importance(model, inputs, y, seed=1) == pytest.approx(batched, abs=1e-12)
    monkeypatch.setattr(churn_classifier, "IMPORTANCE_BATCH_ROWS", 2 * len(inputs) + 1)  # a short last batch
    assert churn_classifier.permutation_importance(model, inputs, y, seed=1) == pytest.approx(batched, abs=1e-12)


def test_roc_auc_by_row_is_roc_auc_score_of_each_row_ties_included():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=200)
    scores = rng.integers(0, 20, size=(6, 200)) / 20  # few distinct values: many ties
    assert churn_classifier.roc_auc_by_row(y, scores) == pytest.approx([roc_auc_score(y, row) for row in scores],
                                                                        abs=1e-12)


def test_the_importance_sample_of_a_large_holdout_keeps_a_rare_label():
    """30 churned among 60,000: a uniform 20,000-row sample would hold about 10, often too few, and could hold
    none, where ROC-AUC is undefined."""
    rng = np.random.default_rng(2)
    holdout = pd.DataFrame({"signal": rng.normal(size=60_000), churn_classifier.LABEL: False})
    holdout.loc[rng.choice(60_000, size=30, replace=False), churn_classifier.LABEL] = True
    sample = churn_classifier.importance_sample(holdout, 20_000, seed=1)
    counts = sample[churn_classifier.LABEL].value_counts()
    assert counts[True] == 30 and counts[False] == pytest.approx(19_990, abs=1)
    assert sample.index.is_unique and sample.equals(churn_classifier.importance_sample(holdout, 20_000, seed=1))
    small = holdout.iloc[:500]
    assert churn_classifier.importance_sample(small, 20_000, seed=1) is small  # small holdouts: every row
