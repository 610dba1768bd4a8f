"""The cluster writer (delta-spark): ``df.write.format("delta")`` with the commit metadata as userMetadata."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from delta.tables import DeltaTable as SparkDeltaTable
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from segscale.errors import WriteConflictError, WriteFailedError, describe_exception, raise_if_storage_refused
from segscale.io.delta.log import (
    PINNED_PROTOCOL,
    TABLE_PROPERTIES,
    CommitMetadata,
    Optimized,
    WriteMode,
    WriteResult,
    in_condition,
    open_table,
    partition_string,
)

log = logging.getLogger(__name__)


def write(uri: str, df: DataFrame, mode: WriteMode, meta: CommitMetadata, partition_by: Sequence[str],
          replace: Mapping[str, Any] | None, table: DeltaTable | None, adds_columns: bool) -> WriteResult:
    """Write `df` into the table at `uri` through Spark's Delta data source, as one commit."""
    writer = df.write.format("delta").option("userMetadata", meta.to_json())
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if adds_columns:
        writer = writer.option("mergeSchema", "true")
    if table is None:
        # A new table gets the protocol both backends read and write, whatever the platform's defaults enable.
        reader, writer_version = PINNED_PROTOCOL
        writer = writer.options(**TABLE_PROPERTIES, **{"delta.minReaderVersion": str(reader),
                                                       "delta.minWriterVersion": str(writer_version)})
    if mode == "create":
        writer = writer.mode("errorifexists")
    elif mode == "append":
        writer = writer.mode("append")
    else:
        writer = writer.mode("overwrite")
        if mode == "replace_partition" and table is not None:
            condition = " AND ".join(f"{c} = '{partition_string(v)}'" for c, v in (replace or {}).items())
            writer = writer.option("replaceWhere", condition)
    previous = table.version() if table is not None else None
    state = f"unchanged at version {previous}" if previous is not None else "not created"
    try:
        writer.save(uri)
    except Exception as exc:
        cause = describe_exception(exc)
        raise_if_storage_refused(exc, uri, state)
        if "ConcurrentModification" in cause or "ConcurrentAppend" in cause or "ConcurrentWrite" in cause:
            raise WriteConflictError(f"another writer changed {uri} while this write ran: {cause}") from exc
        if "DELTA_REPLACE_WHERE_MISMATCH" in cause:
            cause = f"a row outside {dict(replace or {})} in a write that replaces {dict(replace or {})} ({cause})"
        raise WriteFailedError(f"writing {uri} failed, so the table is {state}. Cause: {cause}") from exc
    committed = open_table(uri)
    metrics = committed.history(1)[0].get("operationMetrics") or {}
    rows, files = int(metrics.get("numOutputRows", 0)), int(metrics.get("numFiles", 0))
    log.info("committed %s version %d: %d files, %d rows (%s, delta-spark)", uri, committed.version(), files, rows,
             meta.stage)
    return WriteResult(version=committed.version(), files=files, rows=rows)


# ---- maintenance -------------------------------------------------------------------------------------------------
def optimize(spark: SparkSession, uri: str, meta: CommitMetadata, cluster_by: Sequence[str],
             only: Mapping[str, Sequence[str]] | None, target_bytes: int) -> Optimized:
    """Delta's OPTIMIZE: compaction into files of about `target_bytes`, or ZORDER BY `cluster_by`, in the
    partitions `only` names (all when None), as one commit (none when there is nothing to do)."""
    builder = SparkDeltaTable.forPath(spark, uri).optimize()
    if only is not None:
        builder = builder.where(in_condition(only))
    with _session_settings(spark, meta, **{"spark.databricks.delta.optimize.maxFileSize": str(target_bytes)}):
        result = builder.executeZOrderBy(*cluster_by) if cluster_by else builder.executeCompaction()
        metrics = result.select("metrics.numFilesAdded", "metrics.numFilesRemoved").first()  # small: one row
    return Optimized(open_table(uri).version(), metrics.numFilesAdded, metrics.numFilesRemoved)


def delete(spark: SparkSession, uri: str, predicate: str, meta: CommitMetadata) -> int:
    """Delta's DELETE of the rows `predicate` (on partition columns) selects, as one commit that removes whole
    files. Returns the version."""
    with _session_settings(spark, meta):
        SparkDeltaTable.forPath(spark, uri).delete(predicate)
    return open_table(uri).version()


@contextlib.contextmanager
def _session_settings(spark: SparkSession, meta: CommitMetadata, **settings: str) -> Iterator[None]:
    """The commit's userMetadata and `settings` for the commands run inside, then the session's own again."""
    settings = {"spark.databricks.delta.commitInfo.userMetadata": meta.to_json(), **settings}
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
