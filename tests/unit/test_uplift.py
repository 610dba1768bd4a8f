"""The per-customer uplift model: a T-learner on randomized rows whose true effect differs by customer, its Qini
curve against an independent computation, and a plan valued with it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from segscale.config import RetentionSettings
from segscale.transforms.plan import candidates
from segscale.transforms.uplift import (
    MIN_ARM_CUSTOMERS,
    UpliftModel,
    fit_uplift_model,
    qini,
    qini_coefficient,
    qini_random_sd,
    randomized_rows,
)

P = dt.date(2024, 3, 31)
EFFECT = {"high_value": 0.0, "potential": 0.5, "regular": 0.1}  # the share of would-be churners a treatment keeps


def world(n: int, seed: int, treated_share: float = 0.7, effect: dict[str, float] = EFFECT) -> pd.DataFrame:
    """Randomized customers whose churn, if untreated, is their churn_probability, and whom the treatment keeps
    with their tier's EFFECT: the true incremental retention is EFFECT[tier] × churn_probability."""
    rng = np.random.default_rng(seed)
    tier = rng.choice(list(EFFECT), n)
    churn = rng.uniform(0.05, 0.95, n)
    treated = rng.random(n) < treated_share
    churns = rng.random(n) < churn
    kept = treated & churns & (rng.random(n) < np.vectorize(effect.get)(tier))
    return pd.DataFrame({
        "customer_id": [f"C{i:06d}" for i in range(n)], "snapshot_date": P, "value_tier": tier,
        "lifecycle_stage": rng.choice(["new", "repeat", "loyal"], n), "churn_probability": churn,
        "clv": rng.uniform(50, 500, n), "treated": treated, "retained": (~churns | kept).astype(float),
        "true_uplift": np.vectorize(effect.get)(tier) * churn,
    })


@pytest.fixture(scope="module")
def fitted(spark):
    rows = world(40_000, seed=3)
    rows["evaluation"] = np.random.default_rng(4).random(len(rows)) < 0.3
    rows_df = spark.createDataFrame(rows.drop(columns="true_uplift"))
    return rows, fit_uplift_model(rows_df, P, [P.isoformat()], confidence=0.95)


def predict(spark, model: UpliftModel, rows: pd.DataFrame) -> np.ndarray:
    scored = spark.createDataFrame(rows[["customer_id", "value_tier", "lifecycle_stage", "churn_probability", "clv"]])
    result = scored.select("customer_id", model.incremental_retention().alias("tau")).toPandas()
    return result.set_index("customer_id").loc[rows["customer_id"], "tau"].to_numpy()


def test_the_t_learner_recovers_an_effect_that_differs_by_tier_and_churn_risk(spark, fitted):
    rows, model = fitted
    assert model.treated is not None and model.note is None and model.used
    assert model.customers_fitted + model.customers_evaluated == len(rows)
    assert model.customers_evaluated == int(rows["evaluation"].sum())
    tau = predict(spark, model, rows)
    truth = rows["true_uplift"].to_numpy()
    assert np.corrcoef(tau, truth)[0, 1] > 0.8
    assert abs(tau.mean() - truth.mean()) < 0.02
    by_tier = pd.Series(tau).groupby(rows["value_tier"].to_numpy()).mean()
    assert by_tier["potential"] > by_tier["regular"] > by_tier["high_value"] - 0.01
    assert abs(by_tier["high_value"]) < 0.03


def test_the_model_beats_random_targeting_on_the_rows_it_was_not_fitted_on(fitted):
    _, model = fitted
    curve = model.qini
    assert curve.coefficient > 0.01 and curve.coefficient > 5 * curve.random_sd
    assert curve.depths[0] == 0.0 and curve.depths[-1] == pytest.approx(1.0)
    assert list(curve.depths) == sorted(curve.depths)
    assert len(curve.depths) == len(curve.gains) == 11


def test_a_model_of_customers_the_treatment_does_nothing_for_is_not_used(spark):
    rows = world(20_000, seed=12, effect=dict.fromkeys(EFFECT, 0.0))
    rows["evaluation"] = np.random.default_rng(13).random(len(rows)) < 0.3
    # A random ranking's coefficient stays within 3 standard deviations 99.7 % of the time; so does a model's
    # when there is nothing to find. At 99.9 % confidence (3.09 standard deviations) it is not used.
    model = fit_uplift_model(spark.createDataFrame(rows.drop(columns="true_uplift")), P, [P.isoformat()], 0.999)
    assert model.treated is not None and not model.used
    assert abs(model.qini.coefficient) < 3 * model.qini.random_sd
    assert "within what random targeting reaches" in model.note


def independent_qini(frame: pd.DataFrame, score: np.ndarray, bins: int = 10) -> float:
    """Qini coefficient by sorting: customers in descending score, cut at each tenth of the rows."""
    order = np.argsort(-score, kind="stable")
    treated, retained = frame["treated"].to_numpy()[order], frame["retained"].to_numpy()[order]
    n = len(order)
    depths, gains = [0.0], [0.0]
    for k in range(1, bins + 1):
        top = slice(0, round(k * n / bins))
        t, c = treated[top], ~treated[top]
        gain = retained[top][t].sum() - retained[top][c].sum() * t.sum() / c.sum()
        depths.append(top.stop / n)
        gains.append(gain / n)
    d, g = np.array(depths), np.array(gains)
    above = g - d * g[-1]
    return float(np.sum((above[1:] + above[:-1]) / 2 * np.diff(d)))


