"""The churn classifier on the driver: a calibrated scikit-learn pipeline, its holdout evaluation and baselines.

Everything here works on the capped pandas samples that `segscale.transforms.labels` pulls to the driver; the
scoring of the
whole base happens on the executors. Definitions of the metrics and baselines: docs/models.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline

from segscale.charts import COUNT, REFERENCE, RISK, pyplot, save_png
from segscale.config import ChurnSettings, LifecycleSettings
from segscale.transforms.labels import LABEL, TRUE_LABEL

# The candidate inputs: every numeric feature of customer_features (missing values are left to the estimator;
# HistGradientBoosting routes them natively). A model uses those its training rows carry (`usable_features`).
MODEL_FEATURES = (
    "recency_days", "frequency", "monetary", "avg_order_value", "tenure_days", "days_since_first_purchase",
    "mean_days_between_purchases", "std_days_between_purchases", "purchases_30d", "purchases_90d",
    "purchases_365d", "spend_30d", "spend_90d", "spend_365d", "spend_trend_90d", "distinct_categories",
    "return_rate", "online_share", "interactions_365d", "interaction_cost_365d", "complaints_365d",
    "last_satisfaction", "bgnbd_frequency", "bgnbd_recency", "bgnbd_T",
)
TOP_SHARE = 0.1  # lift and capture rate are read at the top decile of predicted risk
CALIBRATION_BINS = 10
IMPORTANCE_ROWS = 20_000  # holdout rows the permutation importance is computed on
IMPORTANCE_MIN_CLASS_ROWS = 100  # rows of each label its sample keeps at least (all of them when fewer)
IMPORTANCE_REPEATS = 3  # shuffles of each feature
IMPORTANCE_BATCH_ROWS = 100_000  # shuffled rows predicted in one call: 20 MB of float64 at 25 features


def model_inputs(frame: pd.DataFrame, features: Sequence[str] = MODEL_FEATURES) -> pd.DataFrame:
    """The feature columns as float64 (nullable integers become NaN), in the order given."""
    return frame.loc[:, list(features)].astype("float64")


def usable_features(train: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """The candidate features the training rows carry, and why each other one is left out: missing in every row
    (e.g. the interaction features of an input without interactions) or one value in every row (missing counts as
    a value, so a feature that is known for some rows and missing for others stays)."""
    used, dropped = [], {}
    for name in MODEL_FEATURES:
        values = train[name].astype("float64")
        if values.isna().all():
            dropped[name] = "missing in every training row"
        elif values.nunique(dropna=False) < 2:
            dropped[name] = f"the same value ({values.iloc[0]:g}) in every training row"
        else:
            used.append(name)
    return used, dropped


def features_of(model: ClassifierMixin) -> list[str]:
    """The features a fitted model was trained on, in its order."""
    return list(model.feature_names_in_)


def build_estimator(settings: ChurnSettings) -> ClassifierMixin:
    """The configured classifier class with its parameters."""
    module_name, _, class_name = settings.estimator.rpartition(".")
    try:
        estimator_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"churn.estimator {settings.estimator!r} cannot be imported: {exc}") from exc
    try:
        return estimator_class(**settings.estimator_params)
    except TypeError as exc:
        raise ValueError(f"churn.estimator_params do not fit {settings.estimator}: {exc}") from exc


def fit_model(train: pd.DataFrame, features: Sequence[str], settings: ChurnSettings) -> CalibratedClassifierCV:
    """Fit the pipeline on `features` and calibrate its probabilities on out-of-fold predictions of the training
    rows; the model remembers its features (`features_of`)."""
    pipeline = Pipeline([("classifier", build_estimator(settings))])
    model = CalibratedClassifierCV(pipeline, method=settings.calibration, cv=settings.calibration_folds)
    return model.fit(model_inputs(train, features), train[LABEL].astype(int).to_numpy())


def predict_churn(model: ClassifierMixin, frame: pd.DataFrame) -> np.ndarray:
    """P(churned) for each row, from the features the model was trained on."""
    return model.predict_proba(model_inputs(frame, features_of(model)))[:, 1]


# ---- baselines -----------------------------------------------------------------------------------------------
def recency_baseline(train: pd.DataFrame) -> LogisticRegression:
    """Recency alone: a logistic regression on log(1 + recency_days)."""
    return LogisticRegression().fit(_log_recency(train), train[LABEL].astype(int))


def _log_recency(frame: pd.DataFrame) -> np.ndarray:
    return np.log1p(frame[["recency_days"]].astype("float64").to_numpy())


def rule_groups(frame: pd.DataFrame, lifecycle: LifecycleSettings) -> pd.Series:
    """The frequency/recency rule: at risk by recency (lifecycle.at_risk_after_days) x one-time buyer."""
    lapsed = frame["recency_days"].astype("float64") > lifecycle.at_risk_after_days
    one_time = frame["frequency"].astype("float64") <= 1
    return lapsed.astype(int) * 2 + one_time.astype(int)


def baseline_scores(train: pd.DataFrame, holdout: pd.DataFrame, lifecycle: LifecycleSettings
                    ) -> dict[str, np.ndarray]:
    """Holdout probabilities of the two baselines, both fitted on the training rows only."""
    recency = recency_baseline(train).predict_proba(_log_recency(holdout))[:, 1]
    # The rule's probability is the training churn rate of the holdout row's group.
    rates = train[LABEL].astype(float).groupby(rule_groups(train, lifecycle)).mean()
    overall = float(train[LABEL].mean())
    rule = rule_groups(holdout, lifecycle).map(rates).fillna(overall).to_numpy()
    return {"recency": recency, "frequency_recency_rule": rule}


# ---- metrics -------------------------------------------------------------------------------------------------
def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC-AUC, PR-AUC, Brier score, log loss, and lift and capture rate in the top decile of predicted risk."""
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    top = np.argsort(-p, kind="stable")[: max(1, int(round(TOP_SHARE * len(p))))]
    base_rate = y.mean()
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "top_decile_lift": float(y[top].mean() / base_rate) if base_rate > 0 else float("nan"),
        "top_decile_capture": float(y[top].sum() / y.sum()) if y.sum() > 0 else float("nan"),
        "churn_rate": float(base_rate),
    }


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """Equal-width bins of predicted probability: rows, mean prediction and observed churn rate per bin."""
    frame = pd.DataFrame({"y": np.asarray(y, dtype=float), "p": np.asarray(p, dtype=float)})
    frame["bin"] = np.minimum((frame["p"] * bins).astype(int), bins - 1)
    grouped = frame.groupby("bin").agg(rows=("y", "size"), mean_predicted=("p", "mean"), observed=("y", "mean"))
    return [{"bin_low": b / bins, "bin_high": (b + 1) / bins, **{k: float(v) for k, v in row.items()}}
            for b, row in grouped.iterrows()]


