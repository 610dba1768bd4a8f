"""Churn labels, out-of-time cutoffs and the capped training sample."""

from __future__ import annotations

import datetime as dt
import functools

import numpy as np
import pandas as pd
import pytest
from frames import contract_schema, generated_inputs, ts
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from segscale.config import ChurnSettings, RiskBands, Settings
from segscale.errors import InputError, ModelSkipped
from segscale.models.churn import CHURN_COLUMNS, with_churn_scores
from segscale.models.churn_classifier import (
    MODEL_FEATURES,
    build_estimator,
    classification_metrics,
    evaluate,
    features_of,
    fit_model,
    lift_table,
    predict_churn,
    usable_features,
)
from segscale.models.registry import ScoringModel
from segscale.transforms.features import FEATURE_TYPES, PURCHASE, customer_features, filter_signed_up_by, snapshot_end
from segscale.transforms.labels import (
    CUTOFF,
    LABEL,
    TrainingSet,
    capped_sample,
    check_trainable,
    label_counts,
    labelled_cutoffs,
    labelled_rows,
    training_set,
)

# Features of 3,000 generated customers at several cutoffs: Spark's generated code repays its compilation here.
pytestmark = pytest.mark.usefixtures("compiled_expressions")

CUTOFF_DATE = dt.date(2024, 6, 30)  # horizon 90 days: (2024-06-30, 2024-09-28]
SETTINGS = Settings()


@pytest.fixture(scope="module")
def label_inputs(spark) -> tuple[DataFrame, DataFrame]:
    signups = {cid: dt.date(2023, 1, 1) for cid in "ABCDEG"} | {"F": dt.date(2024, 7, 5)}
    customers = spark.createDataFrame([(cid, day, None, None, None, None, None) for cid, day in signups.items()],
                                      contract_schema("customers"))
    tx = [
        ("a1", "A", "2024-06-01T10:00:00", "purchase"),
        ("a2", "A", "2024-09-28T23:59:59.999999", "purchase"),  # last instant of the horizon: retained
        ("b1", "B", "2024-06-01T10:00:00", "purchase"),
        ("b2", "B", "2024-09-29T00:00:00", "purchase"),  # first instant after the horizon: churned
        ("c1", "C", "2024-06-30T23:59:59.999999", "purchase"),  # at the cutoff: a feature, not a label
        ("d1", "D", "2024-05-01T10:00:00", "purchase"),
        ("d2", "D", "2024-07-15T10:00:00", "return"),  # a return is not a purchase: churned
        ("f1", "F", "2024-07-10T10:00:00", "purchase"),  # signed up after the cutoff: not in the set
        ("g1", "G", "2024-07-01T00:00:00", "purchase"),  # first purchase after the cutoff: not a buyer yet
    ]
    transactions = spark.createDataFrame(
        [(tid, cid, ts(when), 10.0, 1, "books", "store", kind) for tid, cid, when, kind in tx],
        contract_schema("transactions"))
    return customers, transactions


def test_labels_at_the_horizon_boundaries(label_inputs):
    customers, transactions = label_inputs
    rows = labelled_rows(customers, transactions, None, [CUTOFF_DATE], SETTINGS)
    labels = {r.customer_id: r[LABEL] for r in rows.select("customer_id", LABEL).collect()}
    assert labels == {"A": False, "B": True, "C": True, "D": True}
    assert rows.columns == [*FEATURE_TYPES, CUTOFF, LABEL]
    assert {r[CUTOFF] for r in rows.select(CUTOFF).collect()} == {CUTOFF_DATE}
    frequency = {r.customer_id: r.frequency for r in rows.select("customer_id", "frequency").collect()}
    assert frequency == {"A": 1, "B": 1, "C": 1, "D": 1}  # nothing after the cutoff is counted


def test_horizon_comes_from_config(label_inputs):
    customers, transactions = label_inputs
    longer = Settings.model_validate({"churn": {"horizon_days": 91}})
    rows = labelled_rows(customers, transactions, None, [CUTOFF_DATE], longer)
    assert {r.customer_id for r in rows.where(~F.col(LABEL)).collect()} == {"A", "B"}


def test_cutoffs_step_back_one_horizon_at_a_time():
    assert labelled_cutoffs(dt.date(2024, 12, 31), ChurnSettings(horizon_days=90, labelled_cutoffs=3)) == [
        dt.date(2024, 10, 2), dt.date(2024, 7, 4), dt.date(2024, 4, 5)]


@pytest.fixture(scope="module")
def generated(spark):
    with generated_inputs(spark, customers=3000, seed=3) as frames:
        yield frames


