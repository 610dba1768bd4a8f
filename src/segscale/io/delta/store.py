"""The table store: every read and write of a segscale table goes through `DeltaStore` (by URI) or `Warehouse` (a
published table by its catalog entry, under one root).

Two writer backends stand behind one interface: `rs_writer` (delta-rs, the embedded default) and `spark_writer`
(delta-spark, clusters with the Delta jars). Both write the same layout (Hive-style partition directories,
partition columns kept out of the data files, commit metadata in the commit's ``userMetadata``), so either reads
what the other wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pyarrow.dataset as pads
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from segscale.catalog import RUNS, TABLES, Table
from segscale.config import DeltaSettings
from segscale.errors import ConfigError, InputError, SegscaleError
from segscale.io.delta import log, rs_writer, spark_writer
from segscale.io.delta.log import (
    CommitMetadata,
    Optimized,
    TableVersion,
    WriteMode,
    WriteResult,
    absolute_uri,
    open_table,
)
from segscale.session import DELTA_CATALOG, DELTA_EXTENSION, delta_package, has_delta_extension

Backend = Literal["delta-rs", "delta-spark"]


class DeltaStore:
    """Reads and writes Delta tables by URI with the chosen backend."""

    def __init__(self, spark: SparkSession | None, settings: DeltaSettings):
        # Without a session only the log-level operations work: exists, version, history, vacuum.
        self.spark = spark
        self.settings = settings
        self.backend: Backend = _choose_backend(spark, settings)

    # ---- reads -------------------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        return log.is_table(absolute_uri(uri))

    def version(self, uri: str) -> int:
        return open_table(absolute_uri(uri)).version()

    def read(self, uri: str, version: int | None = None,
             timestamp: str | dt.datetime | None = None) -> DataFrame:
        """The table's current version, or the given version / timestamp, as a Spark DataFrame."""
        uri = absolute_uri(uri)
        return self.read_loaded(uri, open_table(uri, version, timestamp))

    def read_loaded(self, uri: str, table: DeltaTable) -> DataFrame:
        """The version of the table at `uri` that `table` loaded (the version a timestamp names is resolved by
        delta-rs for both backends)."""
        if self.backend == "delta-spark":
            return self.spark.read.format("delta").option("versionAsOf", table.version()).load(uri)
        return log.read_snapshot(self.spark, table, uri)

    def partition_values(self, uri: str, column: str) -> list[str]:
        """The values of a partition column present in the current version, from the log (no data read)."""
        return log.partition_values(uri, column)

    def history(self, uri: str, limit: int | None = None) -> list[TableVersion]:
        return log.history(uri, limit)

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
        table = log.open_if_exists(uri)
        if table is not None and mode == "create":
            raise SegscaleError(f"table {uri} already exists (mode create)")
        df = log.normalise_columns(df)
        new_columns: list[T.StructField] = []
        if table is not None:
            log.check_partitioning(uri, table, partition_by)
            partition_by = table.metadata().partition_columns
            new_columns = log.check_schema(uri, table, df.schema, self.settings.allow_schema_evolution, added_columns)
            table_columns = [f.name for f in log.spark_schema(table).fields]
            df = df.select(*table_columns, *[f.name for f in new_columns])
        if self.backend == "delta-spark":
            return spark_writer.write(uri, df, mode, meta, partition_by, replace, table, bool(new_columns))
        return rs_writer.write(uri, df, mode, meta, list(partition_by), replace, table, new_columns,
                               self.settings)

    # ---- maintenance -------------------------------------------------------------------------------------
    def optimize(self, uri: str, meta: CommitMetadata, *, target_bytes: int, cluster_by: Sequence[str] = (),
                 only: Mapping[str, Sequence[str]] | None = None) -> Optimized:
        """Compact small files into files of about `target_bytes`, or Z-order them by `cluster_by`, within the
        partitions `only` names (every partition when None): one commit that changes no row, or none when there
        is nothing to do."""
        uri = absolute_uri(uri)
        if self.backend == "delta-spark":
            return spark_writer.optimize(self.spark, uri, meta, cluster_by, only, target_bytes)
        return rs_writer.optimize(open_table(uri), meta, cluster_by, only, target_bytes, self.settings)

    def delete_partitions(self, uri: str, partitions: Mapping[str, Sequence[Any]], meta: CommitMetadata) -> int:
        """Delete the partitions named (`{"snapshot_date": [...]}`) in one commit; their files stay on storage,
        for the versions before it, until vacuum. Returns the new version."""
        uri = absolute_uri(uri)
        condition = log.in_condition(partitions)
        if self.backend == "delta-spark":
            return spark_writer.delete(self.spark, uri, condition, meta)
        return rs_writer.delete(open_table(uri), condition, meta)

    def checkpoint(self, uri: str) -> int:
        return log.checkpoint(absolute_uri(uri))

    def vacuum(self, uri: str, retention_hours: float | None = None, dry_run: bool = False,
               keep_versions: Sequence[int] = ()) -> list[str]:
        """Delete data files no version within the retention window needs, nor any of `keep_versions`, including
        orphans of failed writes."""
        hours = self.settings.vacuum_retention_hours if retention_hours is None else retention_hours
        table = open_table(absolute_uri(uri))
        # full=True also lists files never committed (those of failed writes), not only removed ones; the
        # retention window protects files that an in-flight write has not committed yet.
        return table.vacuum(retention_hours=math.ceil(hours), dry_run=dry_run, enforce_retention_duration=False,
                            full=True, keep_versions=sorted(set(keep_versions)) or None)