def lift_table(y: np.ndarray, p: np.ndarray, groups: int = 10) -> list[dict[str, float]]:
    """Holdout rows in deciles of predicted risk, highest first: churn rate, lift over the base rate and the
    cumulative share of churners captured (the lift chart and cumulative gains curve)."""
    y = np.asarray(y, dtype=float)
    order = np.argsort(-np.asarray(p, dtype=float), kind="stable")
    base_rate, churners = y.mean(), max(y.sum(), 1.0)
    rows, captured = [], 0.0
    for decile, members in enumerate(np.array_split(order, groups), start=1):
        if not len(members):
            continue
        captured += y[members].sum()
        rate = float(y[members].mean())
        rows.append({"decile": decile, "rows": int(len(members)), "churn_rate": rate,
                     "lift": rate / base_rate if base_rate > 0 else float("nan"),
                     "cumulative_share": float(sum(r["rows"] for r in rows) + len(members)) / len(y),
                     "cumulative_capture": float(captured / churners)})
    return rows


def evaluate(model: ClassifierMixin, train: pd.DataFrame, holdout: pd.DataFrame, lifecycle: LifecycleSettings
             ) -> dict[str, Any]:
    """The model's holdout metrics and calibration table, the same metrics for both baselines, and whether the
    model beats both on ROC-AUC."""
    y = holdout[LABEL].astype(int).to_numpy()
    p = predict_churn(model, holdout)
    result: dict[str, Any] = {"model": classification_metrics(y, p), "calibration": calibration_table(y, p),
                              "lift": lift_table(y, p),
                              "holdout_rows": int(len(holdout)), "train_rows": int(len(train))}
    baselines = baseline_scores(train, holdout, lifecycle)
    result["baselines"] = {name: classification_metrics(y, scores) for name, scores in baselines.items()}
    result["beats_baselines"] = all(result["model"]["roc_auc"] > m["roc_auc"] for m in result["baselines"].values())
    if TRUE_LABEL in holdout and holdout[TRUE_LABEL].notna().all() and holdout[TRUE_LABEL].nunique() == 2:
        result["model"]["roc_auc_vs_truth"] = float(roc_auc_score(holdout[TRUE_LABEL].astype(int), p))
    return result