def test_changing_events_after_a_cutoff_leaves_its_features_unchanged(generated):
    """No leakage: only the label may look past the cutoff."""
    customers, tx, events = generated["customers"], generated["transactions"], generated["interactions"]
    later = F.col("ts") >= F.lit(ts("2024-07-01T00:00:00"))
    changed_tx = tx.select(
        "transaction_id", "customer_id", "ts",
        F.when(later, F.col("amount") * 5 + 3).otherwise(F.col("amount")).alias("amount"),
        "quantity",
        F.when(later, F.lit("toys")).otherwise(F.col("category")).alias("category"),
        "channel",
        F.when(later, F.lit("return")).otherwise(F.col("transaction_type")).alias("transaction_type"),
    )
    changed_events = events.where(~later | (F.col("kind") != "complaint"))
    before = labelled_rows(customers, tx, events, [CUTOFF_DATE], SETTINGS)
    after = labelled_rows(customers, changed_tx, changed_events, [CUTOFF_DATE], SETTINGS)
    assertDataFrameEqual(after.drop(LABEL), before.drop(LABEL), rtol=1e-9)
    # The change turned every later purchase into a return, so every buyer is now churned.
    assert after.where(~F.col(LABEL)).count() == 0 < before.where(~F.col(LABEL)).count()


@pytest.fixture(scope="module")
def default_training(generated) -> TrainingSet:
    """The training set of the generated base at 2024-12-31 with the default settings, its rows computed once for
    the module's tests (kept until the module ends)."""
    data = training_set(generated["customers"], generated["transactions"], generated["interactions"],
                        dt.date(2024, 12, 31), SETTINGS)
    data.rows.persist()
    yield data
    data.rows.unpersist()


def test_most_recent_cutoff_is_the_holdout_and_earlier_ones_train(default_training):
    data = default_training
    assert data.holdout_cutoff == dt.date(2024, 10, 2)
    holdout_cutoffs = {r[CUTOFF] for r in data.holdout.select(CUTOFF).distinct().collect()}
    train_cutoffs = {r[CUTOFF] for r in data.train.select(CUTOFF).distinct().collect()}
    assert holdout_cutoffs == {dt.date(2024, 10, 2)}
    assert train_cutoffs == {dt.date(2024, 7, 4), dt.date(2024, 4, 5)}
    churn_rate = data.train.agg(F.avg(F.col(LABEL).cast("double"))).first()[0]
    assert 0.05 < churn_rate < 0.95  # both classes present in generated data


def per_cutoff_rows(customers_df: DataFrame, transactions_df: DataFrame, interactions_df: DataFrame | None,
                    cutoff: dt.date, settings: Settings) -> DataFrame:
    """The definition the one-pass training set must reproduce (the former per-cutoff path): the features stage's
    transform as of the cutoff for the customers signed up by then, its buyers, labelled by a separate look at the
    purchases in the horizon."""
    features_df = customer_features(customers_df.transform(filter_signed_up_by, cutoff), transactions_df,
                                    interactions_df, cutoff, settings.features, settings.rfm.lookback_days)
    buyers_df = features_df.where(F.col("recency_days").isNotNull())
    in_horizon = ((F.col("transaction_type") == PURCHASE) & (F.col("ts") >= snapshot_end(cutoff))
                  & (F.col("ts") < snapshot_end(cutoff + dt.timedelta(days=settings.churn.horizon_days))))
    retained_df = transactions_df.where(in_horizon).select("customer_id").distinct().select(
        "customer_id", F.lit(True).alias("_retained"))
    return buyers_df.join(retained_df, "customer_id", how="left").select(
        *buyers_df.columns, F.lit(cutoff).alias(CUTOFF), F.col("_retained").isNull().alias(LABEL))


def test_one_pass_training_set_equals_each_cutoff_computed_alone(generated):
    """Every cutoff's rows of the one-pass training set are the features stage's rows as of that cutoff (its
    buyers, signed up by then), with the label of the horizon after it: same columns, same values."""
    settings = Settings.model_validate({"rfm": {"lookback_days": 200}, "churn": {"labelled_cutoffs": 4}})
    # A quarter of the customers with all their events: each customer's rows depend on their own events alone.
    frames = tuple(generated[name].where(F.xxhash64("customer_id") % 4 == 0)
                   for name in ("customers", "transactions", "interactions"))
    data = training_set(*frames, dt.date(2024, 12, 31), settings)
    assert len(data.cutoffs) == 4
    data.rows.persist()  # one pass, compared side by side; each side of the definition is computed once
    try:
        for side, cutoffs in ((data.holdout, data.cutoffs[:1]), (data.train, data.cutoffs[1:])):
            expected = functools.reduce(DataFrame.unionByName,
                                        [per_cutoff_rows(*frames, c, settings) for c in cutoffs])
            assert side.columns == expected.columns
            expected_rows = expected.collect()
            assert expected_rows
            assertDataFrameEqual(side, expected_rows, rtol=1e-12)
        assert data.rows.count() == data.train.count() + data.holdout.count()
    finally:
        data.rows.unpersist()


