"""Tier economics: revenue, cost to serve, margin, value per spend, the change since the previous snapshot and the
warnings."""

from __future__ import annotations

import datetime as dt

import pytest

from segscale.config import RetentionSettings
from segscale.transforms.economics import economics_rows, tier_sums

D = dt.date(2024, 12, 31)
SETTINGS = RetentionSettings(max_cost_share=0.25, max_value_share_drop=0.02)
SUMS = {
    "high_value": {"customers": 10, "revenue_365d": 10_000.0, "interaction_cost_365d": 200.0, "clv": 6000.0,
                   "with_clv": 10},
    "potential": {"customers": 40, "revenue_365d": 4000.0, "interaction_cost_365d": 300.0, "clv": 3000.0,
                  "with_clv": 30},
    "regular": {"customers": 50, "revenue_365d": 400.0, "interaction_cost_365d": 150.0, "clv": 1000.0,
                "with_clv": 50},
}


def spend(day: dt.date, **by_tier: float) -> list[dict]:
    return [{"snapshot_date": day, "value_tier": tier, "spend": value} for tier, value in by_tier.items()]


def test_cost_to_serve_counts_the_year_of_plans_and_the_interactions():
    plans = [*spend(D, high_value=250.0, potential=60.0), *spend(D - dt.timedelta(days=92), high_value=250.0),
             *spend(D - dt.timedelta(days=365), high_value=1e6)]  # a year ago to the day: outside the year
    rows = {r["value_tier"]: r for r in economics_rows(SUMS, plans, [], D, SETTINGS, "run-1")}
    high = rows["high_value"]
    assert (high["treatment_spend_365d"], high["cost_to_serve"], high["margin"]) == (500.0, 700.0, 9300.0)
    assert high["cost_share"] == pytest.approx(0.07) and high["clv_per_spend"] == pytest.approx(6000 / 700)
    assert high["avg_clv"] == 600.0 and high["value_share"] == pytest.approx(0.6)
    assert rows["potential"]["avg_clv"] == 100.0  # over the 30 customers with a CLV, not all 40
    assert high["previous_snapshot"] is None and high["margin_change"] is None and high["warning"] is None
    # Regular costs 150 of 400 to serve: above the 25 % limit.
    assert rows["regular"]["warning"].startswith("regular costs 38% of its revenue to serve")


def test_an_empty_tier_and_a_base_without_clv_have_rows_with_nulls():
    rows = {r["value_tier"]: r for r in economics_rows(
        {"regular": {**SUMS["regular"], "clv": None, "with_clv": 0}}, [], [], D, SETTINGS, "run-1")}
    assert set(rows) == {"high_value", "potential", "regular"}
    assert rows["high_value"]["customers"] == 0 and rows["high_value"]["cost_share"] is None
    assert rows["regular"]["avg_clv"] is None and rows["regular"]["value_share"] is None


def test_changes_compare_with_the_previous_snapshot_and_a_falling_top_tier_warns():
    before = D - dt.timedelta(days=92)
    previous = economics_rows({**SUMS, "high_value": {**SUMS["high_value"], "clv": 9000.0}}, [], [], before,
                              SETTINGS, "run-0")
    rows = {r["value_tier"]: r for r in economics_rows(SUMS, [], previous, D, SETTINGS, "run-1")}
    high = rows["high_value"]
    assert high["previous_snapshot"] == before and high["customers_change"] == 0
    assert high["value_share_change"] == pytest.approx(0.6 - 9000 / 13000)
    assert "high_value's share of predicted value fell 9.2%" in high["warning"]
    steady = {r["value_tier"]: r for r in economics_rows(SUMS, [], economics_rows(SUMS, [], [], before, SETTINGS,
                                                                                   "r0"), D, SETTINGS, "r1")}
    assert steady["high_value"]["warning"] is None


def test_tier_sums_join_scores_and_features_per_tier(spark):
    scores = spark.createDataFrame([("a", "high_value", 500.0), ("b", "high_value", None), ("c", "regular", 20.0)],
                                   "customer_id string, value_tier string, clv double")
    features = spark.createDataFrame([("a", 1000.0, 12.5), ("b", 200.0, None), ("c", 0.0, 3.0)],
                                     "customer_id string, spend_365d double, interaction_cost_365d double")
    sums = tier_sums(scores, features)
    assert sums["high_value"]["customers"] == 2 and sums["high_value"]["revenue_365d"] == 1200.0
    assert (sums["high_value"]["interaction_cost_365d"], sums["high_value"]["clv"]) == (12.5, 500.0)
    assert sums["high_value"]["with_clv"] == 1 and sums["regular"]["revenue_365d"] == 0.0
