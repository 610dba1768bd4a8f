"""The input contract (docs/input-contract.md) as data: each input table's columns, their types and whether they
are required. The reader (segscale.io.inputs), validation and the config's column mappings all take it from here."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import types as T


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    data_type: T.DataType
    required: bool


CONTRACT: dict[str, tuple[ColumnSpec, ...]] = {
    "customers": (
        ColumnSpec("customer_id", T.StringType(), True),
        ColumnSpec("signup_date", T.DateType(), True),
        ColumnSpec("region", T.StringType(), False),
        ColumnSpec("city_tier", T.IntegerType(), False),
        ColumnSpec("channel", T.StringType(), False),
        ColumnSpec("birth_year", T.IntegerType(), False),
        ColumnSpec("gender", T.StringType(), False),
    ),
    "transactions": (
        ColumnSpec("transaction_id", T.StringType(), True),
        ColumnSpec("customer_id", T.StringType(), True),
        ColumnSpec("ts", T.TimestampType(), True),
        ColumnSpec("amount", T.DoubleType(), True),
        ColumnSpec("quantity", T.IntegerType(), False),
        ColumnSpec("category", T.StringType(), False),
        ColumnSpec("channel", T.StringType(), False),
        ColumnSpec("transaction_type", T.StringType(), True),
    ),
    "interactions": (
        ColumnSpec("interaction_id", T.StringType(), True),
        ColumnSpec("customer_id", T.StringType(), True),
        ColumnSpec("ts", T.TimestampType(), True),
        ColumnSpec("kind", T.StringType(), True),
        ColumnSpec("cost", T.DoubleType(), False),
        ColumnSpec("satisfaction", T.IntegerType(), False),
    ),
    # What was actually done for a retention plan (optional): one row per customer and touch; a row belongs to the
    # plan of `snapshot_date`, or, without one, to the latest plan on or before `treated_on`.
    "treatments": (
        ColumnSpec("customer_id", T.StringType(), True),
        ColumnSpec("snapshot_date", T.DateType(), False),
        ColumnSpec("treated_on", T.DateType(), False),
        ColumnSpec("treatment", T.StringType(), False),
        ColumnSpec("cost", T.DoubleType(), False),
    ),
}
