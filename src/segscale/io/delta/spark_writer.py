"""The cluster writer (delta-spark): ``df.write.format("delta")`` with the commit metadata as userMetadata."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from deltalake import DeltaTable
from pyspark.sql import DataFrame

from segscale.errors import WriteConflictError, WriteFailedError, describe_exception
from segscale.io.delta.log import CommitMetadata, WriteMode, WriteResult, open_table, partition_string

log = logging.getLogger(__name__)


def write(uri: str, df: DataFrame, mode: WriteMode, meta: CommitMetadata, partition_by: Sequence[str],
          replace: Mapping[str, Any] | None, table: DeltaTable | None, adds_columns: bool) -> WriteResult:
    """Write `df` into the table at `uri` through Spark's Delta data source, as one commit."""
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
            condition = " AND ".join(f"{c} = '{partition_string(v)}'" for c, v in (replace or {}).items())
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