def test_capped_sample_keeps_label_shares_and_is_seeded(spark):
    rows = spark.range(20_000).select(
        F.col("id").alias("customer_id"), (F.col("id") % 10 < 2).alias(LABEL)).repartition(4)
    counts = label_counts(rows)
    assert counts == {False: 16_000, True: 4_000}
    sample = capped_sample(rows, counts, 3_000, seed=1)
    n = sample.count()
    assert 2_700 <= n <= 3_000
    share = sample.agg(F.avg(F.col(LABEL).cast("double"))).first()[0]
    assert share == pytest.approx(0.2, abs=0.02)
    assert sorted(r.customer_id for r in sample.collect()) == sorted(
        r.customer_id for r in capped_sample(rows, counts, 3_000, seed=1).collect())
    assert capped_sample(rows, counts, 50_000, seed=1).count() == 20_000


TRAINING = TrainingSet(rows=None, train=None, holdout=None,
                       cutoffs=(dt.date(2024, 10, 2), dt.date(2024, 7, 4), dt.date(2024, 4, 5)))


def test_a_side_with_too_few_churned_or_retained_buyers_skips_the_model_saying_which():
    settings = ChurnSettings(min_rows_per_class=20)
    check_trainable({False: 20, True: 20}, {False: 25, True: 20}, TRAINING, settings)  # at the minimum: trains
    with pytest.raises(ModelSkipped) as skipped:
        check_trainable({False: 300, True: 40}, {False: 19, True: 0}, TRAINING, settings)
    assert skipped.value.model == "churn"
    assert ("the holdout cutoff 2024-10-02: 0 churned and 19 retained" in skipped.value.reason
            and "the training cutoffs 2024-07-04, 2024-04-05: 40 churned and 300 retained" in skipped.value.reason
            and "min_rows_per_class = 20" in skipped.value.reason)
    with pytest.raises(ValueError, match="min_rows_per_class .2. must be at least calibration_folds .3."):
        ChurnSettings(min_rows_per_class=2)


def test_features_missing_or_constant_in_every_training_row_are_left_out():
    rows = 50
    train = pd.DataFrame({name: np.linspace(0, 1, rows) for name in MODEL_FEATURES})
    train["last_satisfaction"] = np.nan  # no interactions table
    train["complaints_365d"] = 0.0  # nobody complained
    train["interactions_365d"] = [np.nan] * 25 + [1.0] * 25  # known for half: the missingness is information
    features, dropped = usable_features(train)
    assert dropped == {"complaints_365d": "the same value (0) in every training row",
                       "last_satisfaction": "missing in every training row"}
    assert features == [f for f in MODEL_FEATURES if f not in dropped]


def test_a_model_fitted_on_some_features_predicts_from_them_alone():
    rng = np.random.default_rng(3)
    train = pd.DataFrame({name: rng.random(200) for name in MODEL_FEATURES})
    train[LABEL] = train["recency_days"] > 0.5
    model = fit_model(train, ["recency_days", "frequency"], ChurnSettings(estimator_params={"max_iter": 10}))
    assert features_of(model) == ["recency_days", "frequency"]
    unused_missing = train.drop(columns=[f for f in MODEL_FEATURES if f not in ("recency_days", "frequency")])
    np.testing.assert_array_equal(predict_churn(model, unused_missing), predict_churn(model, train))


@pytest.fixture(scope="module")
def fitted(default_training):
    data = default_training
    train = capped_sample(data.train, label_counts(data.train), SETTINGS.churn.max_train_rows,
                          SETTINGS.churn.sample_seed).toPandas()
    holdout = data.holdout.toPandas()
    return fit_model(train, usable_features(train)[0], SETTINGS.churn), train, holdout


def test_model_beats_both_baselines_out_of_time(fitted):
    model, train, holdout = fitted
    evaluation = evaluate(model, train, holdout, SETTINGS.lifecycle)
    auc = evaluation["model"]["roc_auc"]
    baselines = {name: m["roc_auc"] for name, m in evaluation["baselines"].items()}
    assert evaluation["beats_baselines"], (auc, baselines)
    assert set(baselines) == {"recency", "frequency_recency_rule"}
    assert auc > 0.7
    assert evaluation["model"]["top_decile_lift"] > 1


def test_probabilities_are_calibrated(fitted):
    model, train, holdout = fitted
    assert ((predict_churn(model, holdout) >= 0) & (predict_churn(model, holdout) <= 1)).all()
    # Balanced class weights pull raw scores towards 0.5; calibration brings them back to the churn rate of the
    # rows it learnt from (the holdout's rate may drift: it is a later period).
    assert predict_churn(model, train).mean() == pytest.approx(train[LABEL].mean(), abs=0.02)


