"""Reason codes: why the churn model puts a customer at risk, as readable phrases (definitions: docs/models.md,
"Reason codes").

Each fold of the calibrated churn model is a tree ensemble; TreeSHAP (shap.TreeExplainer, exact, path-dependent)
splits each fold's log-odds of churning into one contribution per feature, and a customer's contribution of a
feature is their mean over the folds. The calibration is monotone, so a positive contribution pushes the churn
probability up. A customer's reasons are the features with the largest positive contributions, each phrased with
the customer's own values. Everything here runs on the executors, in Arrow batches (mapInPandas).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

REASONS = 3  # reasons per customer
REASON_COLUMNS = tuple(f"reason_{k}" for k in range(1, REASONS + 1))
# What with_reasons gives per customer: the reasons' phrases, features and contributions, strongest first.
REASON_FIELDS = {"reason_phrases": "array<string>", "reason_features": "array<string>",
                 "reason_contributions": "array<double>"}
# Features a phrase reads beside the one it explains (all of customer_features).
CONTEXT = ("mean_days_between_purchases",)


def _count(value: float, one: str, many: str) -> str:
    return f"{value:,.0f} {one if round(value) == 1 else many}"


def _recency(value: float, row: pd.Series) -> str:
    phrase = f"no purchase for {value:,.0f} days"
    gap = row.get("mean_days_between_purchases")
    if gap is not None and np.isfinite(gap) and gap > 0:
        phrase += f", {value / gap:.1f}× their usual gap"
    return phrase


def _trend(value: float, row: pd.Series) -> str:
    if value < 0:
        return f"spent {-value:,.0f} less in the last 90 days than in the 90 before"
    return f"spent {value:,.0f} more in the last 90 days than in the 90 before" if value > 0 else \
        "no change in spend over the last 90 days"


# What each model feature says about a customer, given its value (never missing: see `phrase`).
PHRASES: dict[str, Callable[[float, pd.Series], str]] = {
    "recency_days": _recency,
    "frequency": lambda v, r: _count(v, "purchase", "purchases") + " in the lookback window",
    "monetary": lambda v, r: f"net spend {v:,.0f} in the lookback window",
    "avg_order_value": lambda v, r: f"average order {v:,.0f}",
    "tenure_days": lambda v, r: f"a customer for {v:,.0f} days",
    "days_since_first_purchase": lambda v, r: f"first purchase {v:,.0f} days ago",
    "mean_days_between_purchases": lambda v, r: f"usually {v:,.0f} days between purchases",
    "std_days_between_purchases": lambda v, r: f"irregular gaps between purchases (± {v:,.0f} days)",
    "purchases_30d": lambda v, r: _count(v, "purchase", "purchases") + " in the last 30 days",
    "purchases_90d": lambda v, r: _count(v, "purchase", "purchases") + " in the last 90 days",
    "purchases_365d": lambda v, r: _count(v, "purchase", "purchases") + " in the last 365 days",
    "spend_30d": lambda v, r: f"spent {v:,.0f} in the last 30 days",
    "spend_90d": lambda v, r: f"spent {v:,.0f} in the last 90 days",
    "spend_365d": lambda v, r: f"spent {v:,.0f} in the last 365 days",
    "spend_trend_90d": _trend,
    "distinct_categories": lambda v, r: f"bought in {_count(v, 'category', 'categories')}",
    "return_rate": lambda v, r: f"returned {v:.0%} of their orders",
    "online_share": lambda v, r: f"{v:.0%} of purchases online",
    "interactions_365d": lambda v, r: _count(v, "service interaction", "service interactions") + " in 365 days",
    "interaction_cost_365d": lambda v, r: f"service cost {v:,.0f} in 365 days",
    "complaints_365d": lambda v, r: _count(v, "complaint", "complaints") + " in 365 days",
    "last_satisfaction": lambda v, r: f"last satisfaction score {v:.0f} of 5",
    "bgnbd_frequency": lambda v, r: _count(v, "repeat purchase day", "repeat purchase days"),
    "bgnbd_recency": lambda v, r: f"last purchase {v:,.0f} days after their first",
    "bgnbd_T": lambda v, r: f"first purchase {v:,.0f} days ago",
}
# What a missing value says.
MISSING = {
    "mean_days_between_purchases": "only one purchase day so far",
    "std_days_between_purchases": "fewer than three purchase days so far",
    "last_satisfaction": "no satisfaction score recorded",
}


def phrase(feature: str, value: float, row: pd.Series) -> str:
    """The readable reason for `feature` at `value` (NaN: missing)."""
    if not np.isfinite(value):
        return MISSING.get(feature, f"no {feature.replace('_', ' ')} recorded")
    return PHRASES.get(feature, lambda v, r: f"{feature.replace('_', ' ')} {v:,.4g}")(value, row)


def fold_estimators(classifier: Any) -> list[Any]:
    """The tree ensembles inside a calibrated churn model (one per calibration fold), or the model itself."""
    folds = getattr(classifier, "calibrated_classifiers_", None)
    models = [fold.estimator for fold in folds] if folds else [classifier]
    return [model[-1] if hasattr(model, "steps") else model for model in models]


def explainers(classifier: Any) -> list[Any]:
    """A TreeSHAP explainer per fold. ValueError when the estimator is not a tree ensemble TreeSHAP knows."""
    import shap  # noqa: PLC0415 (a second of imports, only where reasons are computed)

    try:
        return [shap.TreeExplainer(model) for model in fold_estimators(classifier)]
    except Exception as exc:  # shap raises a bare Exception for a model type it does not support
        raise ValueError(f"TreeSHAP cannot explain {type(fold_estimators(classifier)[0]).__name__}: {exc}") from None


def contributions(fold_explainers: list[Any], inputs: pd.DataFrame) -> np.ndarray:
    """Per row and feature, the mean over the folds of the TreeSHAP value on the fold's log-odds of churning."""
    values = inputs.to_numpy(dtype="float64")
    per_fold = [np.asarray(explainer.shap_values(values, check_additivity=False)) for explainer in fold_explainers]
    per_fold = [v[..., 1] if v.ndim == 3 else v for v in per_fold]  # (rows, features[, classes])
    return np.mean(per_fold, axis=0)


