"""The retention plan: which scored customers get their tier's treatment within the budget (docs/retention.md).

value at risk = churn_probability × clv; expected saved value = uplift × value at risk − cost. Customers whose
expected saved value is positive are candidates, ranked by expected saved value per unit cost (free treatments
first, ties broken by saved value, then customer_id). The plan takes candidates in rank order while the running
cost stays within the budget. The running cost is a distributed prefix sum: the candidates are range-partitioned
in rank order, each partition's count and cost total (a few rows) give its offsets, and a window inside each
partition does the rest; no step sees all customers in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from segscale.config import RetentionSettings
from segscale.transforms.features import MONEY_UNITS, exact_units, money_sum
from segscale.transforms.segments import VALUE_TIERS

# What the plan needs from customer_scores.
PLAN_INPUTS = ("customer_id", "snapshot_date", "value_tier", "lifecycle_stage", "churn_probability", "clv")


def _per_tier(settings: RetentionSettings, attribute: str) -> Column:
    tier = F.col("value_tier")
    column = None
    for name in VALUE_TIERS:
        value = F.lit(getattr(getattr(settings.treatments, name), attribute))
        column = F.when(tier == name, value) if column is None else column.when(tier == name, value)
    return column


def candidates(scores_df: DataFrame, settings: RetentionSettings) -> DataFrame:
    """Scored customers (churn probability and CLV known) with their treatment, value at risk and expected saved
    value; only those the treatment is expected to save value on, i.e. expected saved value > 0."""
    scored_df = scores_df.where(F.col("churn_probability").isNotNull() & F.col("clv").isNotNull())
    valued_df = scored_df.select(
        *PLAN_INPUTS,
        _per_tier(settings, "name").alias("treatment"),
        _per_tier(settings, "cost").cast("double").alias("cost"),
        (F.col("churn_probability") * F.col("clv")).alias("value_at_risk"),
        _per_tier(settings, "uplift").alias("_uplift"),
    )
    saved = F.col("_uplift") * F.col("value_at_risk") - F.col("cost")
    return valued_df.select(*[c for c in valued_df.columns if c != "_uplift"],
                            saved.alias("expected_saved_value")).where(F.col("expected_saved_value") > 0)


def _rank_order() -> list[Column]:
    free_first = F.when(F.col("cost") > 0, F.col("expected_saved_value") / F.col("cost")).otherwise(
        F.lit(float("inf")))
    return [free_first.desc(), F.col("expected_saved_value").desc(), F.col("customer_id").asc()]


@contextmanager
def ranked(candidates_df: DataFrame, budget: float) -> Iterator[DataFrame]:
    """The candidates with priority_rank (1 = first), cumulative_cost and selected (cumulative cost within the
    budget). Cached while the block runs, so every reader sees the same partitioning."""
    order = _rank_order()
    ranged_df = (candidates_df.repartitionByRange(*order).withColumn("_part", F.spark_partition_id())
                 .withColumn("_cost_units", exact_units(F.col("cost")))
                 .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        per_part_df = ranged_df.groupBy("_part").agg(F.count(F.lit(1)).alias("n"),
                                                     F.sum("_cost_units").alias("cost_units"))
        totals = per_part_df.collect()  # small: one row per partition
        offsets, rows_before, units_before = [], 0, 0
        for total in sorted(totals, key=lambda t: t["_part"]):
            offsets.append((total["_part"], rows_before, units_before))
            rows_before += total["n"]
            units_before += total["cost_units"]
        offsets_df = ranged_df.sparkSession.createDataFrame(
            offsets, "_part int, _rows_before long, _units_before long")
        within = Window.partitionBy("_part").orderBy(*order)
        running = within.rowsBetween(Window.unboundedPreceding, Window.currentRow)
        # The running cost is summed in exact units, so it does not depend on where the partitions split.
        cumulative_units = F.col("_units_before") + F.sum("_cost_units").over(running)
        ranked_df = (ranged_df.join(F.broadcast(offsets_df), "_part")
                     .withColumn("priority_rank", F.col("_rows_before") + F.row_number().over(within))
                     .withColumn("_cumulative_units", cumulative_units))
        yield ranked_df.select(
            *candidates_df.columns, "priority_rank",
            (F.col("_cumulative_units") / F.lit(float(MONEY_UNITS))).alias("cumulative_cost"),
            (F.col("_cumulative_units") <= F.lit(round(budget * MONEY_UNITS))).alias("selected"))
    finally:
        ranged_df.unpersist()


def retention_plan(ranked_df: DataFrame, run_id: str) -> DataFrame:
    """The published retention_plan rows: every candidate, ranked, with the ones the budget covers selected."""
    return ranked_df.select(
        "customer_id", "snapshot_date", "value_tier", "lifecycle_stage", "treatment", "cost", "churn_probability",
        "clv", "value_at_risk", "expected_saved_value", "priority_rank", "cumulative_cost", "selected",
        F.lit(run_id).alias("run_id"))


PLAN_METRICS = ("candidates", "customers_targeted", "spend", "value_at_risk_targeted", "expected_saved_value")


def plan_counters() -> list[Column]:
    """Aggregates over the plan's rows, gathered while it is written (DataFrame.observe): per tier, the
    candidates and what the selected ones cost and are expected to save (money summed exactly, to 1/MONEY_UNITS,
    so the totals do not depend on how the rows are partitioned)."""
    tier, selected = F.col("value_tier"), F.col("selected")
    counters = []
    for name in VALUE_TIERS:
        in_tier = tier == F.lit(name)
        chosen = in_tier & selected
        counters += [
            F.count_if(in_tier).alias(f"{name}/candidates"),
            F.count_if(chosen).alias(f"{name}/customers_targeted"),
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
                 note: str | None = None) -> list[dict[str, Any]]:
    """retention_summary's figures per tier, from the observed plan counters: share of the budget spent and ROI
    (expected saved value, already net of cost, per currency unit spent, the spend counted as at least one unit:
    defined for free treatments, 0 for a tier nobody in is targeted), and `note`: why the plan is empty, if it is
    for a reason other than the budget."""
    budget = settings.budget
    rows = []
    for tier in VALUE_TIERS:
        figures = {metric: observed[f"{tier}/{metric}"] for metric in PLAN_METRICS}
        rows.append({
            "value_tier": tier, "treatment": getattr(settings.treatments, tier).name,
            "scored_customers": scored.get(tier, 0), **figures, "budget": budget,
            "share_of_budget": figures["spend"] / budget if budget > 0 else None,
            "roi": figures["expected_saved_value"] / max(figures["spend"], 1.0),
            "note": note,
        })
    return rows
