"""The cluster writer (delta-spark): ``df.write.format("delta")`` with the commit metadata as userMetadata."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from deltalake import DeltaTable
from pyspark.sql import DataFrame

from segscale.errors import WriteConflictError, WriteFailedError, describe_exception, raise_if_storage_refused
from segscale.io.delta.log import (
    PINNED_PROTOCOL,
    TABLE_PROPERTIES,
    CommitMetadata,
    WriteMode,
    WriteResult,
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
