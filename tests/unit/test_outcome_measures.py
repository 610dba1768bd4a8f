"""A plan's measured outcome: the outcome window, the groups' sums, the intervals, and the learned uplift."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from scipy import stats

from segscale.config import RetentionSettings
from segscale.transforms.outcomes import (
    difference_interval,
    group_sums,
    learned_uplift,
    matured,
    mean_difference_interval,
    outcome_rows,
    plan_treatments,
    plan_uplifts,
)

P = dt.date(2024, 3, 31)
SETTINGS = RetentionSettings()
PLAN_SCHEMA = ("customer_id string, snapshot_date date, value_tier string, lifecycle_stage string, treatment string, "
               "cost double, churn_probability double, clv double, value_at_risk double, expected_saved_value double, "
               "priority_rank long, cumulative_cost double, selected boolean, run_id string, treatment_group string")
TRANSACTION_SCHEMA = "transaction_id string, customer_id string, ts timestamp, amount double, transaction_type string"
TREATMENT_SCHEMA = "customer_id string, snapshot_date date, treated_on date, treatment string, cost double"


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC)


def plan_row(customer: str, group: str, tier: str = "potential", churn: float = 0.5, clv: float = 100.0,
             cost: float = 1.5, uplift: float = 0.1) -> tuple:
    saved = uplift * churn * clv - cost
    return (customer, P, tier, "repeat", "email_sms", cost, churn, clv, churn * clv, saved, 1, 0.0,
            group == "treated", "plan-run", group)


def test_only_plans_whose_window_has_ended_are_due():
    plans = ["2024-03-31", "2024-06-30", "2024-09-30"]
    assert matured(plans, dt.date(2024, 6, 28), 90) == []
    assert matured(plans, dt.date(2024, 6, 29), 90) == [P]  # 31 March + 90 days: the window's last day
    assert matured(plans, dt.date(2024, 12, 31), 90) == [P, dt.date(2024, 6, 30), dt.date(2024, 9, 30)]


def test_the_window_is_after_the_plan_day_up_to_its_horizon_and_revenue_is_net_of_returns(spark):
    plan = spark.createDataFrame([plan_row("t1", "treated"), plan_row("t2", "treated"), plan_row("t3", "treated"),
                                  plan_row("c1", "control"), plan_row("c2", "control"),
                                  plan_row("n1", "not selected")], PLAN_SCHEMA)
    end = P + dt.timedelta(days=90)
    transactions = spark.createDataFrame([
        ("a", "t1", at(P, 23), 50.0, "purchase"),  # on the plan's day: before the window
        ("b", "t1", at(P + dt.timedelta(days=1), 0), 20.0, "purchase"),  # first instant of the window
        ("c", "t1", at(P + dt.timedelta(days=2)), 5.0, "return"),
        ("d", "t2", at(end, 23), 30.0, "purchase"),  # the window's last day
        ("e", "t3", at(end + dt.timedelta(days=1), 0), 40.0, "purchase"),  # after it
        ("f", "c1", at(P + dt.timedelta(days=10)), 8.0, "return"),  # a return alone does not retain
        ("g", "n1", at(P + dt.timedelta(days=3)), 99.0, "purchase"),  # not in the groups
    ], TRANSACTION_SCHEMA)
    sums = {row["treatment_group"]: row for row in group_sums(plan, transactions, None, P, 90)}
    treated, control = sums["treated"], sums["control"]
    assert (treated["customers"], treated["retained"], treated["revenue"]) == (3, 2, 45.0)
    assert treated["revenue_squared"] == pytest.approx(15.0 ** 2 + 30.0 ** 2)
    assert (control["customers"], control["retained"], control["revenue"]) == (2, 0, -8.0)
    assert treated["spend"] == 4.5 and control["spend"] == 0.0  # the plan's cost of the treated, no table
    assert treated["with_treatment_rows"] is None
    assert treated["expected_lift"] == pytest.approx(3 * 0.1 * 0.5)
    assert treated["plan_run_id"] == "plan-run"


def test_recorded_treatments_set_the_spend_and_show_reach_and_contamination(spark):
    plan = spark.createDataFrame([plan_row("t1", "treated"), plan_row("t2", "treated"),
                                  plan_row("c1", "control")], PLAN_SCHEMA)
    transactions = spark.createDataFrame([], TRANSACTION_SCHEMA)
    next_plan = P + dt.timedelta(days=91)
    treatments = spark.createDataFrame([
        ("t1", P, None, "email", 1.0), ("t1", None, P + dt.timedelta(days=5), "sms", 0.25),  # two touches
        ("t2", None, next_plan, "sms", 9.0),  # the next plan's
        ("c1", P, None, "email", None),  # a control treated by mistake, at the plan's cost
    ], TREATMENT_SCHEMA)
    recorded = plan_treatments(treatments, P, next_plan)
    sums = {row["treatment_group"]: row for row in group_sums(plan, transactions, recorded, P, 90)}
    assert (sums["treated"]["with_treatment_rows"], sums["treated"]["spend"]) == (1, 1.25)
    assert (sums["control"]["with_treatment_rows"], sums["control"]["spend"]) == (1, 1.5)


def test_the_difference_of_proportions_interval_is_newcombes():
    # Newcombe (1998), Statistics in Medicine 17, table II, example (a): 56/70 against 48/80, method 10.
    low, high = difference_interval((56, 70), (48, 80), 0.95)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    low, high = difference_interval((10, 10), (0, 10), 0.95)  # shares at 1 and 0: still inside [-1, 1]
    assert 0.5 < low < high <= 1.0


def test_the_difference_of_means_interval_is_welchs():
    rng = np.random.default_rng(5)
    a, b = rng.gamma(2.0, 30.0, 400), rng.gamma(2.0, 25.0, 60)
    diff, low, high = mean_difference_interval((len(a), a.sum(), (a * a).sum()), (len(b), b.sum(), (b * b).sum()),
                                               0.95)
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert (low, high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert mean_difference_interval((1, 5.0, 25.0), (10, 50.0, 300.0), 0.95) is None


def outcome(plan_date: str, treated: int, retained_treated: int, controls: int, retained_controls: int,
            predicted: float = 0.5, tier: str = "potential", treatment: str = "email_sms_cadence") -> dict:
    return {"snapshot_date": dt.date.fromisoformat(plan_date), "value_tier": tier, "treatment": treatment,
            "customers_treated": treated, "customers_controlled": controls,
            "retention_treated": retained_treated / treated, "retention_control": retained_controls / controls,
            "predicted_churn_control": predicted, "horizon_end": dt.date.fromisoformat(plan_date)}


def test_the_learned_uplift_moves_from_the_prior_to_the_data():
    settings = RetentionSettings(uplift_prior_strength=200.0)
    assert learned_uplift([], 0.1, settings) is None
    # Controls churn 50 %, the treated 25 %: a true uplift of 0.5 against a prior of 0.1.
    small = learned_uplift([outcome("2024-03-31", 40, 30, 40, 20)], 0.1, settings)
    large = learned_uplift([outcome("2024-03-31", 20_000, 15_000, 20_000, 10_000)], 0.1, settings)
    assert 0.1 < small.median < large.median and large.median == pytest.approx(0.5, abs=0.02)
    assert large.low < 0.5 < large.high and large.high - large.low < small.high - small.low
    # Pooled over plans, in order of the data.
    pooled = learned_uplift([outcome("2024-03-31", 500, 375, 500, 250), outcome("2024-06-30", 500, 375, 500, 250)],
                            0.1, settings)
    assert pooled.plans == ("2024-03-31", "2024-06-30")
    one = learned_uplift([outcome("2024-03-31", 500, 375, 500, 250)], 0.1, settings)
    assert abs(pooled.median - 0.5) < abs(one.median - 0.5)


def test_a_miscalibrated_churn_model_is_not_read_as_an_effect():
    """The model predicted 30 % churn; both groups churned 60 % (no effect). Ten times more treated than controls:
    the learned uplift stays between no effect and the prior, not far below zero."""
    posterior = learned_uplift([outcome("2024-03-31", 400, 160, 40, 16, predicted=0.3)], 0.1, SETTINGS)
    assert 0.0 <= posterior.median <= 0.1 and posterior.low < 0 < posterior.high


def test_the_plan_uses_the_learned_uplift_of_the_current_treatment_only():
    history = [outcome("2024-03-31", 5000, 3750, 5000, 2500)]
    learned = plan_uplifts(history, SETTINGS)
    assert learned["potential"].source == "learned" and learned["potential"].value == pytest.approx(0.5, abs=0.03)
    assert learned["potential"].plans == ("2024-03-31",)
    assert (learned["high_value"].source, learned["high_value"].value) == ("configured", 0.30)
    renamed = SETTINGS.model_copy(update={"treatments": SETTINGS.treatments.model_copy(update={
        "potential": SETTINGS.treatments.potential.model_copy(update={"name": "push_notifications"})})})
    assert plan_uplifts(history, renamed)["potential"].source == "configured"
    off = SETTINGS.model_copy(update={"learn_uplift": False})
    assert plan_uplifts(history, off)["potential"].value == 0.10
    harmful = plan_uplifts([outcome("2024-03-31", 5000, 2000, 5000, 2500)], SETTINGS)
    assert harmful["potential"].value == 0.0  # clipped: the plan then treats nobody in the tier


def test_outcome_rows_compare_the_groups_and_what_the_plan_expected():
    sums = [
        {"value_tier": "potential", "treatment": "email_sms", "treatment_group": "treated", "customers": 100,
         "retained": 70, "revenue": 5000.0, "revenue_squared": 400_000.0, "churn_probability": 50.0,
         "clv": 10_000.0, "expected_lift": 5.0, "expected_saved_value": 350.0, "spend": 150.0,
         "with_treatment_rows": None, "plan_run_id": "r0"},
        {"value_tier": "potential", "treatment": "email_sms", "treatment_group": "control", "customers": 20,
         "retained": 10, "revenue": 600.0, "revenue_squared": 30_000.0, "churn_probability": 10.0, "clv": 2000.0,
         "expected_lift": 1.0, "expected_saved_value": 70.0, "spend": 0.0, "with_treatment_rows": None,
         "plan_run_id": "r0"},
    ]
    (row,) = outcome_rows(sums, P, dt.date(2024, 6, 30), {"potential": 0.1}, [], SETTINGS, 90, "r1")
    assert row["incremental_retention"] == pytest.approx(0.2)
    assert row["incremental_retention_low"] < 0.2 < row["incremental_retention_high"]
    assert row["realized_uplift"] == pytest.approx(0.2 / 0.5)
    assert row["incremental_revenue"] == pytest.approx((50.0 - 30.0) * 100)
    assert row["realized_roi"] == pytest.approx((2000.0 - 150.0) / 150.0)
    assert row["realized_saved_value"] == pytest.approx(0.2 * 10_000.0 - 150.0)
    assert row["expected_incremental_retention"] == pytest.approx(0.05)
    assert (row["uplift_planned"], row["uplift_plans"], row["horizon_end"]) == (0.1, 1, dt.date(2024, 6, 29))
    (alone,) = outcome_rows(sums[:1], P, dt.date(2024, 6, 30), {}, [], SETTINGS, 90, "r1")  # no control group
    assert alone["incremental_retention"] is None and alone["learned_uplift"] is None and alone["uplift_plans"] == 0


@pytest.mark.parametrize(("n_treated", "n_control", "p_treated", "p_control"), [
    (300, 40, 0.5, 0.4), (2000, 200, 0.3, 0.2), (100, 12, 0.9, 0.8)])
def test_the_retention_interval_covers_the_true_difference_at_about_its_nominal_rate(n_treated, n_control,
                                                                                     p_treated, p_control):
    """3,000 simulated plans per case: the 95 % interval contains the true difference in 93-97.5 % of them
    (binomial noise on 3,000 trials is ±0.8 points)."""
    rng = np.random.default_rng(17)
    treated = rng.binomial(n_treated, p_treated, 3000)
    control = rng.binomial(n_control, p_control, 3000)
    covered = 0
    for s1, s0 in zip(treated, control, strict=True):
        low, high = difference_interval((int(s1), n_treated), (int(s0), n_control), 0.95)
        covered += low <= p_treated - p_control <= high
    assert 0.93 <= covered / 3000 <= 0.975
