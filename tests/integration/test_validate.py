"""Input validation: one reason per bad row, clean rows kept, counts, the bad-share stop, and generated dirt."""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import pytest
from frames import contract_schema, shuffle_partitions, ts
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from segscale.catalog import QUARANTINE
from segscale.config import FeatureSettings, GenerateSettings, ValidationSettings
from segscale.contract import CONTRACT
from segscale.errors import InputError
from segscale.synthetic.generator import generate_frames
from segscale.transforms import validate
from segscale.transforms.conform import InputTables, conform
from segscale.transforms.features import features_as_of
from segscale.transforms.validate import (
    TableCounts,
    bad_share,
    check_bad_ratios,
    reason_counts,
    validate_inputs,
)

SNAPSHOT = dt.date(2024, 6, 30)
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
RUN_ID = "run-1"
SETTINGS = ValidationSettings(amount_ceiling=1000.0)
NAN, INF = float("nan"), float("inf")


T0 = ts("2024-03-01T10:00:00")
D0 = dt.date(2022, 1, 1)


# ---- literal frames ----------------------------------------------------------------------------------------
def customer(cid: str | None, signup: dt.date | None = D0, region: str = "north") -> tuple:
    return (cid, signup, region, 1, "online", 1980, "F")


def tx(tid: str | None, cid: str | None = "C1", when: dt.datetime | None = T0, amount: float | None = 10.0,
       kind: str | None = "purchase") -> tuple:
    return (tid, cid, when, amount, 1, "books", "online", kind)


def interaction(iid: str | None, cid: str | None = "C1", when: dt.datetime | None = T0,
                kind: str | None = "service_call", cost: float | None = 5.0, satisfaction: int | None = None) -> tuple:
    return (iid, cid, when, kind, cost, satisfaction)


def frame(spark: SparkSession, table: str, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, contract_schema(table))


