"""A run: who runs (command, snapshot, run id), with which settings, on which warehouse; the stages it went
through, each with its typed record; what it did with each model; what it worked around. It publishes the
snapshot tables and records itself in the `runs` table, and every stage function receives it."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segscale import __version__
from segscale.catalog import RUNS, TABLES, Table
from segscale.config import Settings
from segscale.errors import InputError
from segscale.io.delta import CommitMetadata, Warehouse
from segscale.models import registry

log = logging.getLogger(__name__)

STAGE_TAG = "segscale-stage:"  # Spark job tag of every job a pipeline stage runs, followed by the stage's name


@dataclass(frozen=True)
class Published:
    """One commit of a table: the rows written and the table version it made."""

    rows: int
    version: int


@dataclass
class StageRecord:
    """One timed stage: its typed record (a dataclass the stage sets), the tables it published, its seconds."""

    name: str
    record: Any = None
    published: dict[str, Published] = field(default_factory=dict)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        body = dataclasses.asdict(self.record) if self.record is not None else {}
        if self.published:
            body["published"] = {table: dataclasses.asdict(p) for table, p in self.published.items()}
        return {**body, "seconds": self.seconds}


@dataclass(frozen=True)
class ModelOutcome:
    """What a run did with one model. status: `trained` (this run, and scored with it), `champion` (scored with
    the registered champion), `earlier champion` (training was skipped; scored with a champion of an earlier
    run), `skipped` (no model: its columns are null) or `disabled` (config). `skipped` says why training was
    skipped."""

    status: str
    version: int | None = None
    skipped: str | None = None


def _new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


@dataclass
class Run:
    """One invocation of a command. The command that executes it binds the Spark session and the warehouse
    (`bind`); until then it is only a record (the CLI creates it first, so a failure's summary has the run id)."""

    command: str
    settings: Settings
    snapshot_date: dt.date | None = None
    run_id: str = field(default_factory=_new_run_id)
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    stages: dict[str, StageRecord] = field(default_factory=dict)
    current_stage: str | None = None
    models: dict[str, ModelOutcome] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    warehouse: Warehouse | None = field(default=None, repr=False)
    _kept: list[DataFrame] = field(default_factory=list, repr=False)

    # ---- binding and the frames a run keeps ----------------------------------------------------------------
    def bind(self, spark: SparkSession | None) -> Run:
        self.warehouse = Warehouse(spark, self.settings.paths.warehouse, self.settings.delta)
        return self

    @property
    def spark(self) -> SparkSession:
        return self.warehouse.store.spark

    def keep(self, df: DataFrame) -> DataFrame:
        """`df` persisted (memory, spilling to disk; as it is, if it already is) until `release`, or until the run
        ends at the latest."""
        kept = df if df.is_cached else df.persist(StorageLevel.MEMORY_AND_DISK)
        self._kept.append(kept)
        return kept

    def release(self, df: DataFrame | None = None) -> None:
        """Unpersist `df`, or every frame the run still keeps."""
        for kept in ([df] if df is not None else list(self._kept)):
            kept.unpersist()
            self._kept = [k for k in self._kept if k is not kept]

    # ---- stages ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        """Time a stage and tag its Spark jobs `segscale-stage:<name>` (the Spark UI and its REST API show the
        tag and the description, so a job's shuffle and spill can be traced to the stage that ran it)."""
        stage = StageRecord(name)
        self.current_stage = name
        log.info("stage %s: start", name)
        spark = SparkSession.getActiveSession()
        context = spark.sparkContext if spark is not None else None
        if context is not None:
            outer_description = context.getLocalProperty("spark.job.description")
            context.addJobTag(STAGE_TAG + name)
            context.setJobDescription(f"segscale {self.command} {self.snapshot_date or ''}: {name}")
        start = time.perf_counter()
        try:
            yield stage
        finally:
            if context is not None:
                context.removeJobTag(STAGE_TAG + name)
                context.setJobDescription(outer_description)
            stage.seconds = round(time.perf_counter() - start, 3)
            self.stages[name] = stage
            log.info("stage %s: end after %.1f s %s", name, stage.seconds,
                     {k: v for k, v in stage.as_json().items() if k != "seconds"})

    def warn(self, message: str) -> None:
        """Something the run worked around: printed, and kept in the summary and the `runs` table."""
        log.warning(message)
        self.warnings.append(message)

    def lineage_tags(self) -> dict[str, str]:
        """Tags of the MLflow runs this run starts: the run, its config and the input versions it read."""
        ingest = self.stages["ingest"].record
        return {
            "segscale.run_id": self.run_id, "segscale.config_hash": self.settings.config_hash(),
            "segscale.snapshot_date": self.snapshot_date.isoformat(), "segscale.version": __version__,
            "segscale.input": self.settings.paths.input,
            **{f"lineage.{name}.delta_version": str(version) for name, version in ingest.input_versions.items()},
        }

    # ---- tables ------------------------------------------------------------------------------------------
    def meta(self, stage: str, model_version: str | None = None, **extra: Any) -> CommitMetadata:
        return CommitMetadata(
            run_id=self.run_id,
            stage=stage,
            config_hash=self.settings.config_hash(),
            snapshot_date=self.snapshot_date.isoformat() if self.snapshot_date else None,
            model_version=model_version,
            extra=extra,
        )

    def publish(self, stage: StageRecord, table: Table, df: DataFrame, *, snapshot_date: dt.date | None = None,
                model_version: str | None = None, **extra: Any) -> Published:
        """Replace the run's snapshot's partition of `table` with `df` in one commit, recorded on `stage`; or, with
        `snapshot_date`, another snapshot's partition (its commit names that snapshot; the stage's own record says
        what it was)."""
        day = snapshot_date or self.snapshot_date
        meta = dataclasses.replace(self.meta(stage.name, model_version, **extra), snapshot_date=day.isoformat())
        result = self.warehouse.write(table, df, partition={"snapshot_date": day}, meta=meta)
        published = Published(result.rows, result.version)
        if day == self.snapshot_date:
            stage.published[table.name] = published
        return published

    def published(self, table: Table) -> bool:
        """Whether a stage of this run published `table`."""
        return any(table.name in stage.published for stage in self.stages.values())

    def snapshot_of(self, table: Table, snapshot_date: dt.date | None = None) -> DataFrame:
        """The rows of a snapshot (this run's by default) of a published table: written earlier in this run
        (perhaps none: a snapshot nobody had signed up by), or published before."""
        day = snapshot_date or self.snapshot_date
        warehouse = self.warehouse
        if not (day == self.snapshot_date and self.published(table)) and (
                not warehouse.exists(table) or day.isoformat() not in warehouse.partition_values(table,
                                                                                                  "snapshot_date")):
            raise InputError(f"{table} has no snapshot {day} in {warehouse.root}; run the earlier stages for that "
                             f"date first")
        return warehouse.read(table).where(F.col("snapshot_date") == F.lit(day))

    # ---- the summary and the runs table -------------------------------------------------------------------
    def summary(self, status: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "status": status,
            "snapshot_date": self.snapshot_date.isoformat() if self.snapshot_date else None,
            "config_hash": self.settings.config_hash(),
            "package_version": __version__,
            "stages": {name: stage.as_json() for name, stage in self.stages.items()},
            "models": {kind: dataclasses.asdict(outcome) for kind, outcome in self.models.items()},
            "warnings": list(self.warnings),
            **({"failed_stage": self.current_stage} if status == "failed" else {}),
        }

    def table_versions(self) -> dict[str, int]:
        """The version of every published table this run leaves to readers: those it wrote or read at the versions
        it wrote or read, the others as the run completed before it left them (or as they are, in a warehouse no
        run recorded versions in yet). A table another run changed but never completed stays hidden."""
        warehouse = self.warehouse
        before = warehouse.published_versions()
        if before is None:
            before = {t.name: warehouse.store.version(warehouse.uri(t)) for t in TABLES
                      if t is not RUNS and warehouse.exists(t)}
        return {**before, **{name: v for name, v in warehouse.seen.items() if name != RUNS.name}}

    @contextlib.contextmanager
    def recorded(self) -> Iterator[Run]:
        """Around a command's stages: the run is appended to the `runs` table as failed or succeeded; the frames
        it kept and MLflow's process-wide state are released whatever happens."""
        try:
            with registry.scoped():
                yield self
        except Exception:
            self._record("failed")
            raise
        finally:
            self.release()
        self._record("succeeded")

    def _record(self, status: str) -> None:
        """Append the run, its effective config and summary to the `runs` table (best effort on failure), the last
        commit of the run: a succeeded run's row holds the version of every table as readers are to see them."""
        row = (self.run_id, self.command, self.snapshot_date, status, self.started_at, dt.datetime.now(dt.UTC),
               self.settings.config_hash(), self.settings.to_json(), json.dumps(self.summary(status), default=str),
               __version__, list(self.warnings),
               json.dumps(self.table_versions(), sort_keys=True) if status == "succeeded" else None)
        try:
            runs_df = self.spark.createDataFrame([row], RUNS.spark_schema)
            self.warehouse.write(RUNS, runs_df, meta=self.meta("record run"))
        except Exception as exc:  # recording must never hide the run's own outcome
            if status == "succeeded":
                raise
            log.warning("could not record failed run %s: %s", self.run_id, exc)
