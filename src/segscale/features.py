"""Per-customer features as of a snapshot date (end of that day, UTC, inclusive).

One pass over transactions with conditional aggregation; every customer in `customers` gets a row, prospects
included (no purchase: frequency 0, monetary 0, recency null).
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

PURCHASE = "purchase"
RETURN = "return"


def snapshot_end(snapshot_date: dt.date) -> Column:
    """The first instant after the snapshot day: events strictly before it belong to the snapshot."""
    return F.lit(dt.datetime.combine(snapshot_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC))


def filter_as_of(events_df: DataFrame, snapshot_date: dt.date) -> DataFrame:
    """Keep the events on or before the snapshot date; later ones belong to later snapshots."""
    return events_df.where(F.col("ts") < snapshot_end(snapshot_date))


def customer_features(customers_df: DataFrame, transactions_df: DataFrame, snapshot_date: dt.date) -> DataFrame:
    """customer_id, snapshot_date, recency_days, frequency, monetary for every customer."""
    is_purchase = F.col("transaction_type") == PURCHASE
    is_return = F.col("transaction_type") == RETURN
    per_customer_df = (
        transactions_df.transform(filter_as_of, snapshot_date)
        .groupBy("customer_id")
        .agg(
            F.count(F.when(is_purchase, 1)).alias("frequency"),
            (F.sum(F.when(is_purchase, F.col("amount")).otherwise(0.0))
             - F.sum(F.when(is_return, F.col("amount")).otherwise(0.0))).alias("monetary"),
            F.max(F.when(is_purchase, F.to_date("ts"))).alias("last_purchase_date"),
        )
    )
    snapshot = F.lit(snapshot_date)
    return (
        customers_df.select("customer_id")
        .join(per_customer_df, "customer_id", how="left")
        .select(
            "customer_id",
            snapshot.alias("snapshot_date"),
            F.datediff(snapshot, F.col("last_purchase_date")).alias("recency_days"),
            F.coalesce(F.col("frequency"), F.lit(0)).cast("long").alias("frequency"),
            F.coalesce(F.col("monetary"), F.lit(0.0)).alias("monetary"),
        )
    )