def top_reasons(inputs: pd.DataFrame, context: pd.DataFrame, shap_values: np.ndarray) -> pd.DataFrame:
    """REASON_FIELDS per row: the REASONS features with the largest positive contributions (fewer when fewer push
    the risk up), their contributions and their phrases with the row's values."""
    order = np.argsort(-shap_values, axis=1, kind="stable")[:, :REASONS]
    features = list(inputs.columns)
    values = inputs.to_numpy(dtype="float64")
    phrases, names, amounts = [], [], []
    for i in range(len(inputs)):
        row = context.iloc[i]
        top = [j for j in order[i] if shap_values[i, j] > 0]
        phrases.append([phrase(features[j], values[i, j], row) for j in top])
        names.append([features[j] for j in top])
        amounts.append([float(shap_values[i, j]) for j in top])
    return pd.DataFrame({"reason_phrases": phrases, "reason_features": names, "reason_contributions": amounts})


def with_reasons(customers_df: DataFrame, classifier: Any, features: list[str]) -> DataFrame:
    """customer_id and REASON_FIELDS, the REASONS strongest reasons for each row's churn risk, of `customers_df`
    (customer_id, the model's features and CONTEXT), computed on the executors; the model travels with the
    function, as the scoring UDF's does. ValueError when TreeSHAP cannot explain the model (checked here, on the
    driver)."""
    explainers(classifier)
    context = list(dict.fromkeys([*features, *CONTEXT]))

    def explain(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        gc.freeze()  # as the scoring UDF: the model and shap's modules are not walked by each collection
        fold_explainers = explainers(classifier)
        for batch in batches:
            inputs = batch[features].astype("float64")
            reasons = top_reasons(inputs, batch[context].astype("float64"), contributions(fold_explainers, inputs))
            yield reasons.assign(customer_id=batch["customer_id"].to_numpy())

    inputs_df = customers_df.select("customer_id", *[F.col(c).cast("double").alias(c) for c in context])
    schema = ", ".join(["customer_id string", *[f"{name} {kind}" for name, kind in REASON_FIELDS.items()]])
    return inputs_df.mapInPandas(explain, schema)
