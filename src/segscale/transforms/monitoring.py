"""Model monitoring (definitions: docs/models.md, "Monitoring"): drift of the churn model's inputs and scores
against the rows it was trained on, backtests of published scores once their labels have matured, and the
alerts and retrain decisions they lead to.

Every statistic over customers is a Spark aggregate; the driver gets counts per bin, per distinct score or per
tier, never customer rows. The training side of drift (`Reference`) is computed on the driver from the training
sample the churn model was fitted on, which is there already.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segscale.config import MonitoringSettings
from segscale.models.bgnbd import ClvParams, expected_avg_spend, expected_purchases
from segscale.transforms.features import PURCHASE, snapshot_end
from segscale.transforms.outcomes import window_purchases
from segscale.transforms.plan import Prefix, range_parts

BINS = 10  # quantile bins of a feature's training distribution (fewer when it has fewer distinct values)
PSI_FLOOR = 1e-4  # a bin's share is at least this in the PSI, so an empty bin counts and never divides by zero
SCORE = "churn_probability"
DECILES = 10
DRIFT, BACKTEST, CALIBRATION, DECISION = "drift", "backtest", "calibration", "decision"


# ---- drift ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """A churn model version's training distribution: per column (its features and SCORE) the inner edges of
    its quantile bins, and the share of training rows in each bin: value <= edges[0], ..., > edges[-1], then
    missing; and the date of the rows (the training's latest labelled cutoff)."""

    edges: dict[str, list[float]]
    shares: dict[str, list[float]]
    reference_date: str | None = None

    @classmethod
    def of(cls, columns: Mapping[str, np.ndarray], reference_date: dt.date | None = None) -> Reference:
        edges, shares = {}, {}
        for name, column in columns.items():
            values = np.asarray(column, dtype="float64")
            known = values[np.isfinite(values)]
            inner = np.unique(np.quantile(known, np.arange(1, BINS) / BINS)) if known.size else np.array([])
            edges[name] = [float(e) for e in inner]
            counts = np.bincount(np.searchsorted(inner, known, side="left"), minlength=len(inner) + 1)
            shares[name] = [float(c) / len(values) for c in counts] + [float(len(values) - known.size) / len(values)]
        return cls(edges, shares, reference_date.isoformat() if reference_date else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        return cls(dict(data["edges"]), dict(data["shares"]), data.get("reference_date"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bin_of(value: Column, edges: Sequence[float]) -> Column:
    """The bin of Reference's rule: the number of edges below the value; len(edges) + 1 for a missing one."""
    below = F.lit(0)
    for edge in edges:
        below = below + (value > F.lit(edge)).cast("int")
    return F.when(value.isNull() | F.isnan(value), F.lit(len(edges) + 1)).otherwise(below)


def bin_counts(df: DataFrame, reference: Reference) -> dict[str, list[int]]:
    """Rows of `df` in each of the reference's bins, for every reference column `df` has: one pass, one row
    collected."""
    columns = [c for c in reference.edges if c in df.columns]
    aggregates = []
    for name in columns:
        binned = bin_of(F.col(name).cast("double"), reference.edges[name])
        aggregates += [F.count_if(binned == F.lit(k)).alias(f"{name}/{k}")
                       for k in range(len(reference.edges[name]) + 2)]
    if not aggregates:
        return {}
    row = df.agg(*aggregates).first().asDict()  # small: one row of counts
    return {name: [int(row[f"{name}/{k}"]) for k in range(len(reference.edges[name]) + 2)] for name in columns}


def psi(expected_shares: Sequence[float], actual_counts: Sequence[int]) -> float | None:
    """Population stability index of the actual rows against the expected shares (both floored at PSI_FLOOR);
    None without actual rows."""
    total = sum(actual_counts)
    if total == 0:
        return None
    expected = np.maximum(np.asarray(expected_shares, dtype=float), PSI_FLOOR)
    actual = np.maximum(np.asarray(actual_counts, dtype=float) / total, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


# ---- backtest of churn scores ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backtest:
    """The churn scores of a snapshot against what happened over the horizon after it."""

    customers: int
    churned: int
    roc_auc: float | None
    pr_auc: float | None
    brier: float
    top_decile_lift: float | None
    calibration: list[dict[str, float]] = field(default_factory=list)  # per decile of predicted risk, highest first

    @property
    def churn_rate(self) -> float:
        return self.churned / self.customers

    @property
    def calibration_gap(self) -> float:
        """|mean predicted − observed churn rate| over every customer."""
        predicted = sum(d["mean_predicted"] * d["customers"] for d in self.calibration) / self.customers
        return abs(predicted - self.churn_rate)


def labelled_scores(scores_df: DataFrame, transactions_df: DataFrame, scored_on: dt.date, horizon_days: int
                    ) -> DataFrame:
    """customer_id, `p` (the published churn probability) and `y` (1: no purchase in the horizon after
    `scored_on`, the churn label of docs/models.md) of every customer scored on `scored_on`. The window is the one
    a plan of `scored_on` is measured over (outcomes.window_purchases)."""
    window_df = window_purchases(transactions_df, scored_on, horizon_days).select("customer_id", "_purchases")
    return (scores_df.where(F.col(SCORE).isNotNull()).select("customer_id", F.col(SCORE).alias("p"))
            .join(window_df, "customer_id", "left")
            .select("customer_id", "p", F.when(F.coalesce("_purchases", F.lit(0)) > 0, 0).otherwise(1).alias("y")))


def backtest(labelled_df: DataFrame) -> Backtest | None:
    """ROC-AUC, PR-AUC (average precision), Brier score, top-decile lift and calibration by decile of `p`
    against `y`, exactly, from counts per distinct score. Scores are taken highest first; tied scores share a
    decile (that of the first customer with the score) and count as ties, as scikit-learn's metrics do. None
    without rows; the AUCs are None when every customer has the same label."""
    totals = labelled_df.agg(F.count(F.lit(1)).alias("n"), F.sum("y").alias("positives"),
                             F.sum((F.col("p") - F.col("y")) ** 2).alias("squares")).first()  # small: one row
    n, positives = int(totals["n"]), int(totals["positives"] or 0)
    if n == 0:
        return None
    negatives = n - positives
    grouped_df = labelled_df.groupBy("p").agg(F.sum("y").cast("long").alias("pos"),
                                             F.count(F.lit(1)).alias("rows"))
    order = [F.col("p").desc()]
    prefix = Prefix(range_parts(grouped_df, order), order)
    running = prefix.add(tp=F.col("pos"), seen=F.col("rows"))
    before_rows = running["seen"] - F.col("rows")
    before_pos = running["tp"] - F.col("pos")
    negative = F.col("rows") - F.col("pos")
    decile = F.least(F.floor(before_rows * F.lit(DECILES) / F.lit(n)), F.lit(DECILES - 1)).cast("int")
    terms_df = prefix.df.select(
        decile.alias("decile"), "rows", "pos", (F.col("p") * F.col("rows")).alias("predicted"),
        (negative * (before_pos + F.col("pos") / 2)).alias("auc_term"),
        (F.col("pos") * running["tp"] / running["seen"]).alias("ap_term"))
    deciles = terms_df.groupBy("decile").agg(
        F.sum("rows").alias("customers"), F.sum("pos").alias("churned"), F.sum("predicted").alias("predicted"),
        F.sum("auc_term").alias("auc"), F.sum("ap_term").alias("ap")).orderBy("decile").collect()  # small: ten rows
    auc, ap = sum(r["auc"] for r in deciles), sum(r["ap"] for r in deciles)
    base_rate = positives / n
    top = deciles[0]
    return Backtest(
        customers=n, churned=positives,
        roc_auc=auc / (positives * negatives) if positives and negatives else None,
        pr_auc=ap / positives if positives and negatives else None,
        brier=float(totals["squares"]) / n,
        top_decile_lift=(top["churned"] / top["customers"]) / base_rate if positives else None,
        calibration=[{"decile": r["decile"] + 1, "customers": int(r["customers"]),
                      "mean_predicted": r["predicted"] / r["customers"], "observed": r["churned"] / r["customers"]}
                     for r in deciles])


# ---- backtest of CLV ---------------------------------------------------------------------------------------------
def clv_backtest(features_df: DataFrame, tiers_df: DataFrame, transactions_df: DataFrame, params: ClvParams,
                 scored_on: dt.date, until: dt.date) -> list[dict[str, Any]]:
    """Per value tier (as of `scored_on`) and in total: the buyers of `scored_on`, the purchase days and spend the
    CLV model expected of them from `scored_on` to `until`, and what they did (purchase days and purchase amounts
    in that window). Expected purchases and spend per purchase day are predicted on the executors."""
    unit = float(params.time_unit_days)
    elapsed = (until - scored_on).days / unit

    @F.pandas_udf("purchases double, spend double")
    def expected(x: pd.Series, t_x: pd.Series, T: pd.Series, m: pd.Series) -> pd.DataFrame:
        xs, t_xs, Ts, ms = (s.to_numpy(dtype="float64", na_value=np.nan) for s in (x, t_x, T, m))
        with np.errstate(all="ignore"):
            purchases = expected_purchases(params.bgnbd, elapsed, xs, t_xs / unit, Ts / unit)
            spend = expected_avg_spend(params.gamma_gamma, xs, ms)
        return pd.DataFrame({"purchases": purchases, "spend": purchases * spend})

    start, end = snapshot_end(scored_on), snapshot_end(until)
    realized_df = (transactions_df.where((F.col("ts") >= start) & (F.col("ts") < end)
                                         & (F.col("transaction_type") == F.lit(PURCHASE)))
                   .groupBy("customer_id").agg(F.countDistinct(F.to_date("ts")).alias("_days"),
                                               F.sum("amount").alias("_spend")))
    inputs = [F.col(c).cast("double") for c in ("bgnbd_frequency", "bgnbd_recency", "bgnbd_T", "bgnbd_monetary")]
    buyers_df = (features_df.where(F.col("bgnbd_frequency").isNotNull())
                 .select("customer_id", expected(*inputs).alias("_expected"))
                 .join(tiers_df.select("customer_id", "value_tier"), "customer_id")
                 .join(realized_df, "customer_id", "left"))
    rows = buyers_df.groupBy("value_tier").agg(
        F.count(F.lit(1)).alias("customers"), F.sum("_expected.purchases").alias("expected_purchases"),
        F.sum(F.coalesce("_days", F.lit(0))).alias("realized_purchases"),
        F.sum("_expected.spend").alias("expected_spend"),
        F.sum(F.coalesce("_spend", F.lit(0.0))).alias("realized_spend")).collect()  # small: one row per tier
    by_tier = [r.asDict() for r in rows]
    total = {"value_tier": "all", **{k: sum(r[k] for r in by_tier) for k in (
        "customers", "expected_purchases", "realized_purchases", "expected_spend", "realized_spend")}}
    return sorted(by_tier, key=lambda r: r["value_tier"]) + ([total] if by_tier else [])


# ---- alerts and the retrain decision ---------------------------------------------------------------------------
@dataclass
class Finding:
    """One model_monitoring row before its snapshot, model and run are added."""

    kind: str
    subject: str
    metric: str
    value: float | None
    reference_date: dt.date | None = None
    threshold: float | None = None
    alert: bool = False
    customers: int | None = None
    note: str | None = None


def drift_findings(counts: Mapping[str, list[int]], reference: Reference, settings: MonitoringSettings
                   ) -> list[Finding]:
    """A PSI row per column, highest first, alerting above monitoring.max_psi."""
    trained_on = dt.date.fromisoformat(reference.reference_date) if reference.reference_date else None
    findings = []
    for name, actual in counts.items():
        value = psi(reference.shares[name], actual)
        if value is None:
            continue
        findings.append(Finding(DRIFT, name, "psi", value, trained_on, settings.max_psi, value > settings.max_psi,
                                sum(actual)))
    return sorted(findings, key=lambda f: -(f.value or 0.0))


def backtest_findings(result: Backtest, scored_on: dt.date, trained_auc: float | None,
                      settings: MonitoringSettings) -> list[Finding]:
    """The backtest's metrics (ROC-AUC alerting when it fell more than monitoring.max_auc_drop below the model's
    holdout ROC-AUC, the calibration gap above monitoring.max_calibration_gap) and its calibration deciles."""
    floor = None if trained_auc is None else trained_auc - settings.max_auc_drop
    auc_alert = result.roc_auc is not None and floor is not None and result.roc_auc < floor
    rows = [
        Finding(BACKTEST, SCORE, "roc_auc", result.roc_auc, scored_on, floor, auc_alert, result.customers,
                None if trained_auc is None else f"holdout ROC-AUC at training {trained_auc:.4f}"),
        Finding(BACKTEST, SCORE, "pr_auc", result.pr_auc, scored_on, customers=result.customers),
        Finding(BACKTEST, SCORE, "brier", result.brier, scored_on, customers=result.customers),
        Finding(BACKTEST, SCORE, "top_decile_lift", result.top_decile_lift, scored_on, customers=result.customers),
        Finding(BACKTEST, SCORE, "churn_rate", result.churn_rate, scored_on, customers=result.customers),
        Finding(BACKTEST, SCORE, "calibration_gap", result.calibration_gap, scored_on,
                settings.max_calibration_gap, result.calibration_gap > settings.max_calibration_gap,
                result.customers),
    ]
    for decile in result.calibration:
        rows += [Finding(CALIBRATION, str(decile["decile"]), metric, decile[metric], scored_on,
                         customers=decile["customers"]) for metric in ("mean_predicted", "observed")]
    return rows


def clv_findings(rows: Sequence[Mapping[str, Any]], scored_on: dt.date, settings: MonitoringSettings
                 ) -> list[Finding]:
    """Expected against realized purchases and spend per tier and in total; the total's relative errors alert
    above monitoring.max_clv_error."""
    findings = []
    for row in rows:
        total = row["value_tier"] == "all"
        for what in ("purchases", "spend"):
            expected, realized = row[f"expected_{what}"], row[f"realized_{what}"]
            error = realized / expected - 1 if expected else None
            findings += [
                Finding(BACKTEST, row["value_tier"], f"expected_{what}", expected, scored_on,
                        customers=row["customers"]),
                Finding(BACKTEST, row["value_tier"], f"realized_{what}", float(realized), scored_on,
                        customers=row["customers"]),
                Finding(BACKTEST, row["value_tier"], f"{what}_error", error, scored_on,
                        settings.max_clv_error if total else None,
                        bool(total and error is not None and abs(error) > settings.max_clv_error),
                        row["customers"]),
            ]
    return findings


def retrain_decision(findings: Sequence[Finding], settings: MonitoringSettings) -> Finding:
    """Whether the policy (monitoring.retrain_on) says to retrain, given the alerts, and why."""
    kinds = {"feature_drift": lambda f: f.kind == DRIFT and f.subject != SCORE,
             "score_drift": lambda f: f.kind == DRIFT and f.subject == SCORE,
             "backtest": lambda f: f.kind == BACKTEST}
    reasons = [f"{f.subject} {f.metric} {f.value:.4g} beyond {f.threshold:.4g}"
               for f in findings if f.alert and any(kinds[k](f) for k in settings.retrain_on)]
    note = "; ".join(reasons) if reasons else "no alert the policy acts on (monitoring.retrain_on)"
    return Finding(DECISION, "retrain", "retrain", 1.0 if reasons else 0.0, alert=bool(reasons), note=note)


def finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
