"""customer_features as of a snapshot: the first three features, on tiny frames with the edge cases."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from segscale.features import customer_features
from segscale.ingest import CONTRACT

SNAPSHOT = dt.date(2024, 6, 30)


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def contract_schema(name: str) -> T.StructType:
    return T.StructType([T.StructField(c.name, c.data_type) for c in CONTRACT[name]])


def test_recency_frequency_monetary_with_edge_cases(spark):
    customers = spark.createDataFrame(
        [(cid, dt.date(2023, 1, 1), None, None, None, None, None) for cid in ["A", "B", "C", "D", "P"]],
        contract_schema("customers"),
    )
    tx = [
        # A: two purchases on the same day and one 10 days earlier
        ("t1", "A", ts("2024-06-20T09:00:00"), 10.0, "purchase"),
        ("t2", "A", ts("2024-06-20T18:00:00"), 5.0, "purchase"),
        ("t3", "A", ts("2024-06-10T12:00:00"), 20.0, "purchase"),
        # B: a return bigger than the purchase gives negative monetary; returns are not purchases
        ("t4", "B", ts("2024-01-01T00:00:00"), 30.0, "purchase"),
        ("t5", "B", ts("2024-02-01T00:00:00"), 45.0, "return"),
        # C: the last instant of the snapshot day counts, the first instant after it does not
        ("t6", "C", ts("2024-06-30T23:59:59.999999"), 7.0, "purchase"),
        ("t7", "C", ts("2024-07-01T00:00:00"), 100.0, "purchase"),
        # D: bought only after the snapshot, so a prospect as of it
        ("t8", "D", ts("2024-08-01T00:00:00"), 9.0, "purchase"),
    ]
    transactions = spark.createDataFrame(
        [(tid, cid, when, amount, 1, "books", "online", kind) for tid, cid, when, amount, kind in tx],
        contract_schema("transactions"),
    )
    expected = spark.createDataFrame(
        [
            ("A", SNAPSHOT, 10, 3, 35.0),
            ("B", SNAPSHOT, 181, 1, -15.0),
            ("C", SNAPSHOT, 0, 1, 7.0),
            ("D", SNAPSHOT, None, 0, 0.0),
            ("P", SNAPSHOT, None, 0, 0.0),
        ],
        "customer_id string, snapshot_date date, recency_days int, frequency long, monetary double",
    )
    assertDataFrameEqual(customer_features(customers, transactions, SNAPSHOT), expected)
