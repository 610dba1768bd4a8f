"""Tier economics: what each value tier brings in, costs to serve and is worth, snapshot by snapshot
(docs/retention.md#tier-economics).

One Spark aggregation of the snapshot's scores joined with its features gives, per tier, customers, revenue and
interaction costs over the last year and CLV; the retention spend comes from the plans' summaries (three rows per
plan). The ratios, the changes since the previous snapshot and the warnings are computed from those few numbers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segscale.config import RetentionSettings
from segscale.transforms.features import exact_units, money_sum
from segscale.transforms.segments import HIGH_VALUE, VALUE_TIERS

YEAR_DAYS = 365
CHANGES = ("customers", "revenue_365d", "cost_to_serve", "margin", "avg_clv", "value_share")


def tier_sums(scores_df: DataFrame, features_df: DataFrame) -> dict[str, dict[str, Any]]:
    """Per value tier of the snapshot: customers, revenue (purchases) and interaction costs over the last 365
    days, and the sum of CLV (null when nobody has one). Collected: one row per tier."""
    joined_df = scores_df.select("customer_id", "value_tier", "clv").join(
        features_df.select("customer_id", "spend_365d", "interaction_cost_365d"), "customer_id", how="left")
    rows = joined_df.groupBy("value_tier").agg(
        F.count(F.lit(1)).alias("customers"),
        F.coalesce(money_sum(exact_units(F.col("spend_365d"))), F.lit(0.0)).alias("revenue_365d"),
        F.coalesce(money_sum(exact_units(F.col("interaction_cost_365d"))), F.lit(0.0)).alias("interaction_cost_365d"),
        F.sum("clv").alias("clv"),
        F.count("clv").alias("with_clv"),
    ).collect()  # small: one row per tier
    return {row["value_tier"]: row.asDict() for row in rows}


def economics_rows(sums: Mapping[str, Mapping[str, Any]], spend_by_plan: Sequence[Mapping[str, Any]],
                   previous: Sequence[Mapping[str, Any]], snapshot_date: dt.date, settings: RetentionSettings,
                   run_id: str) -> list[dict[str, Any]]:
    """tier_economics' rows for the snapshot (all three tiers), each with the warning it raises (or None).
    `spend_by_plan`: the retention_summary rows (value_tier, snapshot_date, spend) of the plans of the last year up
    to this snapshot; `previous`: the previous snapshot's tier_economics rows."""
    year_start = snapshot_date - dt.timedelta(days=YEAR_DAYS)
    clv_total = sum(s["clv"] or 0.0 for s in sums.values())
    before = {row["value_tier"]: row for row in previous}
    rows = []
    for tier in VALUE_TIERS:
        s = sums.get(tier, {})
        customers, revenue = s.get("customers", 0), s.get("revenue_365d", 0.0)
        treatment = sum(p["spend"] for p in spend_by_plan
                        if p["value_tier"] == tier and year_start < p["snapshot_date"] <= snapshot_date)
        cost = s.get("interaction_cost_365d", 0.0) + treatment
        clv = s.get("clv")
        row: dict[str, Any] = {
            "snapshot_date": snapshot_date, "value_tier": tier, "customers": customers, "revenue_365d": revenue,
            "interaction_cost_365d": s.get("interaction_cost_365d", 0.0), "treatment_spend_365d": treatment,
            "cost_to_serve": cost, "margin": revenue - cost,
            "cost_share": cost / revenue if revenue > 0 else None,
            "avg_clv": clv / s["with_clv"] if clv is not None and s.get("with_clv") else None,
            "clv_total": clv,
            "clv_per_spend": clv / cost if clv is not None and cost > 0 else None,
            "value_share": (clv or 0.0) / clv_total if clv_total > 0 else None,
            "run_id": run_id,
        }
        earlier = before.get(tier)
        for name in CHANGES:
            was, now = (earlier or {}).get(name), row[name]
            row[f"{name}_change"] = now - was if was is not None and now is not None else None
        row["previous_snapshot"] = earlier["snapshot_date"] if earlier else None
        warnings = []
        if row["cost_share"] is not None and row["cost_share"] > settings.max_cost_share:
            warnings.append(f"{tier} costs {row['cost_share']:.0%} of its revenue to serve over the last year "
                            f"(retention.max_cost_share {settings.max_cost_share:.0%})")
        if tier == HIGH_VALUE and row["value_share_change"] is not None and (
                row["value_share_change"] < -settings.max_value_share_drop):
            warnings.append(f"{tier}'s share of predicted value fell {-row['value_share_change']:.1%} since "
                            f"{earlier['snapshot_date']} to {row['value_share']:.1%} (retention.max_value_share_drop "
                            f"{settings.max_value_share_drop:.1%})")
        row["warning"] = "; ".join(warnings) or None
        rows.append(row)
    return rows