def test_the_qini_curve_matches_a_computation_by_sorting_and_ranks_truth_above_chance_above_its_reverse(spark):
    rows = world(20_000, seed=8)
    rows_df = spark.createDataFrame(rows)
    noise = np.random.default_rng(9).random(len(rows))
    rows_df = rows_df.join(spark.createDataFrame(pd.DataFrame({"customer_id": rows["customer_id"], "noise": noise})),
                           "customer_id")
    figures = {}
    for name, column, score in (("truth", F.col("true_uplift"), rows["true_uplift"].to_numpy()),
                                ("chance", F.col("noise"), noise),
                                ("reversed", -F.col("true_uplift"), -rows["true_uplift"].to_numpy())):
        curve = qini(rows_df, column)
        figures[name] = curve.coefficient
        # Tenths by approximate quantiles against exact ones: the same area to within a few customers' worth.
        assert figures[name] == pytest.approx(independent_qini(rows, score), abs=2e-3), name
    assert figures["truth"] > 5 * curve.random_sd
    assert abs(figures["chance"]) < 3 * curve.random_sd
    assert figures["reversed"] < -5 * curve.random_sd


def test_the_spread_of_random_targeting_matches_random_rankings():
    rows = world(5_000, seed=21)
    rng = np.random.default_rng(22)
    coefficients = [independent_qini(rows, rng.random(len(rows))) for _ in range(400)]
    treated = rows["treated"].to_numpy()
    retained = rows["retained"].to_numpy()
    sd = qini_random_sd(np.linspace(0, 1, 11), treated.sum(), (~treated).sum(), retained[treated].sum(),
                        retained[~treated].sum())
    assert abs(np.mean(coefficients)) < 3 * sd / np.sqrt(len(coefficients))
    assert np.std(coefficients) == pytest.approx(sd, rel=0.15)


def test_qini_of_a_straight_line_is_zero_and_of_a_curve_above_it_positive():
    assert qini_coefficient([0, 0.5, 1], [0, 0.05, 0.1]) == pytest.approx(0.0)
    assert qini_coefficient([0, 0.5, 1], [0, 0.1, 0.1]) == pytest.approx(0.025)
    assert qini_coefficient([0, 0.5, 1], [0, 0.0, 0.1]) == pytest.approx(-0.025)


def test_too_few_controls_fit_no_model_and_say_why(spark):
    rows = world(2_000, seed=5, treated_share=0.98)
    rows["evaluation"] = False
    model = fit_uplift_model(spark.createDataFrame(rows.drop(columns="true_uplift")), P, [P.isoformat()], 0.95)
    assert model.treated is None and not model.used and model.qini is None
    assert f"at least {MIN_ARM_CUSTOMERS}" in model.note and "control" in model.note
    assert model.row("r")["treated_coefficients"] is None


def test_a_published_model_scores_as_the_fitted_one(spark, fitted):
    rows, model = fitted
    again = UpliftModel.from_row(model.row("run"))
    sample = rows.head(500)
    assert np.allclose(predict(spark, again, sample), predict(spark, model, sample))
    assert again == model


def test_randomized_rows_take_the_groups_as_assigned_with_a_stable_evaluation_lot(spark):
    plan = spark.createDataFrame(
        [("A", P, "potential", "repeat", 0.5, 100.0, "treated"), ("B", P, "potential", "repeat", 0.5, 100.0,
                                                                  "control"),
         ("C", P, "regular", "new", 0.2, 40.0, "not selected")],
        "customer_id string, snapshot_date date, value_tier string, lifecycle_stage string, "
        "churn_probability double, clv double, treatment_group string")
    window = spark.createDataFrame([("A", 2), ("C", 1)], "customer_id string, _purchases long")
    rows = {r["customer_id"]: r for r in randomized_rows(plan, window, seed=7).collect()}
    assert sorted(rows) == ["A", "B"]
    assert rows["A"]["treated"] and rows["A"]["retained"] == 1.0
    assert not rows["B"]["treated"] and rows["B"]["retained"] == 0.0
    again = {r["customer_id"]: r["evaluation"] for r in randomized_rows(plan, window, seed=7).collect()}
    assert again == {k: r["evaluation"] for k, r in rows.items()}


def test_a_plan_valued_with_the_model_uses_each_customers_predicted_uplift(spark, fitted):
    _, model = fitted
    scores = spark.createDataFrame(
        [("A", P, "potential", "repeat", 0.9, 300.0), ("B", P, "high_value", "loyal", 0.9, 300.0),
         ("C", P, "potential", "repeat", 0.1, 300.0)],
        "customer_id string, snapshot_date date, value_tier string, lifecycle_stage string, "
        "churn_probability double, clv double")
    settings = RetentionSettings()
    planned = {r["customer_id"]: r for r in candidates(
        scores, settings, None, model.incremental_retention()).collect()}
    tau = dict(zip(["A", "B", "C"], predict(spark, model, scores.toPandas()), strict=True))
    for customer, row in planned.items():
        assert row["expected_saved_value"] == pytest.approx(tau[customer] * 300.0 - row["cost"])
    # The risky potential customer gains the most; the high-value one, whose treatment does nothing, is not worth
    # its cost.
    assert "A" in planned and "B" not in planned
    assert tau["A"] > tau["C"]
