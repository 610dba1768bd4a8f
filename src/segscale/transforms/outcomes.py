"""What retention plans achieved, and the uplift learned from it (docs/retention.md#measured-outcomes).

A plan of snapshot P is measured once its horizon has passed (P + churn.horizon_days on or before the measuring
run's snapshot): for the plan's treated and control groups, who bought in (P, P + horizon] and what they spent
net of returns. The lots were drawn at random with the same probability for every candidate in the plan, so within
a tier the control group is what the treated group would have done untreated, and the difference between the two
is the plan's effect, with a confidence interval from the two groups' sizes and spread.

Spark aggregates the plan's rows (one small row per tier, treatment and group); the statistics are computed from
those few numbers. The learned uplift is a Beta-Binomial posterior per tier and treatment: the churn rates of the
treated and of the controls, pooled over every plan measured so far, each starting from a prior of
`retention.uplift_prior_strength` pseudo-customers that holds the configured uplift.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy import stats

from segscale.config import RetentionSettings
from segscale.transforms.features import PURCHASE, RETURN, exact_units, money_sum, snapshot_end
from segscale.transforms.plan import CONTROL, TREATED, Uplift
from segscale.transforms.segments import VALUE_TIERS

# Posterior draws for the learned uplift's median and interval (a few numbers per tier: computed on the driver).
POSTERIOR_DRAWS = 20_000


def horizon_end(plan_date: dt.date, horizon_days: int) -> dt.date:
    """The last day of a plan's outcome window (plan_date, plan_date + horizon_days]."""
    return plan_date + dt.timedelta(days=horizon_days)


def matured(plan_dates: Iterable[str], snapshot_date: dt.date, horizon_days: int) -> list[dt.date]:
    """The plans (snapshot dates) whose outcome window has ended by `snapshot_date`, oldest first."""
    days = sorted(dt.date.fromisoformat(d) for d in plan_dates)
    return [d for d in days if horizon_end(d, horizon_days) <= snapshot_date]


def plan_treatments(treatments_df: DataFrame, plan_date: dt.date, next_plan: dt.date | None) -> DataFrame:
    """Per customer, the recorded treatments of the plan of `plan_date`: rows naming it, and rows without a
    snapshot_date treated on or after it and before the next plan. Costs add up (null when none is given)."""
    dated = F.col("treated_on") >= F.lit(plan_date)
    if next_plan is not None:
        dated = dated & (F.col("treated_on") < F.lit(next_plan))
    belongs = (F.col("snapshot_date") == F.lit(plan_date)) | (F.col("snapshot_date").isNull() & dated)
    return treatments_df.where(belongs).groupBy("customer_id").agg(
        F.sum(exact_units(F.col("cost"))).alias("_recorded_units"), F.count(F.lit(1)).alias("_touches"))


def window_purchases(transactions_df: DataFrame, plan_date: dt.date, horizon_days: int) -> DataFrame:
    """Per customer with a transaction in the plan's outcome window: `_purchases` there and `_revenue_units`, their
    net revenue (purchases minus returns) in exact units."""
    start, end = snapshot_end(plan_date), snapshot_end(horizon_end(plan_date, horizon_days))
    kind, units = F.col("transaction_type"), exact_units(F.col("amount"))
    return (transactions_df.where((F.col("ts") >= start) & (F.col("ts") < end)).groupBy("customer_id").agg(
        F.count_if(kind == F.lit(PURCHASE)).alias("_purchases"),
        F.sum(F.when(kind == F.lit(PURCHASE), units).when(kind == F.lit(RETURN), -units)
              .otherwise(F.lit(0))).alias("_revenue_units")))


def group_sums(plan_df: DataFrame, transactions_df: DataFrame, recorded_df: DataFrame | None, plan_date: dt.date,
               horizon_days: int) -> list[dict[str, Any]]:
    """Per value tier, treatment and group (treated or control) of the plan: customers, how many bought in the
    outcome window, their net revenue there (and its sum of squares), their predicted churn, CLV, expected lift
    and saved value, and what was spent on them. One row each (at most six), collected."""
    groups_df = plan_df.where(F.col("treatment_group").isin(TREATED, CONTROL)).join(
        window_purchases(transactions_df, plan_date, horizon_days), "customer_id", how="left")
    treated = F.col("treatment_group") == F.lit(TREATED)
    plan_units = exact_units(F.col("cost"))
    if recorded_df is None:  # without a treatments table the treated group is taken as treated, at the plan's cost
        spent_units, touched = F.when(treated, plan_units).otherwise(F.lit(0)), F.lit(None).cast("boolean")
    else:
        groups_df = groups_df.join(recorded_df, "customer_id", how="left")
        touched = F.col("_touches").isNotNull()
        spent_units = F.when(touched, F.coalesce(F.col("_recorded_units"), plan_units)).otherwise(F.lit(0))
    revenue_units = F.coalesce(F.col("_revenue_units"), F.lit(0)).cast(T.DecimalType(38, 0))
    # uplift × churn probability, from the plan's own figures: expected saved value + cost = uplift × value at risk.
    expected_lift = (F.col("expected_saved_value") + F.col("cost")) / F.col("clv")
    sums = groups_df.groupBy("value_tier", "treatment", "treatment_group").agg(
        F.count(F.lit(1)).alias("customers"),
        F.count_if(F.coalesce(F.col("_purchases"), F.lit(0)) > 0).alias("retained"),
        money_sum(revenue_units).alias("revenue"),
        F.sum(revenue_units * revenue_units).alias("_revenue_squared_units"),
        F.sum("churn_probability").alias("churn_probability"),
        F.sum("clv").alias("clv"),
        F.sum(expected_lift).alias("expected_lift"),
        money_sum(exact_units(F.col("expected_saved_value"))).alias("expected_saved_value"),
        money_sum(spent_units).alias("spend"),
        F.count_if(touched).alias("with_treatment_rows") if recorded_df is not None
        else F.lit(None).cast("long").alias("with_treatment_rows"),
        F.first("run_id").alias("plan_run_id"),
    )
    rows = []
    for row in sums.collect():  # small: one row per tier, treatment and group
        values = row.asDict()
        values["revenue_squared"] = float(values.pop("_revenue_squared_units")) / 1e8  # units² → currency²
        rows.append(values)
    return rows


