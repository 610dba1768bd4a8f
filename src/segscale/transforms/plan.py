"""The retention plan: which scored customers get their tier's treatment within the budget, and which are kept
untreated as a randomized control group (docs/retention.md).

value at risk = churn_probability × clv (the point CLV, or a quantile of its band: retention.clv_quantile);
expected saved value = uplift × value at risk − cost. Customers whose
expected saved value is positive are candidates, ranked by expected saved value per unit cost (free treatments
first, ties broken by saved value, then customer_id). Each candidate draws a control or treated lot from a hash of
(holdout seed, snapshot, customer), so a customer's lot never depends on anyone else. The plan takes candidates in
rank order while the treated ones' running cost stays within the budget and their tier's own budget and capacity;
controls cost nothing. The running sums are distributed prefix sums: the candidates are range-partitioned in rank
order, each partition's totals (a few rows) give its offsets, and a window inside each partition does the rest; no
step sees all customers in one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from scipy.stats import norm

from segscale.config import RetentionSettings
from segscale.models.bgnbd import BAND_Z
from segscale.transforms.features import MONEY_UNITS, exact_units, money_sum
from segscale.transforms.segments import VALUE_TIERS

# What the plan needs from customer_scores.
PLAN_INPUTS = ("customer_id", "snapshot_date", "value_tier", "lifecycle_stage", "churn_probability", "clv")
TREATED, CONTROL, NOT_SELECTED = "treated", "control", "not selected"
# A customer's holdout draw is one of DRAWS equally likely values.
DRAWS = 1_000_000


@dataclass(frozen=True)
class Uplift:
    """The uplift a plan uses for a tier: the configured one, or the one learned from the outcomes of the plans of
    `plans` (snapshot dates), or none when the per-customer uplift model fitted on those plans values the tier's
    customers (`transforms/uplift.py`)."""

    value: float | None
    source: str  # "configured", "learned" or "model"
    plans: tuple[str, ...] = ()


def configured_uplifts(settings: RetentionSettings) -> dict[str, Uplift]:
    """Each tier's configured uplift (`retention.treatments.<tier>.uplift`)."""
    return {tier: Uplift(getattr(settings.treatments, tier).uplift, "configured") for tier in VALUE_TIERS}


def _per_tier(settings: RetentionSettings, attribute: str) -> Column:
    return _by_tier({name: getattr(getattr(settings.treatments, name), attribute) for name in VALUE_TIERS})


def _by_tier(values: dict[str, Any]) -> Column:
    tier = F.col("value_tier")
    column = None
    for name in VALUE_TIERS:
        value = F.lit(values[name])
        column = F.when(tier == name, value) if column is None else column.when(tier == name, value)
    return column


def planned_clv(quantile: float) -> Column:
    """The CLV a plan values a customer at: `clv` at quantile 0.5, else the quantile of its band (log-normal:
    clv × (clv_p90 / clv) ^ (z_quantile / z_0.9), so 0.1 gives clv_p10); `clv` where the band is unknown."""
    clv = F.col("clv")
    if quantile == 0.5:
        return clv
    exponent = float(norm.ppf(quantile)) / BAND_Z
    return F.when((clv > 0) & (F.col("clv_p90") > 0), clv * F.pow(F.col("clv_p90") / clv, F.lit(exponent))
                  ).otherwise(clv)


def candidates(scores_df: DataFrame, settings: RetentionSettings, uplifts: dict[str, float] | None = None,
               incremental_retention: Column | None = None) -> DataFrame:
    """Scored customers (churn probability and CLV known) with their treatment, value at risk and expected saved
    value; only those the treatment is expected to save value on, i.e. expected saved value > 0. `uplifts`: per
    tier, the uplift to plan with (default: the configured ones); `incremental_retention`: instead, a customer's
    own predicted gain in retention from the treatment (an uplift model's, of the scores' columns), which replaces
    uplift × churn_probability."""
    scored_df = scores_df.where(F.col("churn_probability").isNotNull() & F.col("clv").isNotNull()).select(
        *[planned_clv(settings.clv_quantile).alias(c) if c == "clv" else c for c in PLAN_INPUTS])
    valued_df = scored_df.select(
        *PLAN_INPUTS,
        _per_tier(settings, "name").alias("treatment"),
        _per_tier(settings, "cost").cast("double").alias("cost"),
        (F.col("churn_probability") * F.col("clv")).alias("value_at_risk"),
        (_per_tier(settings, "uplift") if uplifts is None else _by_tier(uplifts)).alias("_uplift"),
    )
    saved = (F.col("_uplift") * F.col("value_at_risk") if incremental_retention is None
             else incremental_retention * F.col("clv")) - F.col("cost")
    return valued_df.select(*[c for c in valued_df.columns if c != "_uplift"],
                            saved.alias("expected_saved_value")).where(F.col("expected_saved_value") > 0)


