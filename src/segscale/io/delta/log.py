"""What a segscale Delta table is on storage: opening a version, its log (history, partitions, user metadata),
its layout (Hive-style partition directories) and the schema checks every write passes before a file is written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from segscale import __version__
from segscale.errors import SchemaMismatchError, SegscaleError, TableNotFoundError, raise_if_storage_unreachable

WriteMode = Literal["create", "append", "overwrite", "replace_partition"]
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
SAFE_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9_.\-]+$")
# Every segscale table has this protocol (reader, writer) and these properties, whichever backend created it: no
# table features, deletion vectors off even where a platform enables them by default, so delta-rs, delta-spark,
# DuckDB and Polars all read, and both backends write, every table (docs/tables.md, "One protocol").
PINNED_PROTOCOL = (1, 2)
TABLE_PROPERTIES = {"delta.enableDeletionVectors": "false"}


@dataclass(frozen=True)
class CommitMetadata:
    """What every commit records about the run that made it (stored as the commit's userMetadata)."""

    run_id: str
    stage: str
    config_hash: str
    snapshot_date: str | None = None
    model_version: str | None = None
    package_version: str = __version__
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, {})}, sort_keys=True,
                          default=str)


@dataclass(frozen=True)
class WriteResult:
    version: int
    files: int
    rows: int


@dataclass(frozen=True)
class Optimized:
    """What a compaction or clustering did: the version it left (unchanged when there was nothing to do)."""

    version: int
    files_added: int
    files_removed: int


@dataclass(frozen=True)
class TableVersion:
    version: int
    timestamp: dt.datetime
    operation: str
    metadata: Mapping[str, Any]



def absolute_uri(location: str) -> str:
    """A URI every executor resolves the same way: local paths become absolute, URIs stay as they are."""
    if "://" in location:
        return location.rstrip("/")
    return os.path.abspath(location)




def open_table(uri: str, version: int | None = None, timestamp: str | dt.datetime | None = None) -> DeltaTable:
    """The table at `uri` (at `version`, or as of `timestamp`). TableNotFoundError when there is no such table or
    version; StorageError (exit 3) when the storage refused the read or could not be reached."""
    try:
        table = DeltaTable(uri, version=version)
    except DeltaTableNotFound as exc:  # also a local path delta-rs may not read
        raise_if_storage_unreachable(exc, uri)
        raise TableNotFoundError(f"no Delta table at {uri}") from None
    except Exception as exc:  # delta-rs reports a missing version as a generic error
        raise_if_storage_unreachable(exc, uri)
        raise TableNotFoundError(f"cannot open version {version} of {uri}: {exc}") from None
    if timestamp is not None:
        try:
            table.load_as_version(timestamp)
        except Exception as exc:
            raise_if_storage_unreachable(exc, uri)
            raise TableNotFoundError(f"{uri} has no version as of {timestamp}: {exc}") from None
    return table


def is_table(uri: str) -> bool:
    """Whether a Delta table is at `uri`; StorageError (exit 3) when the storage refused or could not be reached."""
    try:
        return DeltaTable.is_deltatable(uri)
    except OSError as exc:
        raise_if_storage_unreachable(exc, uri)
        raise


def open_if_exists(uri: str) -> DeltaTable | None:
    return open_table(uri) if is_table(uri) else None


def spark_schema(table: DeltaTable) -> T.StructType:
    # A Delta schema is serialised in Spark's own StructType JSON format.
    return T.StructType.fromJson(json.loads(table.schema().to_json()))


def read_snapshot(spark: SparkSession, table: DeltaTable, uri: str) -> DataFrame:
    protocol = table.protocol()
    features = set(protocol.reader_features or [])
    if protocol.min_reader_version > 1 and features - {"timestampNtz"}:
        raise SegscaleError(
            f"{uri} uses Delta reader features {sorted(features)} that the delta-rs path cannot read into "
            f"Spark; use delta.backend: delta-spark"
        )
    schema = spark_schema(table)
    files = table.file_uris()
    if not files:
        return spark.createDataFrame([], schema)
    # Files sit in Hive-style partition directories, so Spark recovers partition values from their paths.
    df = spark.read.schema(schema).option("basePath", table.table_uri).parquet(*files)
    return df.select(*schema.fieldNames())


def _parse_user_metadata(raw: Any) -> Mapping[str, Any]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except (TypeError, ValueError):
        return {"userMetadata": raw}
    return parsed if isinstance(parsed, dict) else {"userMetadata": raw}




def history(uri: str, limit: int | None = None) -> list[TableVersion]:
    """The newest `limit` versions (all by default) with the run metadata of their commits."""
    return [
        TableVersion(
            version=entry["version"],
            timestamp=dt.datetime.fromtimestamp(entry["timestamp"] / 1000, tz=dt.UTC),
            operation=entry.get("operation", ""),
            metadata=_parse_user_metadata(entry.get("userMetadata")),
        )
        for entry in open_table(absolute_uri(uri)).history(limit)
    ]