# ---- statistics on the aggregates ---------------------------------------------------------------------------------
def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def difference_interval(treated: tuple[int, int], control: tuple[int, int], confidence: float
                        ) -> tuple[float, float]:
    """Newcombe's hybrid score interval for the difference of two proportions (successes, n): well-behaved for
    small groups and shares at 0 or 1, where the normal (Wald) interval is not."""
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    (s1, n1), (s0, n0) = treated, control
    p1, p0 = s1 / n1, s0 / n0
    l1, u1 = _wilson(s1, n1, z)
    l0, u0 = _wilson(s0, n0, z)
    delta = p1 - p0
    return delta - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), delta + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def mean_difference_interval(treated: tuple[int, float, float], control: tuple[int, float, float],
                             confidence: float) -> tuple[float, float, float] | None:
    """Welch's interval for the difference of two means from (n, sum, sum of squares): (difference, low, high);
    None when a group has fewer than two customers."""
    (n1, s1, q1), (n0, s0, q0) = treated, control
    if n1 < 2 or n0 < 2:
        return None
    m1, m0 = s1 / n1, s0 / n0
    v1, v0 = max(q1 - n1 * m1 * m1, 0.0) / (n1 - 1), max(q0 - n0 * m0 * m0, 0.0) / (n0 - 1)
    se2 = v1 / n1 + v0 / n0
    if se2 == 0:
        return m1 - m0, m1 - m0, m1 - m0
    dof = se2 ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v0 / n0) ** 2 / (n0 - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(se2)
    return m1 - m0, m1 - m0 - half, m1 - m0 + half


@dataclass(frozen=True)
class Posterior:
    """The learned uplift of a tier's treatment: the posterior median of 1 − churn(treated) / churn(control) and
    its central interval, from the outcomes of `plans`."""

    median: float
    low: float
    high: float
    plans: tuple[str, ...]


def learned_uplift(outcomes: Sequence[Mapping[str, Any]], prior_uplift: float, settings: RetentionSettings
                   ) -> Posterior | None:
    """The Beta-Binomial posterior of one tier's treatment from its measured outcomes (rows of
    retention_outcomes); None without any. A priori the controls' churn is Beta(k·m, k·(1 − m)) and the treated's
    Beta(k·m·(1 − u), k·(1 − m·(1 − u))): "the configured uplift u, worth k = uplift_prior_strength customers in
    each group", at the level m the measured groups show if u were true (the controls' churn pooled with the
    treated's divided by 1 − u). Not at the model's predicted churn, which would read any miscalibration of the
    model as an effect. Each plan adds its churned and retained customers of both groups."""
    usable = [o for o in outcomes if o["customers_treated"] and o["customers_controlled"]]
    if not usable:
        return None
    k = settings.uplift_prior_strength
    n1, n0 = (sum(o[f"customers_{side}"] for o in usable) for side in ("treated", "controlled"))
    churned1 = sum(round((1 - o["retention_treated"]) * o["customers_treated"]) for o in usable)
    churned0 = sum(round((1 - o["retention_control"]) * o["customers_controlled"]) for o in usable)
    m = min(max((churned0 + churned1 / max(1 - prior_uplift, 1e-3)) / (n0 + n1), 1e-3), 1 - 1e-3)
    m1 = m * (1 - prior_uplift)
    a0, b0 = k * m + churned0, k * (1 - m) + n0 - churned0
    a1, b1 = k * m1 + churned1, k * (1 - m1) + n1 - churned1
    rng = np.random.default_rng(settings.holdout_seed)
    uplift = 1 - rng.beta(a1, b1, POSTERIOR_DRAWS) / rng.beta(a0, b0, POSTERIOR_DRAWS)
    tail = (1 - settings.confidence) / 2
    low, median, high = np.quantile(uplift, [tail, 0.5, 1 - tail])
    return Posterior(float(median), float(low), float(high), tuple(str(o["snapshot_date"]) for o in usable))


def outcome_rows(sums: Sequence[Mapping[str, Any]], plan_date: dt.date, measured_on: dt.date,
                 planned: Mapping[str, float], earlier: Sequence[Mapping[str, Any]], settings: RetentionSettings,
                 horizon_days: int, run_id: str) -> list[dict[str, Any]]:
    """retention_outcomes' rows of one plan: per tier and treatment with a treated or control group, the realized
    retention and revenue of both groups, their differences with intervals, spend and ROI, what the plan expected,
    and the uplift learned from `earlier` outcomes and this one. `planned`: the uplift the plan used per tier."""
    confidence = settings.confidence
    by_key: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for row in sums:
        by_key.setdefault((row["value_tier"], row["treatment"]), {})[row["treatment_group"]] = row
    rows = []
    for (tier, treatment), groups in sorted(by_key.items(), key=lambda kv: (VALUE_TIERS.index(kv[0][0]), kv[0][1])):
        t, c = groups.get(TREATED), groups.get(CONTROL)
        n1, n0 = (t or {}).get("customers", 0), (c or {}).get("customers", 0)
        r1, r0 = (t or {}).get("retained", 0), (c or {}).get("retained", 0)
        row: dict[str, Any] = {
            "snapshot_date": plan_date, "value_tier": tier, "treatment": treatment, "horizon_days": horizon_days,
            "horizon_end": horizon_end(plan_date, horizon_days), "measured_on": measured_on,
            "customers_treated": n1, "customers_controlled": n0,
            "treated_with_records": t["with_treatment_rows"] if t else None,
            "controls_with_records": c["with_treatment_rows"] if c else None,
            "retention_treated": r1 / n1 if n1 else None, "retention_control": r0 / n0 if n0 else None,
            "predicted_churn_control": c["churn_probability"] / n0 if n0 else None,
            "revenue_per_treated": t["revenue"] / n1 if n1 else None,
            "revenue_per_control": c["revenue"] / n0 if n0 else None,
            "spend": sum(g["spend"] for g in groups.values()),
            "uplift_planned": planned.get(tier),
            "expected_incremental_retention": t["expected_lift"] / n1 if n1 else None,
            "expected_saved_value": t["expected_saved_value"] if t else 0.0,
            "plan_run_id": (t or c)["plan_run_id"], "run_id": run_id,
        }
        both = bool(n1 and n0)
        row["incremental_retention"] = r1 / n1 - r0 / n0 if both else None
        low, high = difference_interval((r1, n1), (r0, n0), confidence) if both else (None, None)
        row["incremental_retention_low"], row["incremental_retention_high"] = low, high
        churn_control = 1 - r0 / n0 if n0 else 0.0
        row["realized_uplift"] = row["incremental_retention"] / churn_control if both and churn_control > 0 else None
        revenue = mean_difference_interval((n1, t["revenue"], t["revenue_squared"]),
                                           (n0, c["revenue"], c["revenue_squared"]), confidence) if both else None
        row["incremental_revenue"], row["incremental_revenue_low"], row["incremental_revenue_high"] = (
            tuple(v * n1 for v in revenue) if revenue else (None, None, None))
        spend = row["spend"]
        row["realized_roi"] = ((row["incremental_revenue"] - spend) / max(spend, 1.0)
                               if row["incremental_revenue"] is not None else None)
        row["realized_saved_value"] = (row["incremental_retention"] * t["clv"] - spend if both else None)
        history = [*[o for o in earlier if o["value_tier"] == tier and o["treatment"] == treatment], row]
        posterior = learned_uplift(history, getattr(settings.treatments, tier).uplift, settings)
        row["learned_uplift"], row["learned_uplift_low"], row["learned_uplift_high"] = (
            (posterior.median, posterior.low, posterior.high) if posterior else (None, None, None))
        row["uplift_plans"] = len(posterior.plans) if posterior else 0
        rows.append(row)
    return rows


def plan_uplifts(outcomes: Sequence[Mapping[str, Any]], settings: RetentionSettings) -> dict[str, Uplift]:
    """The uplift of each tier for a plan: with `retention.learn_uplift`, the posterior median (clipped to
    [0, 1]) from every measured outcome of the tier's current treatment; else, or before any outcome, the
    configured uplift."""
    uplifts = {}
    for tier in VALUE_TIERS:
        treatment = getattr(settings.treatments, tier)
        history = [o for o in outcomes if o["value_tier"] == tier and o["treatment"] == treatment.name]
        posterior = learned_uplift(history, treatment.uplift, settings) if settings.learn_uplift else None
        uplifts[tier] = (Uplift(min(max(posterior.median, 0.0), 1.0), "learned", posterior.plans) if posterior
                         else Uplift(treatment.uplift, "configured"))
    return uplifts
