"""The Delta table layer: every read and write of a segscale table goes through this module.

Two writer backends stand behind one interface:

* ``delta-rs`` (embedded default): Spark executors write Parquet files straight into the table directory
  (``mapInArrow`` with pyarrow) and return only file metadata; the driver commits every file in one delta-rs
  transaction. No row of data passes through the driver.
* ``delta-spark`` (clusters with the Delta jars): ``df.write.format("delta")``.

Both write the same layout (Hive-style partition directories, partition columns kept out of the data files,
commit metadata in the commit's ``userMetadata``), so either reads what the other wrote.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, Field
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from segscale import __version__
from segscale.config import DeltaSettings
from segscale.errors import (
    STORAGE_REFUSALS,
    SchemaMismatchError,
    SegscaleError,
    StorageError,
    TableNotFoundError,
    WriteConflictError,
    WriteFailedError,
    describe_exception,
)
from segscale.session import has_delta_extension

log = logging.getLogger(__name__)

WriteMode = Literal["create", "append", "overwrite", "replace_partition"]
Backend = Literal["delta-rs", "delta-spark"]

# What each executor task returns per data file it wrote: metadata only, never rows.
_FILE_SCHEMA = T.StructType([
    T.StructField("path", T.StringType()),
    T.StructField("size", T.LongType()),
    T.StructField("partition_values", T.StringType()),
    T.StructField("modification_time", T.LongType()),
    T.StructField("num_records", T.LongType()),
    T.StructField("stats", T.StringType()),
])
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
_SAFE_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9_.\-]+$")
# Longer string min/max values are left out of file statistics instead of being truncated.
_MAX_STAT_STRING = 32


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
class TableVersion:
    version: int
    timestamp: dt.datetime
    operation: str
    metadata: Mapping[str, Any]


class DeltaStore:
    """Reads and writes Delta tables by URI with the chosen backend."""

    def __init__(self, spark: SparkSession | None, settings: DeltaSettings):
        # Without a session only the log-level operations work: exists, version, history, vacuum.
        self.spark = spark
        self.settings = settings
        self.backend: Backend = _choose_backend(spark, settings)

    # ---- reads -------------------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        return DeltaTable.is_deltatable(absolute_uri(uri))

    def version(self, uri: str) -> int:
        return open_table(absolute_uri(uri)).version()

    def read(self, uri: str, version: int | None = None,
             timestamp: str | dt.datetime | None = None) -> DataFrame:
        """The table's current version, or the given version / timestamp, as a Spark DataFrame."""
        uri = absolute_uri(uri)
        if self.backend == "delta-spark":
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            elif timestamp is not None:
                reader = reader.option("timestampAsOf", str(timestamp))
            return reader.load(uri)
        table = open_table(uri, version, timestamp)
        return _read_snapshot(self.spark, table, uri)

    def partition_values(self, uri: str, column: str) -> list[str]:
        """The values of a partition column present in the current version, from the log (no data read)."""
        return sorted({p[column] for p in open_table(absolute_uri(uri)).partitions() if p.get(column) is not None})

    def history(self, uri: str, limit: int | None = None) -> list[TableVersion]:
        return [
            TableVersion(
                version=entry["version"],
                timestamp=dt.datetime.fromtimestamp(entry["timestamp"] / 1000, tz=dt.UTC),
                operation=entry.get("operation", ""),
                metadata=_parse_user_metadata(entry.get("userMetadata")),
            )
            for entry in open_table(absolute_uri(uri)).history(limit)
        ]

    # ---- writes ------------------------------------------------------------------------------------------
    def write(self, uri: str, df: DataFrame, *, mode: WriteMode, meta: CommitMetadata,
              partition_by: Sequence[str] = (), replace: Mapping[str, Any] | None = None,
              added_columns: Sequence[str] = ()) -> WriteResult:
        """Write `df` as one commit. `replace_partition` replaces exactly the partition named in `replace`.
        `added_columns`: columns a newer segscale added to the table, which a table written by an older one
        gains (null in its earlier rows) whatever delta.allow_schema_evolution says."""
        uri = absolute_uri(uri)
        if replace and mode != "replace_partition":
            raise ValueError(f"`replace` only applies to mode replace_partition, not {mode}")
        if mode == "replace_partition" and not partition_by:
            partition_by = list(replace or {})
        if mode == "replace_partition" and (not replace or set(replace) != set(partition_by)):
            raise ValueError("replace_partition needs `replace` with a value for every partition column")
        table = _open_if_exists(uri)
        if table is not None and mode == "create":
            raise SegscaleError(f"table {uri} already exists (mode create)")
        df = _normalise_columns(df)
        new_columns: list[T.StructField] = []
        if table is not None:
            _check_partitioning(uri, table, partition_by)
            partition_by = table.metadata().partition_columns
            new_columns = _check_schema(uri, table, df.schema, self.settings.allow_schema_evolution, added_columns)
            table_columns = [f.name for f in _spark_schema(table).fields]
            df = df.select(*table_columns, *[f.name for f in new_columns])
        if self.backend == "delta-spark":
            return self._write_spark(uri, df, mode, meta, partition_by, replace, table, bool(new_columns))
        return self._write_rs(uri, df, mode, meta, list(partition_by), replace, table, new_columns)

    def _write_rs(self, uri: str, df: DataFrame, mode: WriteMode, meta: CommitMetadata,
                  partition_by: list[str], replace: Mapping[str, Any] | None, table: DeltaTable | None,
                  new_columns: list[T.StructField]) -> WriteResult:
        arrow_schema = to_arrow_schema(df.schema, timezone="UTC")
        write_id = uuid.uuid4().hex[:12]
        plan = _FilePlan(
            table_uri=uri,
            partition_by=tuple(partition_by),
            replace=tuple((c, _partition_string(replace[c])) for c in partition_by) if replace else (),
            write_id=write_id,
            max_rows_per_file=self.settings.max_rows_per_file,
            row_group_rows=self.settings.row_group_rows,
            compression=self.settings.compression,
        )
        previous = table.version() if table is not None else None
        try:
            writes_df = df.mapInArrow(functools.partial(_write_files, plan=plan), _FILE_SCHEMA)
            files = writes_df.collect()  # small: one metadata row per written file
        except Exception as exc:  # Spark wraps executor failures in several exception types
            state = f"unchanged at version {previous}" if previous is not None else "not created"
            _raise_if_storage_refused(exc, uri, state)
            raise WriteFailedError(
                f"writing {uri} failed before its commit, so the table is {state}; data files already written "
                f"by write {write_id} are invisible to readers and removed by `segscale vacuum`. "
                f"Cause: {describe_exception(exc)}"
            ) from exc
        adds = [
            AddAction(row.path, row.size, json.loads(row.partition_values), row.modification_time, True,
                      row.stats)
            for row in files
        ]
        schema = DeltaSchema.from_arrow(_nullable(arrow_schema))
        props = CommitProperties(custom_metadata={"userMetadata": meta.to_json()},
                                 max_commit_retries=self.settings.max_commit_retries)
        _before_commit(uri, write_id)
        try:
            if table is None:
                # No retry for a create: delta-rs would retry a lost race for version 0 as version 1, so
                # both writers' rows would land.
                create_props = CommitProperties(custom_metadata={"userMetadata": meta.to_json()},
                                                max_commit_retries=0)
                create_table_with_add_actions(uri, schema, adds, mode="error", partition_by=partition_by or None,
                                              commit_properties=create_props)
            else:
                if new_columns:
                    table.alter.add_columns([Field.from_json(json.dumps(f.jsonValue())) for f in new_columns])
                filters = [(c, "=", v) for c, v in plan.replace] if mode == "replace_partition" else None
                txn_mode = "append" if mode == "append" else "overwrite"
                table.create_write_transaction(adds, txn_mode, schema, partition_by=partition_by or None,
                                               partition_filters=filters, commit_properties=props)
        except (CommitFailedError, DeltaError, OSError) as exc:
            _raise_if_storage_refused(exc, uri, f"unchanged at version {previous}" if previous is not None
                                      else "not created")
            if table is None and (isinstance(exc, CommitFailedError) or DeltaTable.is_deltatable(uri)):
                # Lost the race for version 0 (at its commit, or at delta-rs' existence check before it).
                raise WriteConflictError(f"{uri} was created by another writer while this write ran; this "
                                         f"write's files were not committed. Re-run to retry.") from exc
            if not isinstance(exc, CommitFailedError):
                raise
            raise WriteConflictError(
                f"another writer changed {uri} while this write ran ({exc}); this write's files were not "
                f"committed and the table holds the other writer's version. Re-run to retry."
            ) from exc
        version = open_table(uri).version()
        rows = sum(row.num_records for row in files)
        log.info("committed %s version %d: %d files, %d rows (%s)", uri, version, len(adds), rows, meta.stage)
        return WriteResult(version=version, files=len(adds), rows=rows)

    def _write_spark(self, uri: str, df: DataFrame, mode: WriteMode, meta: CommitMetadata,
                     partition_by: Sequence[str], replace: Mapping[str, Any] | None,
                     table: DeltaTable | None, adds_columns: bool) -> WriteResult:
        writer = df.write.format("delta").option("userMetadata", meta.to_json())
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if adds_columns:
            writer = writer.option("mergeSchema", "true")
        if mode == "create":
            writer = writer.mode("errorifexists")
        elif mode == "append":
            writer = writer.mode("append")
        else:
            writer = writer.mode("overwrite")
            if mode == "replace_partition" and table is not None:
                condition = " AND ".join(f"{c} = '{_partition_string(v)}'" for c, v in (replace or {}).items())
                writer = writer.option("replaceWhere", condition)
        previous = table.version() if table is not None else None
        try:
            writer.save(uri)
        except Exception as exc:
            if "ConcurrentModification" in str(exc) or "ConcurrentAppend" in str(exc):
                raise WriteConflictError(f"another writer changed {uri} while this write ran: "
                                         f"{describe_exception(exc)}") from exc
            state = f"unchanged at version {previous}" if previous is not None else "not created"
            raise WriteFailedError(f"writing {uri} failed, so the table is {state}. Cause: {describe_exception(exc)}") \
                from exc
        version = open_table(uri).version()
        log.info("committed %s version %d (%s, delta-spark)", uri, version, meta.stage)
        return WriteResult(version=version, files=-1, rows=-1)

    # ---- maintenance -------------------------------------------------------------------------------------
    def vacuum(self, uri: str, retention_hours: float | None = None, dry_run: bool = False) -> list[str]:
        """Delete data files no version within the retention window needs, including orphans of failed writes."""
        hours = self.settings.vacuum_retention_hours if retention_hours is None else retention_hours
        table = open_table(absolute_uri(uri))
        # full=True also lists files never committed (those of failed writes), not only removed ones; the
        # retention window protects files that an in-flight write has not committed yet.
        return table.vacuum(retention_hours=math.ceil(hours), dry_run=dry_run, enforce_retention_duration=False,
                            full=True)


