"""The retention plan: candidates, the distributed ranking and budget cut-off, and its edge cases."""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import Observation

from segscale.config import RetentionSettings
from segscale.transforms.plan import candidates, plan_counters, ranked, retention_plan, scored_by_tier, summary_rows

D = dt.date(2024, 12, 31)
SCHEMA = ("customer_id string, snapshot_date date, value_tier string, lifecycle_stage string, "
          "churn_probability double, clv double")
SETTINGS = RetentionSettings.model_validate({"budget": 100.0, "treatments": {
    "high_value": {"name": "one_to_one", "cost": 10.0, "uplift": 0.5},
    "potential": {"name": "email_sms", "cost": 1.0, "uplift": 0.2},
    "regular": {"name": "automated", "cost": 0.0, "uplift": 0.1}}})


@contextlib.contextmanager
def several_partitions(spark):
    """Keep the range partitions apart (adaptive execution would merge them for so few rows)."""
    key = "spark.sql.adaptive.coalescePartitions.enabled"
    before = spark.conf.get(key)
    spark.conf.set(key, "false")
    try:
        yield
    finally:
        spark.conf.set(key, before)


def plan_of(spark, rows, settings=SETTINGS) -> pd.DataFrame:
    scores = spark.createDataFrame(rows, SCHEMA)
    with several_partitions(spark), ranked(candidates(scores, settings), settings.budget) as ranked_df:
        return ranked_df.toPandas().sort_values("priority_rank").reset_index(drop=True)


def test_value_at_risk_and_saved_value_follow_the_tier_treatment(spark):
    plan = plan_of(spark, [("h", D, "high_value", "loyal", 0.5, 200.0), ("p", D, "potential", "repeat", 0.4, 50.0),
                           ("r", D, "regular", "new", 0.9, 10.0)]).set_index("customer_id")
    assert plan.loc["h", ["treatment", "cost", "value_at_risk", "expected_saved_value"]].tolist() == [
        "one_to_one", 10.0, 100.0, 0.5 * 100.0 - 10.0]
    assert plan.loc["p", "expected_saved_value"] == pytest.approx(0.2 * 20.0 - 1.0)
    # Free first, then by saved value per unit cost: r (free), p (3.0 per unit), h (4.0 per unit → before p).
    assert plan.index.tolist() == ["r", "h", "p"]
    assert plan["priority_rank"].tolist() == [1, 2, 3]
    assert plan["cumulative_cost"].tolist() == [0.0, 10.0, 11.0]


def test_customers_without_scores_or_without_a_saving_are_not_candidates(spark):
    plan = plan_of(spark, [("no_churn", D, "high_value", "loyal", None, 500.0),
                           ("no_clv", D, "potential", "repeat", 0.5, None),
                           ("prospect", D, "regular", "prospect", None, None),
                           ("costs_more", D, "high_value", "loyal", 0.1, 100.0),  # 0.5 * 10 - 10 < 0
                           ("worth_it", D, "high_value", "loyal", 0.9, 100.0)])
    assert plan["customer_id"].tolist() == ["worth_it"]


def test_ties_are_broken_by_saved_value_then_customer_id(spark):
    rows = [(c, D, "potential", "repeat", 0.5, 100.0) for c in ("c", "a", "b")]
    rows.append(("big", D, "high_value", "loyal", 0.5, 88.0))  # 22 - 10 = 12 saved: 1.2 per unit, after the rest
    rows.append(("same_ratio_more_saved", D, "high_value", "loyal", 0.5, 720.0))  # 180 - 10 = 170: 17 per unit
    rows.append(("same_ratio_less_saved", D, "potential", "repeat", 0.9, 100.0))  # 18 - 1 = 17: 17 per unit
    plan = plan_of(spark, rows)
    assert plan["customer_id"].tolist() == ["same_ratio_more_saved", "same_ratio_less_saved", "a", "b", "c", "big"]


def test_budget_zero_plans_only_free_treatments(spark):
    rows = [("h", D, "high_value", "loyal", 0.5, 200.0), ("r", D, "regular", "new", 0.9, 10.0)]
    plan = plan_of(spark, rows, SETTINGS.model_copy(update={"budget": 0.0}))
    assert plan.set_index("customer_id")["selected"].to_dict() == {"r": True, "h": False}


def summary_of(spark, rows, settings=SETTINGS) -> dict[str, dict]:
    """retention_summary's figures per tier, counted while the plan's rows are written, as the plan stage does."""
    scores = spark.createDataFrame(rows, SCHEMA)
    counted = Observation("plan_by_tier")
    with several_partitions(spark), ranked(candidates(scores, settings), settings.budget) as ranked_df:
        retention_plan(ranked_df, "run-1").observe(counted, *plan_counters()).collect()  # a few literal rows
    return {row["value_tier"]: row for row in summary_rows(counted.get, scored_by_tier(scores), settings)}