def test_lift_and_capture_in_the_top_decile():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 10)
    p = np.linspace(1, 0, 100)  # the first ten rows get the highest scores: 2 churners of 20 in total
    metrics = classification_metrics(y, p)
    assert metrics["top_decile_capture"] == pytest.approx(2 / 20)
    assert metrics["top_decile_lift"] == pytest.approx((2 / 10) / 0.2)


@pytest.mark.parametrize(("estimator", "params", "message"), [
    ("sklearn.ensemble.NoSuchClassifier", {}, "cannot be imported"),
    ("sklearn.ensemble.HistGradientBoostingClassifier", {"no_such_param": 1}, "do not fit"),
])
def test_estimator_config_errors_name_the_key(estimator, params, message):
    with pytest.raises(ValueError, match=message):
        build_estimator(ChurnSettings(estimator=estimator, estimator_params=params))


def test_configured_estimator_is_used():
    model = build_estimator(ChurnSettings(estimator="sklearn.linear_model.LogisticRegression",
                                          estimator_params={"C": 0.5}))
    assert type(model).__name__ == "LogisticRegression" and model.C == 0.5


SCORING = ScoringModel("segscale_churn", 4, ("recency_days", "frequency"))


def fake_predict(inputs: Column) -> Column:
    """Stands in for the model's UDF: P(churned) = recency_days / 100."""
    return inputs["recency_days"] / 100


def test_churn_scores_bands_and_model_columns(spark):
    features = spark.createDataFrame(
        [("low", 29, 3), ("medium_edge", 30, 1), ("high_edge", 50, 2), ("critical_edge", 70, 1), ("top", 99, 1),
         ("prospect", None, 0)], "customer_id string, recency_days int, frequency long")
    scored = features.transform(with_churn_scores, RiskBands(), SCORING, fake_predict).drop("recency_days",
                                                                                             "frequency")
    # Prospects get no probability and no band; the model columns name what scored the snapshot.
    expected = spark.createDataFrame(
        [("low", 0.29, "low"), ("medium_edge", 0.30, "medium"), ("high_edge", 0.50, "high"),
         ("critical_edge", 0.70, "critical"), ("top", 0.99, "critical"), ("prospect", None, None)],
        "customer_id string, churn_probability double, churn_risk_band string",
    ).select("*", F.lit("segscale_churn").alias("model_name"), F.lit(4).alias("model_version"))
    assertDataFrameEqual(scored, expected, rtol=1e-9)


def test_risk_bands_come_from_config(spark):
    features = spark.createDataFrame([("a", 29, 1), ("b", 12, 1)],
                                     "customer_id string, recency_days int, frequency long")
    bands = RiskBands(medium=0.1, high=0.2, critical=0.25)
    scored = features.transform(with_churn_scores, bands, SCORING, fake_predict)
    assert {r.customer_id: r.churn_risk_band for r in scored.collect()} == {"a": "critical", "b": "medium"}
    with pytest.raises(ValueError, match="must ascend"):
        RiskBands(medium=0.5, high=0.4, critical=0.9)


def test_without_a_model_the_churn_columns_are_typed_nulls(spark):
    features = spark.createDataFrame([("a", 29, 1)], "customer_id string, recency_days int, frequency long")
    scored = features.transform(with_churn_scores, RiskBands()).select(*CHURN_COLUMNS)
    assert scored.collect()[0].asDict() == dict.fromkeys(CHURN_COLUMNS)
    assert [f.dataType.simpleString() for f in scored.schema] == ["double", "string", "string", "int"]


def test_a_model_input_missing_from_the_features_is_named(spark):
    features = spark.createDataFrame([("a", 29)], "customer_id string, recency_days int")
    with pytest.raises(InputError, match=r"the features lack \['frequency'\], which model segscale_churn version 4"):
        features.transform(with_churn_scores, RiskBands(), SCORING, fake_predict)


def test_the_lift_table_ranks_deciles_by_predicted_risk():
    y = np.array([1] * 10 + [0] * 90)
    perfect = lift_table(y, np.linspace(1, 0, 100))  # the ten churners have the ten highest scores
    assert [row["decile"] for row in perfect] == list(range(1, 11))
    assert perfect[0]["churn_rate"] == 1.0 and perfect[0]["lift"] == pytest.approx(10.0)
    assert perfect[0]["cumulative_capture"] == 1.0 and perfect[-1]["cumulative_share"] == pytest.approx(1.0)
    reversed_ = lift_table(y, np.linspace(0, 1, 100))  # the churners score lowest
    assert reversed_[0]["lift"] == 0.0 and reversed_[-1]["lift"] == pytest.approx(10.0)
    assert [row["cumulative_capture"] for row in reversed_][-2:] == [0.0, 1.0]
