"""customer_features as of a snapshot: tiny literal frames with the edge cases, leakage, and a DuckDB cross-check."""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import pytest
from frames import ROOT, contract_schema, generated_inputs, ts
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from segscale.config import FeatureSettings
from segscale.transforms.features import customer_features

SNAPSHOT = dt.date(2024, 6, 30)
SETTINGS = FeatureSettings()

# Written out here, not taken from the module, so a changed name, order or type fails the tests.
FEATURES_DDL = """
    customer_id string, snapshot_date date, recency_days int, frequency long, monetary double,
    avg_order_value double, tenure_days int, days_since_first_purchase int,
    mean_days_between_purchases double, std_days_between_purchases double,
    purchases_30d long, purchases_90d long, purchases_365d long,
    spend_30d double, spend_90d double, spend_365d double, spend_trend_90d double,
    distinct_categories long, return_rate double, online_share double,
    interactions_365d long, interaction_cost_365d double, complaints_365d long, last_satisfaction int,
    bgnbd_frequency long, bgnbd_recency int, bgnbd_T int, bgnbd_monetary double
"""
FEATURE_NAMES = [part.split()[0] for part in FEATURES_DDL.split(",")]
INTERACTION_FEATURES = ["interactions_365d", "interaction_cost_365d", "complaints_365d", "last_satisfaction"]

# A customer without purchases as of the snapshot, signed up on 2023-01-01 (546 days before it).
NO_PURCHASE = {
    "recency_days": None, "frequency": 0, "monetary": 0.0, "avg_order_value": None, "tenure_days": 546,
    "days_since_first_purchase": None, "mean_days_between_purchases": None, "std_days_between_purchases": None,
    "purchases_30d": 0, "purchases_90d": 0, "purchases_365d": 0,
    "spend_30d": 0.0, "spend_90d": 0.0, "spend_365d": 0.0, "spend_trend_90d": 0.0,
    "distinct_categories": 0, "return_rate": None, "online_share": None,
    "interactions_365d": 0, "interaction_cost_365d": 0.0, "complaints_365d": 0, "last_satisfaction": None,
    "bgnbd_frequency": None, "bgnbd_recency": None, "bgnbd_T": None, "bgnbd_monetary": None,
}
EXPECTED = {
    # Purchases on 04-01 (90 days before: outside the last 90 days, inside the 90 before), 06-10 and twice on
    # 06-20: three purchase days, gaps 70 and 10. The later survey without a score leaves the earlier score.
    "A": {**NO_PURCHASE, "recency_days": 10, "frequency": 4, "monetary": 75.0, "avg_order_value": 18.75,
          "days_since_first_purchase": 90, "mean_days_between_purchases": 40.0,
          "std_days_between_purchases": math.sqrt(1800.0),
          "purchases_30d": 3, "purchases_90d": 3, "purchases_365d": 4,
          "spend_30d": 35.0, "spend_90d": 35.0, "spend_365d": 75.0, "spend_trend_90d": -5.0,
          "distinct_categories": 2, "return_rate": 0.0, "online_share": 0.5,
          "interactions_365d": 3, "interaction_cost_365d": 21.0, "complaints_365d": 1, "last_satisfaction": 4,
          "bgnbd_frequency": 2, "bgnbd_recency": 80, "bgnbd_T": 90, "bgnbd_monetary": 17.5},
    # A return bigger than the purchase: negative monetary; returns are not purchases. Two scores at the same
    # instant: the higher one.
    "B": {**NO_PURCHASE, "recency_days": 181, "frequency": 1, "monetary": -15.0, "avg_order_value": 30.0,
          "days_since_first_purchase": 181, "purchases_365d": 1, "spend_365d": 30.0,
          "distinct_categories": 1, "return_rate": 1.0, "online_share": 0.0,
          "interactions_365d": 2, "interaction_cost_365d": 0.5, "last_satisfaction": 5,
          "bgnbd_frequency": 0, "bgnbd_recency": 0, "bgnbd_T": 181},
    # The last instant of the snapshot day counts, the first instant after it does not.
    "C": {**NO_PURCHASE, "recency_days": 0, "frequency": 1, "monetary": 7.0, "avg_order_value": 7.0,
          "days_since_first_purchase": 0, "purchases_30d": 1, "purchases_90d": 1, "purchases_365d": 1,
          "spend_30d": 7.0, "spend_90d": 7.0, "spend_365d": 7.0, "spend_trend_90d": 7.0,
          "distinct_categories": 1, "return_rate": 0.0, "online_share": 1.0,
          "interactions_365d": 1, "interaction_cost_365d": 18.0, "complaints_365d": 1,
          "bgnbd_frequency": 0, "bgnbd_recency": 0, "bgnbd_T": 0},
    # Bought only after the snapshot: a prospect as of it.
    "D": NO_PURCHASE,
    # Two purchases on one day: one purchase day, so no repeat day and no gap.
    "E": {**NO_PURCHASE, "recency_days": 46, "frequency": 2, "monetary": 20.0, "avg_order_value": 10.0,
          "days_since_first_purchase": 46, "purchases_90d": 2, "purchases_365d": 2,
          "spend_90d": 20.0, "spend_365d": 20.0, "spend_trend_90d": 20.0,
          "distinct_categories": 2, "return_rate": 0.0, "online_share": 0.5,
          "bgnbd_frequency": 0, "bgnbd_recency": 0, "bgnbd_T": 46},
    # Signed up after the snapshot.
    "F": {**NO_PURCHASE, "tenure_days": None},
    # Two purchase days (one gap: a mean, no standard deviation) and a partial return.
    "G": {**NO_PURCHASE, "recency_days": 121, "frequency": 2, "monetary": 70.0, "avg_order_value": 40.0,
          "days_since_first_purchase": 212, "mean_days_between_purchases": 91.0,
          "purchases_365d": 2, "spend_365d": 80.0, "spend_trend_90d": -30.0,
          "distinct_categories": 1, "return_rate": 0.5, "online_share": 0.0,
          "bgnbd_frequency": 1, "bgnbd_recency": 91, "bgnbd_T": 212, "bgnbd_monetary": 30.0},
    # Interactions only: one exactly 365 days back (outside the window, but its score is the last one), one 364.
    "P": {**NO_PURCHASE, "interactions_365d": 1, "last_satisfaction": 3},
    # A return and no purchase.
    "R": {**NO_PURCHASE, "monetary": -12.0},
}