class Warehouse:
    """The segscale tables under one root directory, addressed by name."""

    def __init__(self, spark: SparkSession | None, root: str, settings: DeltaSettings):
        self.root = absolute_uri(root)
        self.store = DeltaStore(spark, settings)

    def uri(self, name: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise SegscaleError(f"{name!r} is not a segscale table name")
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return self.store.exists(self.uri(name))

    def read(self, name: str, version: int | None = None,
             timestamp: str | dt.datetime | None = None) -> DataFrame:
        return self.store.read(self.uri(name), version, timestamp)

    def write(self, name: str, df: DataFrame, **kwargs: Any) -> WriteResult:
        return self.store.write(self.uri(name), df, **kwargs)

    def history(self, name: str, limit: int | None = None) -> list[TableVersion]:
        return self.store.history(self.uri(name), limit)

    def partition_values(self, name: str, column: str) -> list[str]:
        return self.store.partition_values(self.uri(name), column)

    def vacuum(self, name: str, retention_hours: float | None = None, dry_run: bool = False) -> list[str]:
        return self.store.vacuum(self.uri(name), retention_hours, dry_run)


def absolute_uri(location: str) -> str:
    """A URI every executor resolves the same way: local paths become absolute, URIs stay as they are."""
    if "://" in location:
        return location.rstrip("/")
    return os.path.abspath(location)


# ---- backend choice, opening, reading -----------------------------------------------------------------------
def _choose_backend(spark: SparkSession | None, settings: DeltaSettings) -> Backend:
    if settings.backend != "auto":
        return settings.backend
    return "delta-spark" if spark is not None and has_delta_extension(spark) else "delta-rs"


def open_table(uri: str, version: int | None = None, timestamp: str | dt.datetime | None = None) -> DeltaTable:
    try:
        table = DeltaTable(uri, version=version)
    except DeltaTableNotFound:
        raise TableNotFoundError(f"no Delta table at {uri}") from None
    except Exception as exc:  # delta-rs reports a missing version as a generic error
        raise TableNotFoundError(f"cannot open version {version} of {uri}: {exc}") from None
    if timestamp is not None:
        try:
            table.load_as_version(timestamp)
        except Exception as exc:
            raise TableNotFoundError(f"{uri} has no version as of {timestamp}: {exc}") from None
    return table


def _open_if_exists(uri: str) -> DeltaTable | None:
    return open_table(uri) if DeltaTable.is_deltatable(uri) else None


def _spark_schema(table: DeltaTable) -> T.StructType:
    # A Delta schema is serialised in Spark's own StructType JSON format.
    return T.StructType.fromJson(json.loads(table.schema().to_json()))


def _read_snapshot(spark: SparkSession, table: DeltaTable, uri: str) -> DataFrame:
    protocol = table.protocol()
    features = set(protocol.reader_features or [])
    if protocol.min_reader_version > 1 and features - {"timestampNtz"}:
        raise SegscaleError(
            f"{uri} uses Delta reader features {sorted(features)} that the delta-rs path cannot read into "
            f"Spark; use delta.backend: delta-spark"
        )
    schema = _spark_schema(table)
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


# ---- schema checks ------------------------------------------------------------------------------------------
def _normalise_columns(df: DataFrame) -> DataFrame:
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


def _check_schema(uri: str, table: DeltaTable, frame: T.StructType, allow_evolution: bool,
                  added_columns: Sequence[str] = ()) -> list[T.StructField]:
    """Raise unless `frame` matches the table; return the columns to add (any new ones when evolution is allowed,
    else only `added_columns`)."""
    existing = {f.name: f for f in _spark_schema(table).fields}
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


def _check_partitioning(uri: str, table: DeltaTable, partition_by: Sequence[str]) -> None:
    existing = table.metadata().partition_columns
    if partition_by and list(partition_by) != list(existing):
        raise SchemaMismatchError(f"table {uri} is partitioned by {existing}, not {list(partition_by)}")


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


# ---- executor side ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _FilePlan:
    """Everything an executor task needs to write its files; small and picklable."""

    table_uri: str
    partition_by: tuple[str, ...]
    replace: tuple[tuple[str, str | None], ...]
    write_id: str
    max_rows_per_file: int
    row_group_rows: int
    compression: str


def _write_files(batches: Iterator[pa.RecordBatch], plan: _FilePlan) -> Iterator[pa.RecordBatch]:
    """Executor task: write the task's rows as Parquet files; yield one metadata row per file."""
    from pyspark import TaskContext

    context = TaskContext.get()
    task = f"{context.partitionId():05d}-{context.attemptNumber()}" if context else "00000-0"
    fs, root = pafs.FileSystem.from_uri(plan.table_uri)
    open_files: dict[tuple[str | None, ...], _DataFile] = {}
    done: list[dict[str, Any]] = []
    expected = tuple(v for _, v in plan.replace)
    sequence = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        for key, part in _split_by_partition(batch, plan.partition_by):
            if plan.replace and key != expected:
                raise ValueError(
                    f"row with {dict(zip(plan.partition_by, key, strict=True))} in a write that replaces "
                    f"{dict(plan.replace)}"
                )
            current = open_files.get(key)
            if current is None:
                sequence += 1
                rel = _partition_dir(plan.partition_by, key) + (
                    f"part-{task}-{plan.write_id}-{sequence:04d}.{plan.compression}.parquet")
                current = open_files[key] = _DataFile(fs, root, rel, part.schema, plan, key)
            current.write(part)
            if current.rows >= plan.max_rows_per_file:
                done.append(current.close())
                del open_files[key]
    done.extend(f.close() for f in open_files.values())
    if done:
        yield pa.RecordBatch.from_pylist(done, schema=to_arrow_schema(_FILE_SCHEMA))


def _split_by_partition(batch: pa.RecordBatch, columns: tuple[str, ...]
                        ) -> Iterator[tuple[tuple[str | None, ...], pa.RecordBatch]]:
    data_columns = [n for n in batch.schema.names if n not in columns]
    if not columns:
        yield (), batch
        return
    keys = pa.Table.from_batches([batch.select(list(columns))]).group_by(list(columns)).aggregate([])
    for key_row in keys.to_pylist():
        mask = None
        for column in columns:
            value = key_row[column]
            cond = pc.is_null(batch[column]) if value is None else pc.equal(batch[column], value)
            mask = cond if mask is None else pc.and_(mask, cond)
        key = tuple(_partition_string(key_row[c]) for c in columns)
        yield key, batch.filter(mask).select(data_columns)


def _partition_string(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        raise ValueError("timestamp partition columns are not supported; partition by a date")
    text = value.isoformat() if isinstance(value, dt.date) else str(value)
    if not _SAFE_PARTITION_VALUE.match(text):
        raise ValueError(f"partition value {text!r} must match {_SAFE_PARTITION_VALUE.pattern}")
    return text


def _partition_dir(columns: tuple[str, ...], key: tuple[str | None, ...]) -> str:
    return "".join(f"{c}={_NULL_PARTITION if v is None else v}/" for c, v in zip(columns, key, strict=True))


class _DataFile:
    """One Parquet file being written by a task, with the Delta statistics of what it holds."""

    def __init__(self, fs: pafs.FileSystem, root: str, rel_path: str, schema: pa.Schema, plan: _FilePlan,
                 key: tuple[str | None, ...]):
        self.fs, self.full_path, self.rel_path = fs, f"{root.rstrip('/')}/{rel_path}", rel_path
        self.partition_values = dict(zip(plan.partition_by, key, strict=True))
        self.row_group_rows = plan.row_group_rows
        self.schema = schema
        fs.create_dir(self.full_path.rsplit("/", 1)[0], recursive=True)
        self.writer = pq.ParquetWriter(self.full_path, schema, filesystem=fs,
                                       compression=None if plan.compression == "none" else plan.compression)
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.rows = 0
        self.stats = _FileStats(schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.rows += batch.num_rows
        self.stats.update(batch)
        if self.pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        # Spark hands over small Arrow batches; gather them so each Parquet row group is a useful size.
        if self.pending:
            self.writer.write_table(pa.Table.from_batches(self.pending, self.schema),
                                    row_group_size=self.pending_rows)
            self.pending, self.pending_rows = [], 0

    def close(self) -> dict[str, Any]:
        self._flush()
        self.writer.close()
        info = self.fs.get_file_info(self.full_path)
        return {
            "path": self.rel_path,
            "size": info.size,
            "partition_values": json.dumps(self.partition_values),
            "modification_time": int(time.time() * 1000),
            "num_records": self.rows,
            "stats": self.stats.to_json(self.rows),
        }


class _FileStats:
    """Running per-column min, max and null count, in the Delta log's statistics format."""

    def __init__(self, schema: pa.Schema):
        self.columns = [f for f in schema if _stat_kind(f.type) is not None or not pa.types.is_nested(f.type)]
        self.minimum: dict[str, Any] = {}
        self.maximum: dict[str, Any] = {}
        self.null_count: dict[str, int] = {f.name: 0 for f in self.columns}
        self.no_min_max: set[str] = set()

    def update(self, batch: pa.RecordBatch) -> None:
        for f in self.columns:
            column = batch[f.name]
            self.null_count[f.name] += column.null_count
            if _stat_kind(f.type) is None or f.name in self.no_min_max:
                continue
            if pa.types.is_floating(f.type):
                column = pc.filter(column, pc.is_finite(column))
            low, high = pc.min_max(column).values()
            low, high = low.as_py(), high.as_py()
            if low is None:
                continue
            if isinstance(low, str) and max(len(low), len(high)) > _MAX_STAT_STRING:
                self.no_min_max.add(f.name)
                continue
            self.minimum[f.name] = low if f.name not in self.minimum else min(self.minimum[f.name], low)
            self.maximum[f.name] = high if f.name not in self.maximum else max(self.maximum[f.name], high)

    def to_json(self, rows: int) -> str:
        keep = [n for n in self.minimum if n not in self.no_min_max]
        return json.dumps({
            "numRecords": rows,
            "minValues": {n: _stat_value(self.minimum[n], round_up=False) for n in keep},
            "maxValues": {n: _stat_value(self.maximum[n], round_up=True) for n in keep},
            "nullCount": self.null_count,
        })


def _stat_kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "number"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type):
        return "time"
    return None


def _stat_value(value: Any, round_up: bool) -> Any:
    if isinstance(value, dt.datetime):
        # Delta statistics hold milliseconds: round the maximum up so the bound still holds.
        value = value.astimezone(dt.UTC)
        if round_up and value.microsecond % 1000:
            value += dt.timedelta(microseconds=1000 - value.microsecond % 1000)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _raise_if_storage_refused(exc: BaseException, uri: str, state: str) -> None:
    """StorageError (exit 3) when the storage itself refused the write: full, read-only, or no permission."""
    cause = describe_exception(exc)
    if STORAGE_REFUSALS.search(cause) or STORAGE_REFUSALS.search(str(exc)):
        raise StorageError(f"the warehouse storage refused the write to {uri}, so the table is {state}: {cause}. "
                           f"Free space or fix the permissions, then re-run; `segscale vacuum` removes files the "
                           f"failed write left behind") from exc


def _before_commit(uri: str, write_id: str) -> None:
    """A seam between the data files' write and the commit: tests replace it to inject faults and races."""
