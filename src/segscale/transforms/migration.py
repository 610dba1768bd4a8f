"""Migration between snapshots: how many customers moved from each (value tier, lifecycle stage) to each other."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def segment_migration(previous_df: DataFrame, current_df: DataFrame, previous_date: dt.date,
                      snapshot_date: dt.date, run_id: str) -> DataFrame:
    """Customers moving from each (value_tier, lifecycle_stage) of the previous snapshot to each of this one.
    Customers new since the previous snapshot come from null; customers gone from it go to null."""
    before_df = previous_df.select("customer_id", F.col("value_tier").alias("from_value_tier"),
                                   F.col("lifecycle_stage").alias("from_lifecycle_stage"))
    after_df = current_df.select("customer_id", F.col("value_tier").alias("to_value_tier"),
                                 F.col("lifecycle_stage").alias("to_lifecycle_stage"))
    return (
        before_df.join(after_df, "customer_id", how="full_outer")
        .groupBy("from_value_tier", "from_lifecycle_stage", "to_value_tier", "to_lifecycle_stage")
        .agg(F.count(F.lit(1)).alias("customers"))
        .select(
            F.lit(snapshot_date).alias("snapshot_date"),
            F.lit(previous_date).alias("previous_snapshot_date"),
            "from_value_tier", "from_lifecycle_stage", "to_value_tier", "to_lifecycle_stage",
            "customers",
            F.lit(run_id).alias("run_id"),
        )
    )