def spark_json(table: str, row: tuple) -> str:
    """The record Spark's to_json writes for a typed row (UTC timestamps, NaN and infinities as strings)."""
    def value(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        if isinstance(v, dt.datetime):
            return v.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        if isinstance(v, dt.date):
            return v.isoformat()
        return v
    names = [c.name for c in CONTRACT[table]]
    return json.dumps({n: value(v) for n, v in zip(names, row, strict=True)}, separators=(",", ":"))


def quarantine_frame(spark: SparkSession, bad: list[tuple[str, str, tuple]]) -> DataFrame:
    return spark.createDataFrame([(table, reason, spark_json(table, row)) for table, reason, row in bad],
                                 "source_table string, reason string, record string")


def quarantined(validated_quarantine: DataFrame, table: str | None = None) -> DataFrame:
    df = validated_quarantine.select("source_table", "reason", "record")
    return df if table is None else df.where(F.col("source_table") == table)


# Customers: clean C1, C2, C3, C5, C6; C4 exists only with a null signup_date.
C2_FIRST, C2_LATER = customer("C2", dt.date(2022, 2, 1)), customer("C2", dt.date(2022, 3, 1))
C5_NO_SIGNUP, C5_GOOD = customer("C5", None), customer("C5", dt.date(2023, 1, 1))
C6_SOUTH, C6_EAST = customer("C6", region="south"), customer("C6", region="east")
CUSTOMERS_CLEAN = [customer("C1"), C2_FIRST, customer("C3"), C5_GOOD, C6_EAST]
CUSTOMERS_BAD = [
    ("duplicate_customer_id", C2_LATER),  # the earliest signup_date is kept
    ("duplicate_customer_id", customer("C3")),  # an exact copy
    ("duplicate_customer_id", C6_SOUTH),  # same signup_date: the remaining columns decide (region east < south)
    ("invalid_signup_date", customer("C4", None)),
    ("invalid_signup_date", C5_NO_SIGNUP),  # a bad row does not make its good duplicate disappear
    ("null_customer_id", customer(None)),
    ("null_customer_id", customer("  ")),
    ("null_customer_id", customer("", None)),  # first rule wins over the null signup_date
]
CUSTOMER_ROWS = [*CUSTOMERS_CLEAN, *(row for _, row in CUSTOMERS_BAD)]

MIN_TS = ts("1990-01-01T00:00:00")
TRANSACTIONS_CLEAN = [
    tx("t01"),
    tx("t10", amount=1000.0),  # at the ceiling
    tx("t11", amount=0.0),  # zero is not negative
    tx("t15", when=ts("2024-09-01T00:00:00")),  # after the snapshot date, before now: a later snapshot's row
    tx("t16", when=MIN_TS),  # range bounds are inclusive
    tx("t17", when=NOW),
    tx("t20", when=T0),
    tx("t21", amount=3.0),
    tx("t22", amount=5.0),
    tx("t23", when=T0),
    tx("t24", when=T0),
]
T24_UNKNOWN = tx("t24", cid="X9", when=ts("2024-03-01T09:00:00"))
TRANSACTIONS_BAD = [
    ("null_transaction_id", tx(None)),
    ("null_transaction_id", tx("")),
    ("null_customer_id", tx("t02", cid=None)),
    ("null_customer_id", tx("t03", cid="  ")),
    ("null_customer_id", tx("t04", cid=None, amount=NAN)),  # first rule wins
    ("invalid_amount", tx("t05", amount=NAN)),
    ("invalid_amount", tx("t06", amount=INF)),
    ("invalid_amount", tx("t07", amount=-5.0)),
    ("invalid_amount", tx("t08", amount=None)),
    ("amount_above_ceiling", tx("t09", amount=1000.01)),
    ("invalid_timestamp", tx("t12", when=None)),
    ("timestamp_out_of_range", tx("t13", when=ts("1985-06-01T00:00:00"))),
    ("timestamp_out_of_range", tx("t14", when=ts("2025-01-01T00:00:01"))),
    ("unknown_transaction_type", tx("t18", kind="refund?")),
    ("unknown_transaction_type", tx("t19", kind=None)),
    ("unknown_customer", tx("t30", cid="X9")),
    ("unknown_customer", tx("t31", cid="C4")),  # C4's only row was quarantined
    ("duplicate_transaction_id", tx("t20", when=ts("2024-03-01T11:00:00"))),  # the earliest ts is kept
    ("duplicate_transaction_id", tx("t21", amount=3.0)),  # an exact copy
    ("duplicate_transaction_id", tx("t22", amount=7.0)),  # same ts: the remaining columns decide
    ("invalid_amount", tx("t23", when=ts("2024-03-01T09:00:00"), amount=-1.0)),  # earlier, but bad
    ("unknown_customer", T24_UNKNOWN),  # earlier, but of an unknown customer
]
TRANSACTION_ROWS = [*TRANSACTIONS_CLEAN, *(row for _, row in TRANSACTIONS_BAD)]

INTERACTIONS_CLEAN = [
    interaction("i01"),
    interaction("i08", kind="survey", cost=0.5, satisfaction=5),
    interaction("i09", kind="survey", cost=None, satisfaction=1),  # null cost and satisfaction are allowed
    interaction("i10", cost=0.0),
    interaction("i11"),
    interaction("i12", when=ts("2024-09-01T00:00:00")),
]
INTERACTIONS_BAD = [
    ("null_interaction_id", interaction(None)),
    ("null_interaction_id", interaction("\t")),
    ("null_customer_id", interaction("i02", cid="  ")),
    ("null_customer_id", interaction("i03", cid=None)),
    ("invalid_timestamp", interaction("i04", when=None)),
    ("timestamp_out_of_range", interaction("i05", when=ts("1985-06-01T00:00:00"))),
    ("timestamp_out_of_range", interaction("i06", when=ts("2026-01-01T00:00:00"))),
    ("unknown_interaction_kind", interaction("i07", kind="chat")),
    ("unknown_interaction_kind", interaction("i13", kind=None)),
    ("invalid_satisfaction", interaction("i14", kind="survey", satisfaction=0)),
    ("invalid_satisfaction", interaction("i15", kind="survey", satisfaction=6)),
    ("invalid_cost", interaction("i16", cost=-1.0)),
    ("invalid_cost", interaction("i17", cost=NAN)),
    ("invalid_cost", interaction("i18", cost=-INF)),
    ("unknown_customer", interaction("i19", cid="X9")),
    ("duplicate_interaction_id", interaction("i11", when=ts("2024-03-01T11:00:00"))),
]
INTERACTION_ROWS = [*INTERACTIONS_CLEAN, *(row for _, row in INTERACTIONS_BAD)]


@pytest.fixture(scope="module")
def inputs(spark: SparkSession) -> InputTables:
    return InputTables(frame(spark, "customers", CUSTOMER_ROWS), frame(spark, "transactions", TRANSACTION_ROWS),
                       frame(spark, "interactions", INTERACTION_ROWS))


@pytest.fixture(scope="module")
def validated(inputs):
    result = validate_inputs(inputs, SETTINGS, SNAPSHOT, RUN_ID, NOW)
    yield result
    for df in result.kept:
        df.unpersist()


# ---- rules -------------------------------------------------------------------------------------------------
def test_customers_rules_and_kept_rows(spark, validated):
    assertDataFrameEqual(validated.customers, frame(spark, "customers", CUSTOMERS_CLEAN))
    expected = quarantine_frame(spark, [("customers", reason, row) for reason, row in CUSTOMERS_BAD])
    assertDataFrameEqual(quarantined(validated.quarantine, "customers"), expected)


def test_transactions_rules_and_kept_rows(spark, validated):
    assertDataFrameEqual(validated.transactions, frame(spark, "transactions", TRANSACTIONS_CLEAN))
    expected = quarantine_frame(spark, [("transactions", reason, row) for reason, row in TRANSACTIONS_BAD])
    assertDataFrameEqual(quarantined(validated.quarantine, "transactions"), expected)


def test_interactions_rules_and_kept_rows(spark, validated):
    assertDataFrameEqual(validated.interactions, frame(spark, "interactions", INTERACTIONS_CLEAN))
    expected = quarantine_frame(spark, [("interactions", reason, row) for reason, row in INTERACTIONS_BAD])
    assertDataFrameEqual(quarantined(validated.quarantine, "interactions"), expected)


def test_unknown_customers_kept_when_configured(spark, inputs):
    keep = SETTINGS.model_copy(update={"unknown_customer": "keep"})
    validated = validate_inputs(inputs, keep, SNAPSHOT, RUN_ID, NOW)
    unknown = [row for reason, row in TRANSACTIONS_BAD if reason == "unknown_customer"]
    t24_known = tx("t24", when=T0)
    # t24's earlier copy (customer X9) is now a valid row, so it is the one kept.
    clean = [row for row in TRANSACTIONS_CLEAN if row != t24_known] + unknown
    assertDataFrameEqual(validated.transactions, frame(spark, "transactions", clean))
    bad = [("transactions", reason, row) for reason, row in TRANSACTIONS_BAD if reason != "unknown_customer"]
    bad.append(("transactions", "duplicate_transaction_id", t24_known))
    assertDataFrameEqual(quarantined(validated.quarantine, "transactions"), quarantine_frame(spark, bad))
    assert validated.interactions.where(F.col("customer_id") == "X9").count() == 1


@pytest.mark.parametrize("broadcast_keys", [validate.MAX_BROADCAST_KEYS, 0])
def test_duplicates_resolved_the_same_whatever_the_input_order(spark, monkeypatch, broadcast_keys):
    """Also when more keys are shared by customers than are broadcast (0: their copies are joined by a shuffle)."""
    monkeypatch.setattr(validate, "MAX_BROADCAST_KEYS", broadcast_keys)
    rows = [tx("d1", amount=a, when=T0) for a in (9.0, 2.0, 5.0)] + [tx("d2", cid=c) for c in ("C3", "C1", "C2")]
    rows += [tx("d3"), tx("d3"), tx("d3", kind="return")]
    # Two copies at one customer and an earlier one at another: the other customer's copy is kept.
    rows += [tx("d4", cid="C1", when=ts("2024-03-02T10:00:00"))] * 2 + [tx("d4", cid="C3")]
    customers = frame(spark, "customers", [customer("C1"), customer("C2"), customer("C3")])

    def run(ordered: list[tuple], partitions: int) -> list:
        transactions = frame(spark, "transactions", ordered).repartition(partitions)
        validated = validate_inputs(InputTables(customers, transactions, None), SETTINGS, SNAPSHOT, RUN_ID, NOW)
        return validated.flagged["transactions"].collect()  # every row with its reason (null: kept)

    forward = run(rows, 1)
    assertDataFrameEqual(forward, run(rows[::-1], 3))
    assert sorted(row["reason"] or "kept" for row in forward) == ["duplicate_transaction_id"] * 8 + ["kept"] * 4
    assert [row["customer_id"] for row in forward if row["transaction_id"] == "d4" and row["reason"] is None] == ["C3"]


def test_features_of_every_cutoff_read_the_validated_events_without_shuffling_them(spark, validated):
    """Validation shuffles each events table once, by customer_id, and its flagged rows stay so partitioned:
    the features of several cutoffs (the training set's one pass) group each customer's events from the kept
    rows without another shuffle of them. Only the customers move: the first copies of repeated keys, which the
    duplicate rule compares across customers by key, moved once in validation and are kept decided."""
    cutoffs = [SNAPSHOT - dt.timedelta(days=90), SNAPSHOT]
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")  # plan as for a base too large to broadcast
    try:
        features_df = features_as_of(validated.customers, validated.transactions, validated.interactions,
                                     cutoffs, FeatureSettings(), purchases_after_days=30)
        features_df.collect()  # small: executes the frame's own plan, whose exchanges then hold their metrics
    finally:
        spark.conf.unset("spark.sql.autoBroadcastJoinThreshold")
    shuffled = shuffled_rows(features_df._jdf.queryExecution().executedPlan())
    for table, key in (("transactions", "transaction_id"), ("interactions", "interaction_id")):
        rows = validated.flagged[table]
        candidates = rows.where(F.col("reason").isNull() | F.col("reason").startswith("duplicate_"))
        repeated = candidates.groupBy(key).count().where(F.col("count") > 1).agg(F.sum("count")).first()[0]
        assert 0 < repeated * 2 < rows.count(), table  # the literal rows repeat a few keys; most rows are unique
        assert shuffled.get(table, 0) == 0, (table, shuffled)


@pytest.mark.parametrize("unknown_customer", ["quarantine", "keep"])
def test_flagged_events_are_partitioned_by_customer_alone(spark, inputs, unknown_customer):
    """With or without the unknown-customer join, each events table is shuffled by customer_id (not by its key,
    as a window over its copies alone would), so what reads the flagged rows per customer needs no shuffle."""
    settings = SETTINGS.model_copy(update={"unknown_customer": unknown_customer})
    with shuffle_partitions(spark, 2):  # with one, Spark plans a single partition, whatever the key
        validated = validate_inputs(inputs, settings, SNAPSHOT, RUN_ID, NOW)
        for name in ("transactions", "interactions"):
            adaptive = validated.flagged[name]._jdf.queryExecution().executedPlan()
            partitioning = adaptive.executedPlan().outputPartitioning().toString()
            assert re.fullmatch(r"hashpartitioning\(customer_id#\d+, \d+\)", partitioning), (name, partitioning)


def shuffled_rows(node, below_shuffle: int | None = None) -> dict[str, int]:
    """Rows of each validated table (named by its key column) that the shuffles of the executed plan `node` (a JVM
    SparkPlan, adaptive stages unwrapped) move: for a kept table read below a hash exchange, that exchange's rows."""
    name = node.nodeName()
    if name == "AdaptiveSparkPlan":
        return shuffled_rows(node.executedPlan(), below_shuffle)
    if "QueryStage" in name:
        return shuffled_rows(node.plan(), below_shuffle)
    if name == "InMemoryTableScan" and below_shuffle is not None:
        columns = {attribute.name() for attribute in _jvm_list(node.relation().output())}
        return {table: below_shuffle for table, key in KEYS.items() if key in columns}
    if name == "Exchange" and "hashpartitioning" in node.simpleString(100):
        below_shuffle = node.metrics().apply("shuffleRecordsWritten").value()
    found: dict[str, int] = {}
    for child in _jvm_list(node.children()):
        for table, rows in shuffled_rows(child, below_shuffle).items():
            found[table] = found.get(table, 0) + rows
    return found


def _jvm_list(seq) -> list:
    return [seq.apply(i) for i in range(seq.size())]


KEYS = {"customers": "signup_date", "transactions": "transaction_id", "interactions": "interaction_id"}


def test_csv_text_is_kept_in_the_record(spark):
    customers_text = spark.createDataFrame(
        [("C1", "2022-01-01"), ("C2", "not a date")], "customer_id string, signup_date string")
    transactions_text = spark.createDataFrame(
        [
            ("t1", "C1", "2024-03-01T10:00:00Z", " 12.50 ", "purchase"),
            ("t2", "C1", "yesterday", "5", "purchase"),
            ("t3", "C1", "", "5", "purchase"),
            ("t4", "C1", "2024-03-01T10:00:00Z", "abc", "purchase"),
            ("t5", "C1", "2024-03-01T10:00:00Z", "NaN", "purchase"),
        ],
        "transaction_id string, customer_id string, ts string, amount string, transaction_type string",
    )
    inputs = InputTables(conform("customers", customers_text, "test"),
                         conform("transactions", transactions_text, "test"), None)
    validated = validate_inputs(inputs, SETTINGS, SNAPSHOT, RUN_ID, NOW)

    assertDataFrameEqual(validated.customers, frame(spark, "customers", [("C1", D0, None, None, None, None, None)]))
    assertDataFrameEqual(validated.transactions,
                         frame(spark, "transactions", [("t1", "C1", T0, 12.5, None, None, None, "purchase")]))
    tx_tail = '"quantity":null,"category":null,"channel":null,"transaction_type":"purchase"}'
    bad = [
            ("customers", "invalid_signup_date",
             '{"customer_id":"C2","signup_date":"not a date","region":null,"city_tier":null,"channel":null,'
             '"birth_year":null,"gender":null}'),
            ("transactions", "invalid_timestamp",
             '{"transaction_id":"t2","customer_id":"C1","ts":"yesterday","amount":"5",' + tx_tail),
            ("transactions", "invalid_timestamp",
             '{"transaction_id":"t3","customer_id":"C1","ts":"","amount":"5",' + tx_tail),
            ("transactions", "invalid_amount",
             '{"transaction_id":"t4","customer_id":"C1","ts":"2024-03-01T10:00:00Z","amount":"abc",' + tx_tail),
            ("transactions", "invalid_amount",
             '{"transaction_id":"t5","customer_id":"C1","ts":"2024-03-01T10:00:00Z","amount":"NaN",' + tx_tail),
    ]
    expected = spark.createDataFrame([(*row, SNAPSHOT, RUN_ID) for row in bad], QUARANTINE.spark_schema)
    assertDataFrameEqual(validated.quarantine, expected)


def test_without_interactions(spark, inputs):
    validated = validate_inputs(InputTables(inputs.customers, inputs.transactions, None), SETTINGS, SNAPSHOT,
                                RUN_ID, NOW)
    assert validated.interactions is None
    assert set(reason_counts(validated)) == {"customers", "transactions"}
    assert validated.quarantine.where(F.col("source_table") == "interactions").count() == 0


# ---- counts and the stop rule ------------------------------------------------------------------------------
def test_reason_counts(validated):
    counts = reason_counts(validated)

    def expected(clean: list, bad: list[tuple[str, tuple]]) -> TableCounts:
        per_reason: dict[str, int] = {}
        for reason, _ in bad:
            per_reason[reason] = per_reason.get(reason, 0) + 1
        return TableCounts(rows=len(clean) + len(bad), bad=per_reason)

    assert counts == {
        "customers": expected(CUSTOMERS_CLEAN, CUSTOMERS_BAD),
        "transactions": expected(TRANSACTIONS_CLEAN, TRANSACTIONS_BAD),
        "interactions": expected(INTERACTIONS_CLEAN, INTERACTIONS_BAD),
    }
    # Reasons are listed in rule order, and the counts are plain JSON for the run summary.
    assert list(counts["customers"]["bad"]) == ["null_customer_id", "invalid_signup_date", "duplicate_customer_id"]
    assert json.loads(json.dumps(counts)) == counts


def test_bad_ratio_at_the_limit_passes():
    check_bad_ratios({"transactions": TableCounts(rows=20, bad={"invalid_amount": 1}),
                      "customers": TableCounts(rows=0, bad={})}, max_bad_ratio=0.05)


def test_bad_ratio_above_the_limit_stops_the_run():
    counts = {
        "customers": TableCounts(rows=100, bad={"null_customer_id": 5}),
        "transactions": TableCounts(rows=1000, bad={"invalid_amount": 40, "duplicate_transaction_id": 11}),
    }
    with pytest.raises(InputError) as raised:
        check_bad_ratios(counts, max_bad_ratio=0.05)
    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert "transactions: 51 of 1,000 rows bad (5.10%, limit 5.00%)" in message
    assert "invalid_amount 40, duplicate_transaction_id 11" in message
    assert "customers" not in message
    assert "nothing was published" in message


# ---- generated data ----------------------------------------------------------------------------------------
def test_every_generated_bad_row_is_caught(spark):
    """Clean output = the rows the generator left untouched (of customers that stayed clean), nothing else."""
    settings = GenerateSettings(customers=3000, dirty_rate=0.05)
    dirty = {k: v.cache() for k, v in generate_frames(spark, settings).items() if k != "customer_truth"}
    base = generate_frames(spark, settings.model_copy(update={"dirty_rate": 0.0}))
    inputs = InputTables(dirty["customers"], dirty["transactions"], dirty["interactions"])
    validated = validate_inputs(inputs, ValidationSettings(), dt.date(2024, 12, 31), RUN_ID,
                                dt.datetime(2025, 6, 1, tzinfo=dt.UTC))

    # Faults are applied in place or as appended copies, so an untouched row is one in both versions.
    assertDataFrameEqual(validated.customers, base["customers"].intersectAll(dirty["customers"]))
    known = validated.customers.select("customer_id")
    for name in ("transactions", "interactions"):
        untouched = base[name].intersectAll(dirty[name]).join(known, "customer_id", how="left_semi")
        assertDataFrameEqual(getattr(validated, name), untouched.select(*base[name].columns))

    # About 5 % of each table's rows are faulty; transactions and interactions also lose the rows of customers
    # whose own row was blanked (their ids no longer match a clean customer).
    counts = reason_counts(validated)
    orphans = validated.flagged["transactions"].where(
        (F.col("reason") == "unknown_customer") & ~F.col("customer_id").startswith("X")).count()
    tx_counts = counts["transactions"]
    assert 0.04 < (sum(tx_counts["bad"].values()) - orphans) / tx_counts["rows"] < 0.06
    assert 0.035 < bad_share(counts["customers"]) < 0.075
    assert set(tx_counts["bad"]) >= {"null_customer_id", "invalid_timestamp", "timestamp_out_of_range",
                                  "invalid_amount", "unknown_transaction_type", "unknown_customer",
                                  "duplicate_transaction_id"}
    for df in [*dirty.values(), *validated.kept]:
        df.unpersist()