def _rank_order() -> list[Column]:
    free_first = F.when(F.col("cost") > 0, F.col("expected_saved_value") / F.col("cost")).otherwise(
        F.lit(float("inf")))
    return [free_first.desc(), F.col("expected_saved_value").desc(), F.col("customer_id").asc()]


def lot(*parts: Column) -> Column:
    """A draw in [0, DRAWS) per row, from a hash of `parts`: the same parts always draw the same number."""
    return F.pmod(F.xxhash64(*parts), F.lit(DRAWS))


def held_out(settings: RetentionSettings) -> Column:
    """True for the customers whose lot puts them in the control group: a hash of (holdout_seed, snapshot_date,
    customer_id), below holdout_share of its range. The same probability in every tier, stage and risk decile, and
    the same lot on every rerun, whatever the budget or the other customers."""
    draw = lot(F.lit(settings.holdout_seed), F.col("snapshot_date"), F.col("customer_id"))
    return draw < F.lit(round(settings.holdout_share * DRAWS))


def range_parts(df: DataFrame, order: list[Column]) -> DataFrame:
    """`df` range-partitioned in `order`, each row with its partition (`_part`), clustered by it (what Prefix
    reads: its windows then need no other shuffle)."""
    return df.repartitionByRange(*order).withColumn("_part", F.spark_partition_id()).repartition("_part")


class Prefix:
    """Running sums over the candidates in rank order, across range partitions: each partition's totals, collected
    (one row per partition), give the sums of the partitions before it; a window inside the partition adds the
    rest."""

    def __init__(self, ranged_df: DataFrame, order: list[Column]) -> None:
        self.df = ranged_df
        self.within = Window.partitionBy("_part").orderBy(*order)
        self.running = self.within.rowsBetween(Window.unboundedPreceding, Window.currentRow)

    def add(self, **values: Column) -> dict[str, Column]:
        """Add `values` (a long per row, possibly from earlier running sums) and the offsets of their sums per
        partition; their running sums up to and including each row."""
        self.df = self.df.select("*", *[value.alias(f"_v_{k}") for k, value in values.items()])
        totals = self.df.groupBy("_part").agg(*[F.sum(f"_v_{k}").alias(k) for k in values])
        offsets, before = [], dict.fromkeys(values, 0)
        for total in sorted(totals.collect(), key=lambda t: t["_part"]):  # small: one row per partition
            offsets.append((total["_part"], *before.values()))
            before = {k: before[k] + (total[k] or 0) for k in values}
        offsets_df = self.df.sparkSession.createDataFrame(
            offsets, ", ".join(["_part int", *[f"_before_{k} long" for k in values]]))
        self.df = self.df.join(F.broadcast(offsets_df), "_part")
        return {k: F.col(f"_before_{k}") + F.sum(f"_v_{k}").over(self.running) for k in values}


def _tier_fits(prefix: Prefix, settings: RetentionSettings, treated: Column, units: Column) -> Column:
    """Whether a candidate's tier still has budget and capacity for them: the tier's treated customers up to and
    including this one stay within its `capacity`, their cost within its `budget` (a prefix of the tier's ranking)."""
    limited = {tier: getattr(settings.treatments, tier) for tier in VALUE_TIERS}
    limited = {tier: t for tier, t in limited.items() if t.budget is not None or t.capacity is not None}
    if not limited:
        return F.lit(True)
    sums = {}
    for tier in limited:
        in_tier = treated & (F.col("value_tier") == F.lit(tier))
        sums[f"{tier}_n"] = in_tier.cast("long")
        sums[f"{tier}_units"] = F.when(in_tier, units).otherwise(F.lit(0))
    running = prefix.add(**sums)
    fits = F.lit(True)
    for tier, treatment in limited.items():
        within = F.lit(True)
        if treatment.capacity is not None:
            within = within & (running[f"{tier}_n"] <= F.lit(treatment.capacity))
        if treatment.budget is not None:
            within = within & (running[f"{tier}_units"] <= F.lit(round(treatment.budget * MONEY_UNITS)))
        fits = F.when(F.col("value_tier") == F.lit(tier), within).otherwise(fits)
    return fits