def charts(model: ClassifierMixin, holdout: pd.DataFrame, evaluation: Mapping[str, Any], out_dir: Path,
           seed: int) -> list[Path]:
    """calibration.png, lift.png and importance.png (permutation importance on the holdout, ROC-AUC drop)."""
    plt = pyplot()
    y = holdout[LABEL].astype(int).to_numpy()
    p = predict_churn(model, holdout)
    written = []

    fig, ax = plt.subplots(figsize=(5, 5))
    table = evaluation["calibration"]
    ax.plot([0, 1], [0, 1], linestyle="--", color=REFERENCE, label="perfect calibration")
    ax.plot([b["mean_predicted"] for b in table], [b["observed"] for b in table], marker="o", color=RISK,
            label="model")
    ax.set(xlabel="mean predicted churn probability", ylabel="observed churn rate", title="Calibration (holdout)")
    ax.legend()
    written.append(save_png(fig, out_dir / "calibration.png"))

    order = np.argsort(-p, kind="stable")
    share = np.arange(1, len(y) + 1) / len(y)
    captured = np.cumsum(y[order]) / max(y.sum(), 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(share, captured, color=RISK, label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color=REFERENCE, label="random")
    ax.axvline(TOP_SHARE, color=COUNT, linewidth=0.8,
               label=f"top decile: lift {evaluation['model']['top_decile_lift']:.2f}")
    ax.set(xlabel="share of customers, highest risk first", ylabel="share of churners captured",
           title="Cumulative gains (holdout)")
    ax.legend()
    written.append(save_png(fig, out_dir / "lift.png"))

    sample = importance_sample(holdout, IMPORTANCE_ROWS, seed)
    features = features_of(model)
    importance = permutation_importance(model, model_inputs(sample, features), sample[LABEL].astype(int), seed)
    ranked = sorted(zip(features, importance, strict=True), key=lambda item: item[1])
    fig, ax = plt.subplots(figsize=(6, 7))
    ax.barh([name for name, _ in ranked], [value for _, value in ranked], color=COUNT)
    ax.set(xlabel="drop in ROC-AUC when the feature is shuffled", title="Permutation importance (holdout)")
    written.append(save_png(fig, out_dir / "importance.png"))
    return written


def importance_sample(holdout: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """About `rows` holdout rows for the permutation importance, each label in its share but never fewer than
    IMPORTANCE_MIN_CLASS_ROWS of it (all its rows when it has fewer): ROC-AUC needs both labels, and a uniform
    sample of a large holdout with rare churn can hold no churned customer at all."""
    if len(holdout) <= rows:
        return holdout
    fraction = rows / len(holdout)
    return pd.concat([
        group.sample(n=min(len(group), max(round(len(group) * fraction), IMPORTANCE_MIN_CLASS_ROWS)),
                     random_state=seed)
        for _, group in holdout.groupby(LABEL, sort=True)])


def permutation_importance(model: ClassifierMixin, inputs: pd.DataFrame, y: pd.Series, seed: int,
                           repeats: int = IMPORTANCE_REPEATS) -> np.ndarray:
    """The mean drop in ROC-AUC when each input column is shuffled, `repeats` times (the measure of
    sklearn.inspection.permutation_importance with scoring="roc_auc"). The shuffled copies are stacked and predicted
    in as few calls as IMPORTANCE_BATCH_ROWS allows, and each call's copies are scored together (`roc_auc_by_row`):
    a calibrated ensemble costs milliseconds per call whatever the rows, and on a small holdout one call and one
    roc_auc_score per copy (75) took 2 s of a 15-second run."""
    rng = np.random.default_rng(seed)
    rows, y = len(inputs), y.to_numpy()
    values = inputs.to_numpy(dtype="float64")
    baseline = roc_auc_score(y, model.predict_proba(inputs)[:, 1])
    shuffles = [(column, rng.permutation(rows)) for column in range(values.shape[1]) for _ in range(repeats)]
    per_call = max(1, IMPORTANCE_BATCH_ROWS // max(rows, 1))
    drops = []
    for start in range(0, len(shuffles), per_call):
        batch = shuffles[start:start + per_call]
        stacked = np.tile(values, (len(batch), 1))
        for k, (column, order) in enumerate(batch):
            stacked[k * rows:(k + 1) * rows, column] = values[order, column]
        p = model.predict_proba(pd.DataFrame(stacked, columns=inputs.columns))[:, 1]
        drops += list(baseline - roc_auc_by_row(y, p.reshape(len(batch), rows)))
    return np.asarray(drops).reshape(values.shape[1], repeats).mean(axis=1)


def roc_auc_by_row(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """sklearn's roc_auc_score(y, row) for every row of `scores` at once: the Mann-Whitney statistic of the
    positives' ranks (tied scores share their average rank, so a tie counts one half, as in roc_auc_score)."""
    positive = np.asarray(y).astype(bool)
    n1, n0 = positive.sum(), (~positive).sum()
    ranks = rankdata(scores, axis=1)
    return (ranks[:, positive].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def flat_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """`holdout_<metric>` for the model and `baseline_<name>_<metric>` for the baselines (for tracking)."""
    flat = {f"holdout_{k}": v for k, v in evaluation["model"].items()}
    for name, metrics in evaluation["baselines"].items():
        flat.update({f"baseline_{name}_{k}": v for k, v in metrics.items()})
    return flat