def features_frame(spark, rows: dict[str, dict]) -> DataFrame:
    return spark.createDataFrame(
        [(cid, SNAPSHOT, *[row[name] for name in FEATURE_NAMES[2:]]) for cid, row in rows.items()], FEATURES_DDL)


@pytest.fixture(scope="module")
def literal_inputs(spark) -> dict[str, DataFrame]:
    signups = {cid: dt.date(2023, 1, 1) for cid in EXPECTED} | {"F": dt.date(2024, 7, 15)}
    customers = spark.createDataFrame(
        [(cid, signup, None, None, None, None, None) for cid, signup in signups.items()],
        contract_schema("customers"))
    tx = [
        ("a1", "A", "2024-04-01T10:00:00", 40.0, "books", "store", "purchase"),
        ("a2", "A", "2024-06-10T12:00:00", 20.0, "books", "app", "purchase"),
        ("a3", "A", "2024-06-20T09:00:00", 10.0, "books", "online", "purchase"),
        ("a4", "A", "2024-06-20T18:00:00", 5.0, "toys", "store", "purchase"),
        ("b1", "B", "2024-01-01T00:00:00", 30.0, "fashion", "store", "purchase"),
        ("b2", "B", "2024-02-01T00:00:00", 45.0, "fashion", "store", "return"),
        ("c1", "C", "2024-06-30T23:59:59.999999", 7.0, "books", "online", "purchase"),
        ("c2", "C", "2024-07-01T00:00:00", 100.0, "electronics", "online", "purchase"),
        ("d1", "D", "2024-08-01T00:00:00", 9.0, "books", "store", "purchase"),
        ("e1", "E", "2024-05-15T08:00:00", 12.0, "beauty", "store", "purchase"),
        ("e2", "E", "2024-05-15T20:00:00", 8.0, "home", "online", "purchase"),
        ("f1", "F", "2024-07-20T00:00:00", 9.0, "books", "store", "purchase"),
        ("g1", "G", "2023-12-01T10:00:00", 50.0, "grocery", "store", "purchase"),
        ("g2", "G", "2024-03-01T10:00:00", 30.0, "grocery", None, "purchase"),
        ("g3", "G", "2024-03-05T10:00:00", 10.0, None, "online", "return"),
        ("r1", "R", "2024-05-01T10:00:00", 12.0, "books", "online", "return"),
    ]
    transactions = spark.createDataFrame(
        [(tid, cid, ts(when), amount, 1, category, channel, kind)
         for tid, cid, when, amount, category, channel, kind in tx],
        contract_schema("transactions"))
    events = [
        ("i1", "A", "2023-06-01T10:00:00", "service_call", 6.0, None),
        ("i2", "A", "2024-05-01T10:00:00", "survey", 0.5, 4),
        ("i3", "A", "2024-06-01T10:00:00", "complaint", 20.0, None),
        ("i4", "A", "2024-06-15T10:00:00", "survey", 0.5, None),
        ("i5", "A", "2024-07-02T10:00:00", "survey", 0.5, 1),
        ("i6", "B", "2024-03-01T12:00:00", "survey", None, 2),
        ("i7", "B", "2024-03-01T12:00:00", "survey", 0.5, 5),
        ("i8", "C", "2024-06-30T23:59:59.999999", "complaint", 18.0, None),
        ("i9", "C", "2024-07-01T00:00:00", "complaint", 18.0, 3),
        ("i10", "P", "2023-07-01T00:00:00", "service_call", 4.0, 3),
        ("i11", "P", "2023-07-02T00:00:00", "service_call", None, None),
    ]
    interactions = spark.createDataFrame(
        [(iid, cid, ts(when), kind, cost, score) for iid, cid, when, kind, cost, score in events],
        contract_schema("interactions"))
    return {"customers": customers, "transactions": transactions, "interactions": interactions}