@contextmanager
def ranked(candidates_df: DataFrame, settings: RetentionSettings) -> Iterator[DataFrame]:
    """The candidates with priority_rank (1 = first), treatment_group (treated, control or not selected),
    cumulative_cost (the treated spend up to and including the row) and selected (treated). Cached while the block
    runs, so every reader sees the same partitioning."""
    order = _rank_order()
    units = F.col("_cost_units")
    # Range partitions in rank order, then clustered by partition id: the windows below need no other shuffle.
    ranged_df = (range_parts(candidates_df, order)
                 .withColumn("_cost_units", exact_units(F.col("cost")))
                 .withColumn("_treat", ~held_out(settings))
                 .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        prefix = Prefix(ranged_df, order)
        treated = F.col("_treat")
        fits = _tier_fits(prefix, settings, treated, units)
        running = prefix.add(rows=F.lit(1).cast("long"),
                             spend=F.when(treated & fits, units).otherwise(F.lit(0)))
        in_plan = fits & (running["spend"] <= F.lit(round(settings.budget * MONEY_UNITS)))
        group = F.when(in_plan & treated, F.lit(TREATED)).when(in_plan, F.lit(CONTROL)).otherwise(
            F.lit(NOT_SELECTED))
        ranked_df = prefix.df.select(
            *candidates_df.columns,
            (F.col("_before_rows") + F.row_number().over(prefix.within)).alias("priority_rank"),
            group.alias("treatment_group"),
            # The running cost is summed in exact units, so it does not depend on where the partitions split.
            (running["spend"] / F.lit(float(MONEY_UNITS))).alias("cumulative_cost"),
            (~treated).alias("held_out"))
        yield ranked_df.withColumn("selected", F.col("treatment_group") == F.lit(TREATED))
    finally:
        ranged_df.unpersist()


def retention_plan(ranked_df: DataFrame, run_id: str) -> DataFrame:
    """The published retention_plan rows: every candidate, ranked, with the ones the plan treats selected and its
    control group."""
    return ranked_df.select(
        "customer_id", "snapshot_date", "value_tier", "lifecycle_stage", "treatment", "cost", "churn_probability",
        "clv", "value_at_risk", "expected_saved_value", "priority_rank", "cumulative_cost", "selected",
        F.lit(run_id).alias("run_id"), "treatment_group", "held_out")


PLAN_METRICS = ("candidates", "customers_targeted", "customers_controlled", "spend", "value_at_risk_targeted",
                "expected_saved_value")


def plan_counters() -> list[Column]:
    """Aggregates over the plan's rows, gathered while it is written (DataFrame.observe): per tier, the
    candidates, the control group, and what the treated ones cost and are expected to save (money summed exactly,
    to 1/MONEY_UNITS, so the totals do not depend on how the rows are partitioned)."""
    tier, selected = F.col("value_tier"), F.col("selected")
    counters = []
    for name in VALUE_TIERS:
        in_tier = tier == F.lit(name)
        chosen = in_tier & selected
        counters += [
            F.count_if(in_tier).alias(f"{name}/candidates"),
            F.count_if(chosen).alias(f"{name}/customers_targeted"),
            F.count_if(in_tier & (F.col("treatment_group") == F.lit(CONTROL))).alias(f"{name}/customers_controlled"),
            *[F.coalesce(money_sum(F.when(chosen, exact_units(F.col(column)))), F.lit(0.0)).alias(f"{name}/{metric}")
              for metric, column in (("spend", "cost"), ("value_at_risk_targeted", "value_at_risk"),
                                     ("expected_saved_value", "expected_saved_value"))],
        ]
    return counters


def scored_by_tier(scores_df: DataFrame) -> dict[str, int]:
    """Customers per value tier with both a churn probability and a CLV."""
    scored_df = scores_df.where(F.col("churn_probability").isNotNull() & F.col("clv").isNotNull())
    return {r["value_tier"]: r["n"] for r in scored_df.groupBy("value_tier").agg(
        F.count(F.lit(1)).alias("n")).collect()}  # small: one row per tier


def summary_rows(observed: dict[str, Any], scored: dict[str, int], settings: RetentionSettings,
                 uplifts: Mapping[str, Uplift] | None = None, note: str | None = None) -> list[dict[str, Any]]:
    """retention_summary's figures per tier, from the observed plan counters: share of the budget spent and ROI
    (expected saved value, already net of cost, per currency unit spent, the spend counted as at least one unit:
    defined for free treatments, 0 for a tier nobody in is targeted), and `note`: why the plan is empty, if it is
    for a reason other than the budget."""
    budget = settings.budget
    uplifts = uplifts or configured_uplifts(settings)
    rows = []
    for tier in VALUE_TIERS:
        figures = {metric: observed[f"{tier}/{metric}"] for metric in PLAN_METRICS}
        treatment = getattr(settings.treatments, tier)
        rows.append({
            "value_tier": tier, "treatment": treatment.name,
            "scored_customers": scored.get(tier, 0), **figures, "budget": budget,
            "share_of_budget": figures["spend"] / budget if budget > 0 else None,
            "roi": figures["expected_saved_value"] / max(figures["spend"], 1.0),
            "note": note, "tier_budget": treatment.budget, "capacity": treatment.capacity,
            "holdout_share": settings.holdout_share,
            "uplift": uplifts[tier].value, "uplift_source": uplifts[tier].source,
            "uplift_plans": list(uplifts[tier].plans), "clv_quantile": settings.clv_quantile,
        })
    return rows