def partition_values(uri: str, column: str) -> list[str]:
    """The values of a partition column present in the current version, from the log (no data read)."""
    return sorted({p[column] for p in open_table(absolute_uri(uri)).partitions() if p.get(column) is not None})


def partitions_added_since(uri: str, version: int, column: str) -> list[str] | None:
    """The values of partition `column` holding a data file the current version has and `version` had not (from
    the log alone), or None when `version` can no longer be loaded (its log entries expired)."""
    current = open_table(uri)
    try:
        before = open_table(uri, version)
    except TableNotFoundError:
        return None
    known = set(pa.table(before.get_add_actions()).column("path").to_pylist())
    added = pa.table(current.get_add_actions(flatten=True)).select(["path", f"partition.{column}"]).to_pylist()
    return sorted({str(row[f"partition.{column}"]) for row in added if row["path"] not in known})


def file_count(uri: str) -> int:
    """The number of data files in the current version."""
    return len(open_table(uri).file_uris())


def checkpoint(uri: str) -> int:
    """Write a checkpoint of the current version (readers then replay the log from it); returns that version. A
    classic Parquet checkpoint, which every Delta reader of the pinned protocol reads."""
    table = open_table(uri)
    table.create_checkpoint()
    return table.version()


# ---- schema checks ------------------------------------------------------------------------------------------
def normalise_columns(df: DataFrame) -> DataFrame:
    names = df.columns
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SchemaMismatchError(f"the frame has duplicate columns {duplicates}")
    bad_ntz = [f.name for f in df.schema.fields if isinstance(f.dataType, T.TimestampNTZType)]
    if bad_ntz:
        raise SchemaMismatchError(f"columns {bad_ntz} are timestamps without time zone; segscale tables "
                                  f"store UTC timestamps (cast them to timestamp)")
    return df


def _type_key(data_type: T.DataType) -> str:
    """A type's identity, ignoring nullability (tables accept nulls in every column)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("nullable", "metadata",
                                                                          "containsNull",
                                                                          "valueContainsNull")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return json.dumps(strip(data_type.jsonValue()), sort_keys=True)


def check_schema(uri: str, table: DeltaTable, frame: T.StructType, allow_evolution: bool,
                  added_columns: Sequence[str] = ()) -> list[T.StructField]:
    """Raise unless `frame` matches the table; return the columns to add (any new ones when evolution is allowed,
    else only `added_columns`)."""
    existing = {f.name: f for f in spark_schema(table).fields}
    incoming = {f.name: f for f in frame.fields}
    missing = [n for n in existing if n not in incoming]
    extra = [incoming[n] for n in incoming if n not in existing]
    allow_evolution = allow_evolution or all(f.name in added_columns for f in extra)
    retyped = [
        f"{n} (table: {existing[n].dataType.simpleString()}, frame: {incoming[n].dataType.simpleString()})"
        for n in existing if n in incoming and _type_key(existing[n].dataType) != _type_key(incoming[n].dataType)
    ]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if retyped:
        problems.append(f"columns with other types: {', '.join(retyped)}")
    if extra and not allow_evolution:
        problems.append(f"new columns {[f.name for f in extra]} (set delta.allow_schema_evolution: true to add "
                        f"them)")
    if problems:
        raise SchemaMismatchError(f"schema of the frame does not match table {uri}: {'; '.join(problems)}. "
                                  f"Nothing was written.")
    return extra


def check_partitioning(uri: str, table: DeltaTable, partition_by: Sequence[str]) -> None:
    existing = table.metadata().partition_columns
    if partition_by and list(partition_by) != list(existing):
        raise SchemaMismatchError(f"table {uri} is partitioned by {existing}, not {list(partition_by)}")



def partition_string(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        raise ValueError("timestamp partition columns are not supported; partition by a date")
    text = value.isoformat() if isinstance(value, dt.date) else str(value)
    if not SAFE_PARTITION_VALUE.match(text):
        raise ValueError(f"partition value {text!r} must match {SAFE_PARTITION_VALUE.pattern}")
    return text


def in_condition(values: Mapping[str, Sequence[Any]]) -> str:
    """`column IN ('a', 'b') AND ...`, an SQL condition on partition columns that Spark and delta-rs both take
    (each value checked by `partition_string`)."""
    return " AND ".join(f"{column} IN ({', '.join(repr(partition_string(v)) for v in vs)})"
                        for column, vs in values.items())


def partition_dir(columns: tuple[str, ...], key: tuple[str | None, ...]) -> str:
    return "".join(f"{c}={NULL_PARTITION if v is None else v}/" for c, v in zip(columns, key, strict=True))


