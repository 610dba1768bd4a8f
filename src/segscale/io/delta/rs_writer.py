"""The embedded writer (delta-rs): Spark executors write Parquet files straight into the table directory
(``mapInArrow`` with pyarrow) and return only file metadata; the driver commits every file in one delta-rs
transaction. No row of data passes through the driver."""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, Field, WriterProperties
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions
from pyspark.sql import DataFrame
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from segscale.config import DeltaSettings
from segscale.errors import WriteConflictError, WriteFailedError, describe_exception, raise_if_storage_refused
from segscale.io.delta.log import (
    TABLE_PROPERTIES,
    CommitMetadata,
    Optimized,
    WriteMode,
    WriteResult,
    open_table,
    partition_dir,
    partition_string,
)
from segscale.io.delta.stats import FileStats

log = logging.getLogger(__name__)
# delta-rs' names of the codecs `delta.compression` offers.
_PARQUET_CODECS = {"snappy": "SNAPPY", "zstd": "ZSTD", "gzip": "GZIP", "none": "UNCOMPRESSED"}

# What each executor task returns per data file it wrote: metadata only, never rows.
FILE_SCHEMA = T.StructType([
    T.StructField("path", T.StringType()),
    T.StructField("size", T.LongType()),
    T.StructField("partition_values", T.StringType()),
    T.StructField("modification_time", T.LongType()),
    T.StructField("num_records", T.LongType()),
    T.StructField("stats", T.StringType()),
])