def test_roi_of_free_treatments_is_their_saved_value_and_of_an_untargeted_tier_zero(spark):
    rows = [("r1", D, "regular", "new", 0.9, 10.0),  # free: saves 0.1 × 9 = 0.9
            ("r2", D, "regular", "repeat", 0.5, 20.0),  # free: saves 0.1 × 10 = 1.0
            ("h", D, "high_value", "loyal", 0.5, 200.0)]  # saves 40, costs 10: over a budget of 0
    summary = summary_of(spark, rows, SETTINGS.model_copy(update={"budget": 0.0}))
    figures = {tier: (row["customers_targeted"], row["spend"], row["expected_saved_value"], row["roi"])
               for tier, row in summary.items()}
    assert figures["regular"] == (2, 0.0, pytest.approx(1.9), pytest.approx(1.9))
    assert figures["high_value"] == (0, 0.0, 0.0, 0.0)  # a candidate, not targeted
    assert figures["potential"] == (0, 0.0, 0.0, 0.0)  # no candidate at all
    json.dumps(summary, default=str, allow_nan=False)  # finite, JSON-safe figures


def test_roi_counts_a_spend_below_one_unit_as_one_and_divides_by_a_larger_spend(spark):
    settings = SETTINGS.model_copy(update={"treatments": SETTINGS.treatments.model_copy(update={
        "potential": SETTINGS.treatments.potential.model_copy(update={"cost": 0.25})})})
    rows = [("p", D, "potential", "repeat", 0.4, 50.0),  # 0.2 × 20 - 0.25 = 3.75 for 0.25
            ("h", D, "high_value", "loyal", 0.5, 200.0)]  # 0.5 × 100 - 10 = 40 for 10
    summary = summary_of(spark, rows, settings)
    assert (summary["potential"]["spend"], summary["potential"]["roi"]) == (0.25, pytest.approx(3.75))
    assert (summary["high_value"]["spend"], summary["high_value"]["roi"]) == (10.0, pytest.approx(4.0))


def test_a_budget_above_every_cost_selects_every_candidate(spark):
    rows = [(f"c{i}", D, "high_value", "loyal", 0.5, 200.0 + i) for i in range(30)]
    plan = plan_of(spark, rows, SETTINGS.model_copy(update={"budget": 1e9}))
    assert len(plan) == 30 and plan["selected"].all()


def test_distributed_ranking_and_cut_off_equal_a_sort_on_one_machine(spark):
    """5,000 customers over several range partitions: ranks, running cost and the budget cut-off are exactly
    those of sorting everything in one place."""
    rng = np.random.default_rng(3)
    n = 5000
    tiers = rng.choice(["high_value", "potential", "regular"], n)
    churn = np.round(rng.uniform(0, 1, n), 2)  # rounded, so ties occur
    clv = np.round(rng.gamma(2.0, 60.0, n), 0)
    rows = [(f"c{i:05d}", D, tiers[i], "repeat", float(churn[i]), float(clv[i])) for i in range(n)]
    settings = SETTINGS.model_copy(update={"budget": 2500.0})
    plan = plan_of(spark, rows, settings)

    reference = pd.DataFrame(rows, columns=["customer_id", "snapshot_date", "value_tier", "lifecycle_stage",
                                            "churn_probability", "clv"])
    treatment = {t: getattr(settings.treatments, t) for t in ("high_value", "potential", "regular")}
    reference["cost"] = reference["value_tier"].map(lambda t: treatment[t].cost)
    uplift = reference["value_tier"].map(lambda t: treatment[t].uplift)
    value_at_risk = reference["churn_probability"] * reference["clv"]
    reference["expected_saved_value"] = uplift * value_at_risk - reference["cost"]
    reference = reference[reference["expected_saved_value"] > 0].copy()
    reference["ratio"] = np.where(reference["cost"] > 0, reference["expected_saved_value"] / reference["cost"],
                                  np.inf)
    reference = reference.sort_values(["ratio", "expected_saved_value", "customer_id"],
                                      ascending=[False, False, True]).reset_index(drop=True)
    reference["cumulative_cost"] = reference["cost"].cumsum()

    assert plan["customer_id"].tolist() == reference["customer_id"].tolist()
    assert plan["priority_rank"].tolist() == list(range(1, len(reference) + 1))
    np.testing.assert_allclose(plan["cumulative_cost"], reference["cumulative_cost"], rtol=1e-12)
    selected = plan["selected"].to_numpy()
    assert selected.sum() == (reference["cumulative_cost"] <= 2500.0).sum() > 0
    assert not selected.all() and selected[: selected.sum()].all()  # a prefix of the ranking
