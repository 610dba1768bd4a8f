"""The input tables as frames of the input contract (segscale.contract): typed columns, missing optional columns
as typed nulls, and the original text of converted columns kept for the quarantine."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segscale.contract import CONTRACT
from segscale.errors import InputError

RAW_PREFIX = "_raw_"


@dataclass(frozen=True)
class InputTables:
    customers: DataFrame | None
    transactions: DataFrame
    interactions: DataFrame | None
    treatments: DataFrame | None = None


def conform(name: str, df: DataFrame, where: str) -> DataFrame:
    """Select the contract's columns with their types; missing required columns stop the run.

    A column converted from text keeps its original text in `RAW_PREFIX + name`, so a quarantined row can be
    shown as it arrived (`original_record`); `without_raw` drops these columns from clean rows.
    """
    present = set(df.columns)
    missing = [c.name for c in CONTRACT[name] if c.required and c.name not in present]
    if missing:
        raise InputError(f"input table {name} at {where} lacks required columns {missing} "
                         f"(it has {sorted(present)}); see docs/input-contract.md")
    converted = [c for c in CONTRACT[name] if c.name in present
                 and isinstance(df.schema[c.name].dataType, T.StringType) and c.data_type != T.StringType()]
    return df.select(
        *[
            _typed(F.col(c.name), df.schema[c.name].dataType, c.data_type).alias(c.name) if c.name in present
            else F.lit(None).cast(c.data_type).alias(c.name)
            for c in CONTRACT[name]
        ],
        *[F.col(c.name).alias(RAW_PREFIX + c.name) for c in converted],
    )


def original_record(df: DataFrame) -> Column:
    """The row as it arrived, as JSON text: original text for converted columns, values for the others."""
    raw = {c[len(RAW_PREFIX):] for c in df.columns if c.startswith(RAW_PREFIX)}
    fields = [F.col(RAW_PREFIX + c).alias(c) if c in raw else F.col(c)
              for c in df.columns if not c.startswith(RAW_PREFIX)]
    return F.to_json(F.struct(*fields), {"ignoreNullFields": "false"})


def without_raw(df: DataFrame) -> DataFrame:
    """The contract's columns only."""
    return df.select(*[c for c in df.columns if not c.startswith(RAW_PREFIX)])


def _typed(column: Column, source: T.DataType, target: T.DataType) -> Column:
    if source == target:
        return column
    if isinstance(source, T.StringType):
        # Unparseable text becomes null here; validation reports it.
        if isinstance(target, T.TimestampType):
            return F.try_to_timestamp(F.trim(column))
        if isinstance(target, T.DateType):
            return F.try_to_timestamp(F.trim(column)).cast(T.DateType())
        return F.trim(column).try_cast(target) if not isinstance(target, T.StringType) else column
    return column.cast(target)


