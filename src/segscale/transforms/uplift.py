"""The per-customer uplift model, with `retention.uplift_model` (docs/retention.md#per-customer-uplift).

The tier posteriors of `outcomes` give one uplift per tier. Within a tier the effect still differs from customer to
customer: a treatment can only keep someone who would have left, so it matters more the likelier they are to churn,
and one lifecycle stage may respond where another does not. A T-learner estimates the effect per customer from the
randomized rows of the plans measured so far: two logistic regressions fitted by Spark ML on the executors (the
driver receives their coefficients, nothing else), P(retained | x) among the treated and among the controls, where x
is what every plan row carries: churn_probability, log(1 + clv), and an indicator per value tier and lifecycle stage
(the first of each is the baseline). A customer's predicted incremental retention τ(x) is the difference of the two;
a plan using the model values a candidate at τ(x) × clv − cost instead of uplift × churn_probability × clv − cost.

Each plan's customers draw an evaluation lot (a hash of the holdout seed, the plan's snapshot and the customer; a
share of EVALUATION_SHARE) and those rows are left out of the fit. On them, the Qini curve: the evaluated customers
in order of predicted uplift, by tenths; at each depth, the incremental retained customers among those targeted so far
(the treated retained minus the controls' retained scaled to the treated count), per evaluated customer. The Qini
coefficient is the area between that curve and the straight line of random targeting: about 0 for a model that
ranks no better than chance, positive when it puts the customers the treatment keeps first. A random ranking of the
same customers would reach a coefficient with a known spread (`qini_random_sd`); a plan uses the model only when its
coefficient is above that noise at `retention.confidence` (one-sided), otherwise the tier uplifts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from scipy import stats

from segscale.transforms.plan import CONTROL, DRAWS, TREATED, lot
from segscale.transforms.segments import LIFECYCLE_STAGES, VALUE_TIERS

# The share of each plan's customers kept out of the fit to measure the model on.
EVALUATION_SHARE = 0.3
QINI_BINS = 10
# Fewer customers than this in an arm of the fit, or in its retained or churned class, and no model is fitted.
MIN_ARM_CUSTOMERS = 50
# A little L2 regularization, so a tier or stage in which every customer behaved alike does not send a
# coefficient to infinity.
REGULARIZATION = 1e-3


def terms() -> dict[str, Column]:
    """The model's covariates, by name, from a plan row's columns."""
    columns = {"churn_probability": F.col("churn_probability").cast("double"),
               "log_clv": F.log1p(F.greatest(F.col("clv").cast("double"), F.lit(0.0)))}
    for tier in VALUE_TIERS[1:]:
        columns[f"tier_{tier}"] = (F.col("value_tier") == F.lit(tier)).cast("double")
    for stage in LIFECYCLE_STAGES[1:]:
        columns[f"stage_{stage}"] = (F.col("lifecycle_stage") == F.lit(stage)).cast("double")
    return columns


@dataclass(frozen=True)
class Arm:
    """One logistic regression of the T-learner: P(retained | x) = 1 / (1 + exp(−(intercept + coefficients · x)))."""

    intercept: float
    coefficients: tuple[float, ...]

    def probability(self, names: Sequence[str]) -> Column:
        x = terms()
        linear = F.lit(self.intercept)
        for name, coefficient in zip(names, self.coefficients, strict=True):
            linear = linear + F.lit(coefficient) * x[name]
        return F.lit(1.0) / (F.lit(1.0) + F.exp(-linear))


@dataclass(frozen=True)
class Qini:
    """A Qini curve (`qini`) and its coefficient, with the standard deviation of the coefficient a random
    ranking of the same customers would have."""

    depths: tuple[float, ...]
    gains: tuple[float, ...]
    coefficient: float
    random_sd: float

    def beats_random(self, confidence: float) -> bool:
        """Whether the coefficient is above what a random ranking reaches with probability 1 − confidence."""
        return self.coefficient > float(stats.norm.ppf(confidence)) * self.random_sd


@dataclass(frozen=True)
class UpliftModel:
    """A fitted T-learner, how it did on the evaluation rows, and whether plans use it; `note` says why a model
    was not fitted (treated and control are then None) or is not used."""

    snapshot_date: dt.date
    plans: tuple[str, ...]
    terms: tuple[str, ...]
    treated: Arm | None
    control: Arm | None
    customers_fitted: int
    customers_evaluated: int
    qini: Qini | None = None
    used: bool = False
    note: str | None = None

    def incremental_retention(self) -> Column:
        """τ(x): the predicted retention if treated minus if not, per row with the plan's columns."""
        assert self.treated is not None and self.control is not None
        return self.treated.probability(self.terms) - self.control.probability(self.terms)

    def row(self, run_id: str) -> dict[str, Any]:
        """Its uplift_models row."""
        fitted = self.treated is not None and self.control is not None
        qini = self.qini
        return {
            "snapshot_date": self.snapshot_date, "plans": list(self.plans), "terms": list(self.terms),
            "treated_intercept": self.treated.intercept if fitted else None,
            "treated_coefficients": list(self.treated.coefficients) if fitted else None,
            "control_intercept": self.control.intercept if fitted else None,
            "control_coefficients": list(self.control.coefficients) if fitted else None,
            "customers_fitted": self.customers_fitted, "customers_evaluated": self.customers_evaluated,
            "qini_coefficient": qini.coefficient if qini else None,
            "qini_random_sd": qini.random_sd if qini else None,
            "qini_depths": list(qini.depths) if qini else [], "qini_gains": list(qini.gains) if qini else [],
            "used_by_plans": self.used, "note": self.note, "run_id": run_id,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UpliftModel:
        fitted = row["treated_coefficients"] is not None
        qini = (Qini(tuple(row["qini_depths"]), tuple(row["qini_gains"]), row["qini_coefficient"],
                     row["qini_random_sd"]) if row["qini_coefficient"] is not None else None)
        return cls(row["snapshot_date"], tuple(row["plans"]), tuple(row["terms"]),
                   Arm(row["treated_intercept"], tuple(row["treated_coefficients"])) if fitted else None,
                   Arm(row["control_intercept"], tuple(row["control_coefficients"])) if fitted else None,
                   row["customers_fitted"], row["customers_evaluated"], qini, bool(row["used_by_plans"]),
                   row["note"])


def randomized_rows(plan_df: DataFrame, window_df: DataFrame, seed: int) -> DataFrame:
    """A measured plan's treated and control customers: the plan's columns, `treated` (as assigned), `retained`
    (a purchase in the outcome window: `window_df`'s `_purchases`) and `evaluation` (the customer's lot)."""
    draw = lot(F.lit(seed), F.col("snapshot_date"), F.col("customer_id"), F.lit("evaluation"))
    return plan_df.where(F.col("treatment_group").isin(TREATED, CONTROL)).join(
        window_df, "customer_id", how="left").select(
        "customer_id", "snapshot_date", "value_tier", "lifecycle_stage", "churn_probability", "clv",
        (F.col("treatment_group") == F.lit(TREATED)).alias("treated"),
        (F.coalesce(F.col("_purchases"), F.lit(0)) > 0).cast("double").alias("retained"),
        (draw < F.lit(round(EVALUATION_SHARE * DRAWS))).alias("evaluation"))


def fit_uplift_model(rows_df: DataFrame, snapshot_date: dt.date, plans: Sequence[str], confidence: float
                     ) -> UpliftModel:
    """Fit the T-learner on the rows outside the evaluation lot and measure its Qini coefficient on the others;
    plans use it when the coefficient beats random targeting at `confidence` (one-sided)."""
    names = tuple(terms())
    data_df = rows_df.select("value_tier", "lifecycle_stage", "churn_probability", "clv", "treated", "retained",
                             "evaluation").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {(r["evaluation"], r["treated"]): (r["n"], r["retained"]) for r in data_df.groupBy(
            "evaluation", "treated").agg(F.count(F.lit(1)).alias("n"), F.sum("retained").alias("retained"))
            .collect()}  # small: four rows
        fitted, evaluated = (sum(counts.get((e, t), (0, 0))[0] for t in (True, False)) for e in (False, True))
        model = UpliftModel(snapshot_date, tuple(plans), names, None, None, fitted, evaluated)
        short = [f"{arm} {n:,} customers, {int(kept):,} retained" for arm, (n, kept) in (
            ("treated", counts.get((False, True), (0, 0))), ("control", counts.get((False, False), (0, 0))))
            if min(n, kept, n - kept) < MIN_ARM_CUSTOMERS]
        if short:
            return _replace(model, note=f"not fitted: an arm of the fit needs at least {MIN_ARM_CUSTOMERS} "
                                        f"customers retained and {MIN_ARM_CUSTOMERS} not ({'; '.join(short)})")
        vectors_df = VectorAssembler(inputCols=list(names), outputCol="features").transform(
            data_df.where(~F.col("evaluation")).select(
                *[column.alias(name) for name, column in terms().items()], "treated", "retained"))
        arms = []
        for treated in (True, False):
            regression = LogisticRegression(featuresCol="features", labelCol="retained", regParam=REGULARIZATION,
                                            maxIter=100).fit(vectors_df.where(F.col("treated") == F.lit(treated)))
            arms.append(Arm(float(regression.intercept), tuple(float(c) for c in regression.coefficients)))
        model = _replace(model, treated=arms[0], control=arms[1])
        curve = qini(data_df.where(F.col("evaluation")), model.incremental_retention())
        if curve is None:
            return _replace(model, note="not used: the evaluation rows lack a treated or a control group")
        if not curve.beats_random(confidence):
            return _replace(model, qini=curve, note=(
                f"not used: its Qini coefficient {curve.coefficient:.4f} is within what random targeting reaches "
                f"(standard deviation {curve.random_sd:.4f}, one-sided at {confidence:.0%})"))
        return _replace(model, qini=curve, used=True)
    finally:
        data_df.unpersist()


def _replace(model: UpliftModel, **changes: Any) -> UpliftModel:
    return UpliftModel(**{**model.__dict__, **changes})


def qini(rows_df: DataFrame, uplift: Column, bins: int = QINI_BINS) -> Qini | None:
    """The Qini curve of `uplift` over rows with `treated` and `retained`: rows in tenths (`bins`) of descending
    uplift (ties share a tenth); for each depth d (the share of rows targeted), the incremental retained customers
    R_t − R_c · N_t / N_c among them, per row. Starts at (0, 0); depths without controls yet are skipped. None
    without treated or control rows. One Spark aggregate per bin; the curve is computed from those few rows."""
    scored_df = rows_df.select("treated", "retained", uplift.alias("_uplift"))
    cuts = sorted(set(scored_df.approxQuantile("_uplift", [i / bins for i in range(1, bins)], 1e-3)))
    rank = sum((F.col("_uplift") <= F.lit(cut)).cast("int") for cut in cuts) if cuts else F.lit(0)
    treated = F.col("treated")
    sums = sorted(scored_df.groupBy(rank.alias("bin")).agg(
        F.count_if(treated).alias("n_t"), F.count_if(~treated).alias("n_c"),
        F.sum(F.when(treated, F.col("retained")).otherwise(0.0)).alias("r_t"),
        F.sum(F.when(~treated, F.col("retained")).otherwise(0.0)).alias("r_c")).collect(),  # small: ≤ bins rows
        key=lambda r: r["bin"])
    total = sum(r["n_t"] + r["n_c"] for r in sums)
    if not sum(r["n_t"] for r in sums) or not sum(r["n_c"] for r in sums):
        return None
    depths, gains = [0.0], [0.0]
    n_t = n_c = r_t = r_c = 0.0
    for r in sums:
        n_t, n_c, r_t, r_c = n_t + r["n_t"], n_c + r["n_c"], r_t + r["r_t"], r_c + r["r_c"]
        if n_c:
            depths.append((n_t + n_c) / total)
            gains.append((r_t - r_c * n_t / n_c) / total)
    return Qini(tuple(depths), tuple(gains), qini_coefficient(depths, gains),
                qini_random_sd(depths, n_t, n_c, r_t, r_c))


def _trapezoid_weights(depths: Sequence[float]) -> np.ndarray:
    d = np.asarray(depths, dtype=float)
    steps = np.diff(d)
    return np.concatenate([[0.0], steps]) / 2 + np.concatenate([steps, [0.0]]) / 2


def qini_coefficient(depths: Sequence[float], gains: Sequence[float]) -> float:
    """The area between the Qini curve and random targeting's line from (0, 0) to its end (trapezoids)."""
    d, g = np.asarray(depths, dtype=float), np.asarray(gains, dtype=float)
    return float(_trapezoid_weights(d) @ (g - d * g[-1]))


def qini_random_sd(depths: Sequence[float], treated: float, controls: float, retained_treated: float,
                   retained_control: float) -> float:
    """The standard deviation of the Qini coefficient of a random ranking of these customers. In random order, the
    gain at depth d is N_t(d) times the difference of two retention rates measured on a random d-share of each
    group: its distance from the straight line is a sum of the customers' deviations from their group's rate
    (treated: y − p_t; controls, scaled to the treated: −(N_t / N_c)(y − p_c)), a d-share drawn without
    replacement, with covariance n·σ²·(min(d, d′) − d·d′) between depths (σ² the deviations' variance per customer,
    over n²). The coefficient is a weighted sum of those distances (the trapezoids' weights w): variance n·σ²·wᵀKw.
    """
    n = treated + controls
    ratio, p_t, p_c = treated / controls, retained_treated / treated, retained_control / controls
    variance = (treated * p_t * (1 - p_t) + ratio * ratio * controls * p_c * (1 - p_c)) / n ** 3
    d = np.asarray(depths, dtype=float)
    w = _trapezoid_weights(d)
    bridge = np.minimum.outer(d, d) - np.outer(d, d)
    return float(np.sqrt(n * variance * max(w @ bridge @ w, 0.0)))