class Warehouse:
    """The published tables under one root directory, addressed by their catalog entries (`segscale.catalog`)."""

    def __init__(self, spark: SparkSession | None, root: str, settings: DeltaSettings):
        self.root = absolute_uri(root)
        self.store = DeltaStore(spark, settings)
        # table name -> the version this warehouse object last read or wrote: what a run saw (`Run._record`)
        self.seen: dict[str, int] = {}

    def uri(self, table: Table) -> str:
        return f"{self.root}/{table.name}"

    def exists(self, table: Table) -> bool:
        return self.store.exists(self.uri(table))

    def read(self, table: Table, version: int | None = None,
             timestamp: str | dt.datetime | None = None) -> DataFrame:
        loaded = open_table(self.uri(table), version, timestamp)
        self.seen[table.name] = loaded.version()
        return self.store.read_loaded(self.uri(table), loaded)

    def write(self, table: Table, df: DataFrame, *, meta: CommitMetadata,
              partition: Mapping[str, Any] | None = None) -> WriteResult:
        """Write `df` as one commit in the table's declared write mode (`partition`: the values of the partition
        a replace_partition write replaces). A frame whose columns or types differ from the declaration is
        refused (SchemaMismatchError naming the table and the columns) before anything is written."""
        if (table.write == "replace_partition") != (partition is not None):
            raise ValueError(f"{table.name} is written with {table.write}: "
                             f"{'give' if partition is None else 'no'} partition values")
        result = self.store.write(self.uri(table), table.conform(df), mode=table.write, meta=meta,
                                  partition_by=table.partition_by, replace=partition,
                                  added_columns=table.added_columns)
        self.seen[table.name] = result.version
        return result

    # ---- what readers see: the tables as the last completed run left them ------------------------------------
    def published_versions(self, run_id: str | None = None, as_of: dt.datetime | None = None
                           ) -> dict[str, int] | None:
        """The Delta version of every published table as the newest succeeded run recorded it (`runs.table_versions`),
        or as run `run_id` did, or the newest run completed at or before `as_of`. None when no run recorded versions
        (no runs table, or one written before segscale recorded them): then readers take each table as it is.
        InputError for a `run_id` that did not succeed, or an `as_of` before the first recorded run."""
        rows = self._recorded_runs()
        if run_id is not None:
            match = [r for r in rows if r["run_id"] == run_id]
            if not match:
                known = ", ".join(r["run_id"] for r in rows[-5:]) or "none"
                raise InputError(f"no succeeded run {run_id!r} with recorded table versions in {self.root} "
                                 f"(the newest: {known})")
            return json.loads(match[0]["table_versions"])
        if as_of is not None:
            moment = as_of if as_of.tzinfo else as_of.replace(tzinfo=dt.UTC)
            earlier = [r for r in rows if r["finished_at"] <= moment]
            if rows and not earlier:
                raise InputError(f"no run had completed in {self.root} by {moment.isoformat()}; the first completed "
                                 f"at {rows[0]['finished_at'].isoformat()}")
            rows = earlier
        return json.loads(rows[-1]["table_versions"]) if rows else None

    def recorded_versions(self, command: str | None = None) -> list[dict[str, int]]:
        """What each succeeded run (of `command`, or any) recorded in `runs.table_versions`, oldest first."""
        return [json.loads(r["table_versions"]) for r in self._recorded_runs()
                if command is None or r["command"] == command]

    def _recorded_runs(self) -> list[dict[str, Any]]:
        """The succeeded runs that recorded table versions, oldest first."""
        if not self.exists(RUNS):
            return []
        runs = open_table(self.uri(RUNS))
        if "table_versions" not in runs.schema().to_arrow().names:
            return []
        rows = runs.to_pyarrow_dataset().to_table(
            columns=["run_id", "command", "finished_at", "table_versions"],
            filter=(pads.field("status") == "succeeded") & pads.field("table_versions").is_valid()).to_pylist()
        return sorted(rows, key=lambda r: r["finished_at"])

    def history(self, table: Table, limit: int | None = None) -> list[TableVersion]:
        return self.store.history(self.uri(table), limit)

    def partition_values(self, table: Table, column: str) -> list[str]:
        return self.store.partition_values(self.uri(table), column)

    # ---- the metastore -----------------------------------------------------------------------------------
    def register(self, database: str) -> dict[str, str]:
        """Register every published table as an external Delta table `database.name` in the Spark session's
        catalog (its metastore), at this warehouse's location: name -> `registered` (new), `kept` (already
        there), or `moved` (it pointed elsewhere: re-registered; an external table's files are never touched).
        A managed table of the same name is refused: dropping it would delete its data."""
        spark = self.store.spark
        if not has_delta_extension(spark):
            raise ConfigError(f"registering Delta tables needs the Delta extension in the Spark session: give "
                              f"spark-submit --packages {delta_package()} --conf spark.sql.extensions="
                              f"{DELTA_EXTENSION} --conf spark.sql.catalog.spark_catalog={DELTA_CATALOG}")
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}` COMMENT 'segscale: the tables published under "
                  f"{self.root}'")
        outcome = {}
        for table in TABLES:
            if not self.exists(table):
                continue
            name, uri = f"`{database}`.`{table.name}`", self.uri(table)
            outcome[table.name] = "registered"
            if spark.catalog.tableExists(f"{database}.{table.name}"):
                described = {row.col_name: row.data_type for row in spark.sql(f"DESCRIBE TABLE EXTENDED {name}")
                             .collect()}  # small: one row per column and property
                if described.get("Type") == "MANAGED":
                    raise InputError(f"{database}.{table.name} is a managed table in the metastore, not segscale's: "
                                     f"drop or rename it, or register into another metastore.database")
                if absolute_uri(described.get("Location", "").removeprefix("file:")) == uri:
                    outcome[table.name] = "kept"
                    continue
                spark.sql(f"DROP TABLE {name}")
                outcome[table.name] = "moved"
            location = uri.replace("\\", "\\\\").replace("'", "\\'")
            spark.sql(f"CREATE TABLE {name} USING DELTA LOCATION '{location}'")
        return outcome

    # ---- maintenance -------------------------------------------------------------------------------------
    def optimize(self, table: Table, meta: CommitMetadata, target_bytes: int,
                 snapshots: Sequence[str] | None = None) -> Optimized:
        """Compact the table's files, or Z-order them when the table declares `cluster_by`, in the snapshots
        named (every partition when None)."""
        only = {table.partition_by[0]: snapshots} if snapshots is not None else None
        result = self.store.optimize(self.uri(table), meta, target_bytes=target_bytes, cluster_by=table.cluster_by,
                                     only=only)
        self.seen[table.name] = result.version
        return result

    def delete_snapshots(self, table: Table, snapshots: Sequence[str], meta: CommitMetadata) -> int:
        version = self.store.delete_partitions(self.uri(table), {"snapshot_date": snapshots}, meta)
        self.seen[table.name] = version
        return version

    def checkpoint(self, table: Table) -> int:
        return self.store.checkpoint(self.uri(table))

    def file_count(self, table: Table) -> int:
        return log.file_count(self.uri(table))

    def snapshots_added_since(self, table: Table, version: int) -> list[str] | None:
        """The snapshots that gained a data file since `version` (None: that version's log has expired)."""
        return log.partitions_added_since(self.uri(table), version, "snapshot_date")

    def versions_runs_read(self, keep_runs: int) -> dict[str, list[int]]:
        """Per table, the versions the newest `keep_runs` succeeded runs recorded: what vacuum keeps so that
        `--run-id` of those runs still reads (one read of `runs` for every table)."""
        kept: dict[str, list[int]] = {}
        for versions in self.recorded_versions()[-keep_runs:] if keep_runs else []:
            for name, version in versions.items():
                kept.setdefault(name, []).append(version)
        return kept

    def vacuum(self, table: Table, retention_hours: float | None = None, dry_run: bool = False,
               keep_versions: Sequence[int] = ()) -> list[str]:
        """Vacuum the table, keeping also the files of `keep_versions` (`versions_runs_read`)."""
        return self.store.vacuum(self.uri(table), retention_hours, dry_run, keep_versions)


# ---- backend choice, opening, reading -----------------------------------------------------------------------
def _choose_backend(spark: SparkSession | None, settings: DeltaSettings) -> Backend:
    if settings.backend == "auto":
        return "delta-spark" if spark is not None and has_delta_extension(spark) else "delta-rs"
    if settings.backend == "delta-spark" and spark is not None and not has_delta_extension(spark):
        raise ConfigError(
            "delta.backend is delta-spark, but the Spark session was started without the Delta extension: give "
            f"spark-submit --packages {delta_package()} --conf spark.sql.extensions={DELTA_EXTENSION} --conf "
            f"spark.sql.catalog.spark_catalog={DELTA_CATALOG} (docs/tables.md), or set delta.backend: delta-rs")
    return settings.backend