def write(uri: str, df: DataFrame, mode: WriteMode, meta: CommitMetadata, partition_by: list[str],
          replace: Mapping[str, Any] | None, table: DeltaTable | None, new_columns: list[T.StructField],
          settings: DeltaSettings) -> WriteResult:
    """Write `df` into the table at `uri` as one delta-rs commit (the table and its new columns are checked)."""
    arrow_schema = to_arrow_schema(df.schema, timezone="UTC")
    write_id = uuid.uuid4().hex[:12]
    plan = FilePlan(
        table_uri=uri,
        partition_by=tuple(partition_by),
        replace=tuple((c, partition_string(replace[c])) for c in partition_by) if replace else (),
        write_id=write_id,
        max_rows_per_file=settings.max_rows_per_file,
        row_group_rows=settings.row_group_rows,
        compression=settings.compression,
    )
    previous = table.version() if table is not None else None
    try:
        writes_df = df.mapInArrow(functools.partial(write_files, plan=plan), FILE_SCHEMA)
        files = writes_df.collect()  # small: one metadata row per written file
    except Exception as exc:  # Spark wraps executor failures in several exception types
        state = f"unchanged at version {previous}" if previous is not None else "not created"
        raise_if_storage_refused(exc, uri, state)
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
    schema = DeltaSchema.from_arrow(nullable(arrow_schema))
    props = _commit_properties(meta, settings.max_commit_retries)
    before_commit(uri, write_id)
    try:
        if table is None:
            # No retry for a create: delta-rs would retry a lost race for version 0 as version 1, so
            # both writers' rows would land.
            create_props = _commit_properties(meta, max_commit_retries=0)
            create_table_with_add_actions(uri, schema, adds, mode="error", partition_by=partition_by or None,
                                          configuration=TABLE_PROPERTIES, commit_properties=create_props)
        else:
            if new_columns:
                table.alter.add_columns([Field.from_json(json.dumps(f.jsonValue())) for f in new_columns])
            filters = [(c, "=", v) for c, v in plan.replace] if mode == "replace_partition" else None
            txn_mode = "append" if mode == "append" else "overwrite"
            table.create_write_transaction(adds, txn_mode, schema, partition_by=partition_by or None,
                                           partition_filters=filters, commit_properties=props)
    except (CommitFailedError, DeltaError, OSError) as exc:
        raise_if_storage_refused(exc, uri, f"unchanged at version {previous}" if previous is not None
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


def nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


# ---- executor side ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FilePlan:
    """Everything an executor task needs to write its files; small and picklable."""

    table_uri: str
    partition_by: tuple[str, ...]
    replace: tuple[tuple[str, str | None], ...]
    write_id: str
    max_rows_per_file: int
    row_group_rows: int
    compression: str


def write_files(batches: Iterator[pa.RecordBatch], plan: FilePlan) -> Iterator[pa.RecordBatch]:
    """Executor task: write the task's rows as Parquet files; yield one metadata row per file."""
    from pyspark import TaskContext

    context = TaskContext.get()
    task = f"{context.partitionId():05d}-{context.attemptNumber()}" if context else "00000-0"
    fs, root = pafs.FileSystem.from_uri(plan.table_uri)
    open_files: dict[tuple[str | None, ...], DataFile] = {}
    done: list[dict[str, Any]] = []
    expected = tuple(v for _, v in plan.replace)
    sequence = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        for key, part in split_by_partition(batch, plan.partition_by):
            if plan.replace and key != expected:
                raise ValueError(
                    f"row with {dict(zip(plan.partition_by, key, strict=True))} in a write that replaces "
                    f"{dict(plan.replace)}"
                )
            current = open_files.get(key)
            if current is None:
                sequence += 1
                rel = partition_dir(plan.partition_by, key) + (
                    f"part-{task}-{plan.write_id}-{sequence:04d}.{plan.compression}.parquet")
                current = open_files[key] = DataFile(fs, root, rel, part.schema, plan, key)
            current.write(part)
            if current.rows >= plan.max_rows_per_file:
                done.append(current.close())
                del open_files[key]
    done.extend(f.close() for f in open_files.values())
    if done:
        yield pa.RecordBatch.from_pylist(done, schema=to_arrow_schema(FILE_SCHEMA))


def split_by_partition(batch: pa.RecordBatch, columns: tuple[str, ...]
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
        key = tuple(partition_string(key_row[c]) for c in columns)
        yield key, batch.filter(mask).select(data_columns)


class DataFile:
    """One Parquet file being written by a task, with the Delta statistics of what it holds."""

    def __init__(self, fs: pafs.FileSystem, root: str, rel_path: str, schema: pa.Schema, plan: FilePlan,
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
        self.stats = FileStats(schema)

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


def before_commit(uri: str, write_id: str) -> None:
    """A seam between the data files' write and the commit: tests replace it to inject faults and races."""


# ---- maintenance -------------------------------------------------------------------------------------------------
def optimize(table: DeltaTable, meta: CommitMetadata, cluster_by: Sequence[str],
             only: Mapping[str, Sequence[str]] | None, target_bytes: int, settings: DeltaSettings) -> Optimized:
    """Compact the table's small files into files of about `target_bytes`, or Z-order them by `cluster_by`, in the
    partitions `only` names (all when None), as one commit (none when there is nothing to do)."""
    options: dict[str, Any] = {
        "target_size": target_bytes,
        "writer_properties": WriterProperties(compression=_PARQUET_CODECS[settings.compression],
                                              max_row_group_size=settings.row_group_rows),
        "commit_properties": _commit_properties(meta),
    }
    if only is not None:
        options["partition_filters"] = [(column, "in", list(values)) for column, values in only.items()]
    metrics = table.optimize.z_order(list(cluster_by), **options) if cluster_by else table.optimize.compact(**options)
    return Optimized(table.version(), metrics["numFilesAdded"], metrics["numFilesRemoved"])


def delete(table: DeltaTable, predicate: str, meta: CommitMetadata) -> int:
    """Delete the rows `predicate` (an SQL condition on partition columns) selects, as one commit: whole files are
    removed from the log, none rewritten. Returns the version."""
    table.delete(predicate, commit_properties=_commit_properties(meta))
    return table.version()


def _commit_properties(meta: CommitMetadata, max_commit_retries: int | None = None) -> CommitProperties:
    return CommitProperties(custom_metadata={"userMetadata": meta.to_json()}, max_commit_retries=max_commit_retries)