def test_features_with_edge_cases(spark, literal_inputs):
    actual = customer_features(literal_inputs["customers"], literal_inputs["transactions"],
                               literal_inputs["interactions"], SNAPSHOT, SETTINGS)
    assertDataFrameEqual(actual, features_frame(spark, EXPECTED), rtol=1e-12)
    assert actual.columns == FEATURE_NAMES


def test_without_interactions_the_interaction_features_are_unknown(spark, literal_inputs):
    actual = customer_features(literal_inputs["customers"], literal_inputs["transactions"], None, SNAPSHOT, SETTINGS)
    expected = {cid: {**row, **dict.fromkeys(INTERACTION_FEATURES)} for cid, row in EXPECTED.items()}
    assertDataFrameEqual(actual, features_frame(spark, expected), rtol=1e-12)


@pytest.mark.parametrize(("lookback_days", "bounded"), [
    # The day `lookback_days` before the snapshot is out, the one after it is in.
    (20, {"A": (2, 15.0), "C": (1, 7.0)}),
    # G's purchase (121 days back) is out, its return (117) in; R's return counts without a purchase.
    (121, {"A": (4, 75.0), "C": (1, 7.0), "E": (2, 20.0), "G": (0, -10.0), "R": (0, -12.0)}),
])
def test_lookback_bounds_frequency_and_monetary_only(spark, literal_inputs, lookback_days, bounded):
    actual = customer_features(literal_inputs["customers"], literal_inputs["transactions"],
                               literal_inputs["interactions"], SNAPSHOT, SETTINGS, lookback_days=lookback_days)
    expected = {cid: {**row, "frequency": bounded.get(cid, (0, 0.0))[0], "monetary": bounded.get(cid, (0, 0.0))[1]}
                for cid, row in EXPECTED.items()}
    assertDataFrameEqual(actual, features_frame(spark, expected), rtol=1e-12)


def test_settings_choose_online_channels_and_complaint_kinds(spark, literal_inputs):
    settings = FeatureSettings(online_channels=("store",), complaint_kinds=("complaint", "survey"))
    actual = customer_features(literal_inputs["customers"], literal_inputs["transactions"],
                               literal_inputs["interactions"], SNAPSHOT, settings)
    changed = {"A": {"online_share": 0.5, "complaints_365d": 3}, "B": {"online_share": 1.0, "complaints_365d": 2},
               "C": {"online_share": 0.0}, "E": {"online_share": 0.5}, "G": {"online_share": 0.5}}
    expected = {cid: {**row, **changed.get(cid, {})} for cid, row in EXPECTED.items()}
    assertDataFrameEqual(actual, features_frame(spark, expected), rtol=1e-12)


