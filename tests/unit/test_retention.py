"""The retention plan: candidates, the distributed ranking and budget cut-off, the control group, tier budgets and
capacities, and its edge cases."""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import Observation

from segscale.config import RetentionSettings
from segscale.transforms.plan import (
    candidates,
    held_out,
    plan_counters,
    ranked,
    retention_plan,
    scored_by_tier,
    summary_rows,
)

D = dt.date(2024, 12, 31)
SCHEMA = ("customer_id string, snapshot_date date, value_tier string, lifecycle_stage string, "
          "churn_probability double, clv double")
SETTINGS = RetentionSettings.model_validate({"budget": 100.0, "holdout_share": 0.0, "treatments": {
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


def plan_of(spark, rows, settings=SETTINGS, scores=None) -> pd.DataFrame:
    scores = spark.createDataFrame(rows, SCHEMA) if scores is None else scores
    with several_partitions(spark), ranked(candidates(scores, settings), settings) as ranked_df:
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


def test_a_conservative_plan_values_customers_at_a_quantile_of_their_clv_band(spark):
    """With retention.clv_quantile 0.1 a candidate is worth its clv_p10: a customer whose CLV is uncertain falls
    behind one with a smaller but surer CLV; without a band the prediction stands."""
    rows = [("sure", D, "high_value", "loyal", 0.5, 180.0, 200.0), ("unsure", D, "high_value", "loyal", 0.5,
                                                                   200.0, 400.0),
            ("no_band", D, "high_value", "loyal", 0.5, 150.0, None)]
    scores = spark.createDataFrame(rows, SCHEMA + ", clv_p90 double")
    point = plan_of(spark, rows, scores=scores).set_index("customer_id")
    assert point.index.tolist() == ["unsure", "sure", "no_band"]
    assert point["clv"].tolist() == [200.0, 180.0, 150.0]
    conservative = plan_of(spark, rows, SETTINGS.model_copy(update={"clv_quantile": 0.1}),
                           scores=scores).set_index("customer_id")
    # The log-normal band's P10 mirrors its P90 around the prediction: clv² / clv_p90.
    assert conservative["clv"].to_dict() == pytest.approx({"sure": 180.0 ** 2 / 200.0, "unsure": 100.0,
                                                           "no_band": 150.0})
    assert conservative.index.tolist() == ["sure", "no_band", "unsure"]
    assert conservative.loc["unsure", "value_at_risk"] == pytest.approx(0.5 * 100.0)


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
    with several_partitions(spark), ranked(candidates(scores, settings), settings) as ranked_df:
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


def reference_plan(rows: list[tuple], settings: RetentionSettings, control: dict[str, bool]) -> pd.DataFrame:
    """The plan computed on one machine: sort every candidate, then walk the ranking with running sums."""
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
    treat = ~reference["customer_id"].map(control)
    fits = pd.Series(True, index=reference.index, dtype=bool)
    for tier, t in treatment.items():
        in_tier = reference["value_tier"] == tier
        count = (treat & in_tier).cumsum()
        spent = (reference["cost"] * (treat & in_tier)).cumsum()
        within = (count <= (t.capacity if t.capacity is not None else np.inf)) & (
            spent <= (t.budget if t.budget is not None else np.inf) + 1e-9)
        fits = fits.where(~in_tier, within)
    reference["cumulative_cost"] = (reference["cost"] * (treat & fits)).cumsum()
    in_plan = fits & (reference["cumulative_cost"] <= settings.budget + 1e-9)
    reference["treatment_group"] = np.where(in_plan & treat, "treated", np.where(in_plan, "control", "not selected"))
    return reference


@pytest.mark.parametrize("limits", [
    {"holdout_share": 0.0},
    {"holdout_share": 0.2, "treatments": {**SETTINGS.treatments.model_dump(),
                                          "high_value": {"name": "one_to_one", "cost": 10.0, "uplift": 0.5,
                                                         "capacity": 40},
                                          "potential": {"name": "email_sms", "cost": 1.0, "uplift": 0.2,
                                                        "budget": 300.0}}},
], ids=["budget only", "holdout, capacity and tier budget"])
def test_distributed_ranking_and_cut_off_equal_a_sort_on_one_machine(spark, limits):
    """5,000 customers over several range partitions: ranks, running cost, the budget cut-off and the tiers'
    budget and capacity are exactly those of sorting everything in one place."""
    rng = np.random.default_rng(3)
    n = 5000
    tiers = rng.choice(["high_value", "potential", "regular"], n)
    churn = np.round(rng.uniform(0, 1, n), 2)  # rounded, so ties occur
    clv = np.round(rng.gamma(2.0, 60.0, n), 0)
    rows = [(f"c{i:05d}", D, tiers[i], "repeat", float(churn[i]), float(clv[i])) for i in range(n)]
    settings = RetentionSettings.model_validate({**SETTINGS.model_dump(), "budget": 2500.0, **limits})
    plan = plan_of(spark, rows, settings)
    lots = spark.createDataFrame(rows, SCHEMA).select("customer_id", held_out(settings).alias("control")).toPandas()
    reference = reference_plan(rows, settings, dict(zip(lots["customer_id"], lots["control"], strict=True)))

    assert plan["customer_id"].tolist() == reference["customer_id"].tolist()
    assert plan["priority_rank"].tolist() == list(range(1, len(reference) + 1))
    np.testing.assert_allclose(plan["cumulative_cost"], reference["cumulative_cost"], rtol=1e-12)
    assert plan["treatment_group"].tolist() == reference["treatment_group"].tolist()
    assert (plan["selected"] == (plan["treatment_group"] == "treated")).all()
    treated = plan[plan["selected"]]
    assert 0 < treated["cost"].sum() <= 2500.0 and not plan["selected"].all()
    for tier in ("high_value", "potential", "regular"):
        limit = getattr(settings.treatments, tier)
        in_tier = treated[treated["value_tier"] == tier]
        assert len(in_tier) <= (limit.capacity if limit.capacity is not None else n)
        assert in_tier["cost"].sum() <= (limit.budget if limit.budget is not None else 2500.0) + 1e-9
    if limits["holdout_share"]:  # the limits bind: exactly the capacity, the tier budget nearly spent
        assert (treated["value_tier"] == "high_value").sum() == 40
        assert 300.0 - 1.0 < treated.loc[treated["value_tier"] == "potential", "cost"].sum() <= 300.0
        assert (plan["treatment_group"] == "control").sum() > 0.1 * len(treated)


def test_controls_cost_nothing_and_the_treated_fill_the_budget(spark):
    """With a control group the treated still spend the budget (less than one treatment short): controls are
    drawn from the same stretch of the ranking and add no cost."""
    rows = [(f"c{i:04d}", D, "potential", "repeat", 0.5, 100.0 + i) for i in range(2000)]
    settings = SETTINGS.model_copy(update={"budget": 500.0, "holdout_share": 0.1})
    plan = plan_of(spark, rows, settings)
    groups = plan["treatment_group"].value_counts()
    assert groups["treated"] == 500 and plan.loc[plan["selected"], "cost"].sum() == 500.0
    in_plan = plan[plan["treatment_group"] != "not selected"]
    assert (in_plan["priority_rank"] == range(1, len(in_plan) + 1)).all()  # a prefix of the ranking
    assert 0.06 < groups["control"] / len(in_plan) < 0.14
    controls = plan[plan["treatment_group"] == "control"]
    assert (controls["cumulative_cost"].diff().dropna() >= 0).all()
    # A control's running cost is that of the treated before them: their own cost is not added.
    before = plan.set_index("priority_rank")["cumulative_cost"]
    assert all(before.get(rank - 1, 0.0) == cost for rank, cost in zip(controls["priority_rank"],
                                                                       controls["cumulative_cost"], strict=True))


def test_a_customers_lot_depends_only_on_customer_snapshot_and_seed(spark):
    """Reruns keep the groups: the same customer draws the same lot whatever the budget, the limits or the other
    customers; another seed or snapshot draws anew."""
    rows = [(f"c{i:04d}", D, ("high_value", "potential")[i % 2], "repeat", 0.6, 300.0 + i) for i in range(3000)]
    settings = SETTINGS.model_copy(update={"budget": 1e9, "holdout_share": 0.1})
    everyone = plan_of(spark, rows, settings).set_index("customer_id")["treatment_group"]
    assert plan_of(spark, rows, settings).set_index("customer_id")["treatment_group"].equals(everyone)  # a rerun
    tight = plan_of(spark, rows[::3], settings.model_copy(update={"budget": 300.0}))
    tight = tight[tight["treatment_group"] != "not selected"].set_index("customer_id")["treatment_group"]
    assert len(tight) > 50 and (tight == everyone[tight.index]).all()
    other_seed = plan_of(spark, rows, settings.model_copy(update={"holdout_seed": 8})).set_index("customer_id")
    other_day = plan_of(spark, [(c, D + dt.timedelta(days=7), *rest) for c, _, *rest in rows], settings)
    for other in (other_seed["treatment_group"], other_day.set_index("customer_id")["treatment_group"]):
        both = (other == "control") & (everyone == "control")
        assert (other == "control").sum() > 200 and both.sum() < 0.3 * (everyone == "control").sum()


def test_the_control_share_is_the_same_in_every_stratum(spark):
    """Tier × lifecycle stage × churn-risk decile: each stratum's control share is holdout_share, within what
    chance allows (4 standard deviations)."""
    rng = np.random.default_rng(11)
    n = 30_000
    stages = rng.choice(["first_time", "repeat", "loyal"], n)
    tiers = rng.choice(["high_value", "potential"], n)
    churn = rng.uniform(0.05, 1, n)
    rows = [(f"s{i:05d}", D, tiers[i], stages[i], float(churn[i]), 900.0) for i in range(n)]
    share = 0.15
    plan = plan_of(spark, rows, SETTINGS.model_copy(update={"budget": 1e9, "holdout_share": share}))
    assert (plan["treatment_group"] != "not selected").all()
    plan["decile"] = np.minimum((plan["churn_probability"] * 10).astype(int), 9)
    for (tier, stage, decile), stratum in plan.groupby(["value_tier", "lifecycle_stage", "decile"]):
        controls = (stratum["treatment_group"] == "control").mean()
        sd = np.sqrt(share * (1 - share) / len(stratum))
        assert abs(controls - share) < 4 * sd, (tier, stage, decile, len(stratum), controls)