# ---- generated data: leakage and an independent DuckDB computation ------------------------------------------
@pytest.fixture(scope="module")
def generated(spark):
    with generated_inputs(spark, customers=2000, seed=5) as frames:
        yield frames


def test_events_after_the_snapshot_change_nothing(generated):
    end = F.lit(ts("2024-07-01T00:00:00"))
    tx, events = generated["transactions"], generated["interactions"]
    later = F.col("ts") >= end
    # Every later transaction changed (amount, type, category, channel, time), plus a purchase at the first
    # instant after the snapshot for every customer; likewise for interactions.
    changed_tx = tx.select(
        "transaction_id", "customer_id",
        F.when(later, F.col("ts") + F.expr("INTERVAL 1 DAY")).otherwise(F.col("ts")).alias("ts"),
        F.when(later, F.col("amount") * 3 + 1).otherwise(F.col("amount")).alias("amount"),
        "quantity",
        F.when(later, F.lit("toys")).otherwise(F.col("category")).alias("category"),
        F.when(later, F.lit("online")).otherwise(F.col("channel")).alias("channel"),
        F.when(later & (F.col("transaction_type") == "purchase"), F.lit("return"))
        .when(later, F.lit("purchase")).otherwise(F.col("transaction_type")).alias("transaction_type"),
    )
    added_tx = generated["customers"].select(
        F.concat(F.lit("late-"), "customer_id").alias("transaction_id"), "customer_id", end.alias("ts"),
        F.lit(1000.0).alias("amount"), F.lit(1).alias("quantity"), F.lit("new").alias("category"),
        F.lit("online").alias("channel"), F.lit("purchase").alias("transaction_type"))
    added_events = generated["customers"].select(
        F.concat(F.lit("late-"), "customer_id").alias("interaction_id"), "customer_id", end.alias("ts"),
        F.lit("complaint").alias("kind"), F.lit(50.0).alias("cost"), F.lit(1).alias("satisfaction"))
    before = customer_features(generated["customers"], tx, events, SNAPSHOT, SETTINGS)
    after = customer_features(generated["customers"], changed_tx.unionByName(added_tx),
                              events.unionByName(added_events), SNAPSHOT, SETTINGS)
    assertDataFrameEqual(after, before, rtol=1e-9)


DUCKDB_FEATURES = (ROOT / "benchmarks" / "reference_features.sql").read_text()


def test_features_match_an_independent_duckdb_query(spark, generated):
    lookback_days = 180
    actual = customer_features(generated["customers"], generated["transactions"], generated["interactions"],
                               SNAPSHOT, SETTINGS, lookback_days=lookback_days)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, frame_df in generated.items():
        con.register(name, frame_df.toArrow())
    expected_arrow = con.sql(DUCKDB_FEATURES, params={
        "snapshot": SNAPSHOT, "snapshot_end": ts("2024-07-01T00:00:00"), "lookback_days": lookback_days,
    }).to_arrow_table()
    expected = spark.createDataFrame(expected_arrow)
    assert expected.count() == 2000
    assert expected.where("frequency > 0 AND bgnbd_frequency > 1 AND last_satisfaction IS NOT NULL").count() > 50
    assertDataFrameEqual(actual, expected, rtol=1e-9)


def test_features_are_bit_identical_however_the_rows_are_partitioned_and_ordered(spark):
    """Amounts are summed exactly, so a cluster that splits and orders the rows differently publishes the same
    bits (a double sum would differ in the last digits, and flip a tree model's split now and then)."""
    with generated_inputs(spark, customers=1500, seed=8) as frames:
        def features(layout) -> list:
            return sorted(customer_features(layout(frames["customers"]), layout(frames["transactions"]),
                                            layout(frames["interactions"]), SNAPSHOT, SETTINGS).collect())

        one = features(lambda df: df.coalesce(1))
        many = features(lambda df: df.repartition(11).sortWithinPartitions(F.rand(seed=3)))
    assert one == many  # Row equality: every float compared exactly
    assert sum(r.monetary for r in one) != 0
