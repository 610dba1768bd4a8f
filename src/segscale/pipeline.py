"""Wire the stages: read inputs, transform, publish. Every entry point (CLI, spark-submit jobs, tests) calls these
functions with a Spark session and settings it was given."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from segscale import __version__
from segscale.config import Settings
from segscale.features import customer_features
from segscale.generate import as_csv_text, generate_frames
from segscale.ingest import read_inputs
from segscale.tables import CommitMetadata, DeltaStore, Warehouse

log = logging.getLogger(__name__)

RUNS_TABLE = "runs"
RUNS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType()),
    T.StructField("command", T.StringType()),
    T.StructField("snapshot_date", T.DateType()),
    T.StructField("status", T.StringType()),
    T.StructField("started_at", T.TimestampType()),
    T.StructField("finished_at", T.TimestampType()),
    T.StructField("config_hash", T.StringType()),
    T.StructField("config_json", T.StringType()),
    T.StructField("summary_json", T.StringType()),
    T.StructField("package_version", T.StringType()),
])


@dataclass
class Run:
    """One invocation: its id, settings, and the stages it went through with their timings and counts."""

    command: str
    settings: Settings
    snapshot_date: dt.date | None = None
    run_id: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ-")
                        + uuid.uuid4().hex[:8])
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def meta(self, stage: str, **extra: Any) -> CommitMetadata:
        return CommitMetadata(
            run_id=self.run_id,
            stage=stage,
            config_hash=self.settings.config_hash(),
            snapshot_date=self.snapshot_date.isoformat() if self.snapshot_date else None,
            extra=extra,
        )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {}
        log.info("stage %s: start", name)
        start = time.perf_counter()
        try:
            yield record
        finally:
            record["seconds"] = round(time.perf_counter() - start, 3)
            self.stages[name] = record
            log.info("stage %s: end after %.1f s %s", name, record["seconds"],
                     {k: v for k, v in record.items() if k != "seconds"})

    def summary(self, status: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "status": status,
            "snapshot_date": self.snapshot_date.isoformat() if self.snapshot_date else None,
            "config_hash": self.settings.config_hash(),
            "package_version": __version__,
            "stages": self.stages,
        }


def run_pipeline(spark: SparkSession, settings: Settings, snapshot_date: dt.date,
                 run: Run | None = None) -> dict[str, Any]:
    """The main job: ingest the inputs and publish `customer_features` for one snapshot."""
    run = run or Run("run", settings, snapshot_date)
    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    try:
        with run.stage("ingest") as record:
            inputs = read_inputs(warehouse.store, settings.paths.input)
            record["input"] = settings.paths.input
        with run.stage("features") as record:
            features_df = customer_features(inputs.customers, inputs.transactions, snapshot_date)
            result = warehouse.write(
                "customer_features", features_df, mode="replace_partition", partition_by=["snapshot_date"],
                replace={"snapshot_date": snapshot_date}, meta=run.meta("features"),
            )
            record.update(rows=result.rows, files=result.files, version=result.version)
    except Exception:
        _record_run(warehouse, run, "failed")
        raise
    summary = run.summary("succeeded")
    _record_run(warehouse, run, "succeeded")
    return summary


def generate_inputs(spark: SparkSession, settings: Settings, out_dir: str, run: Run | None = None
                    ) -> dict[str, Any]:
    """Generate the synthetic input tables on the executors and write them under `out_dir`."""
    run = run or Run("generate", settings)
    gen = settings.generate
    store = DeltaStore(spark, settings.delta)
    frames = generate_frames(spark, gen)
    for name, frame_df in frames.items():
        with run.stage(f"generate {name}") as record:
            path = f"{out_dir.rstrip('/')}/{name}"
            fmt = "delta" if name == "customer_truth" else gen.format
            record.update(path=path, format=fmt)
            if fmt == "delta":
                result = store.write(path, frame_df, mode="overwrite",
                                     meta=run.meta(f"generate {name}", seed=gen.seed, customers=gen.customers))
                record.update(rows=result.rows, files=result.files, version=result.version)
            else:
                _write_plain(frame_df, path, fmt)
    return run.summary("succeeded")


def _write_plain(frame_df: DataFrame, path: str, fmt: str) -> None:
    if fmt == "parquet":
        frame_df.write.mode("overwrite").parquet(path)
        return
    frame_df.transform(as_csv_text).write.mode("overwrite").option("header", True).csv(path)


def _record_run(warehouse: Warehouse, run: Run, status: str) -> None:
    """Append the run, its effective config and summary to the `runs` table (best effort on failure)."""
    row = (run.run_id, run.command, run.snapshot_date, status, run.started_at, dt.datetime.now(dt.UTC),
           run.settings.config_hash(), run.settings.to_json(), json.dumps(run.summary(status), default=str),
           __version__)
    try:
        runs_df = warehouse.store.spark.createDataFrame([row], RUNS_SCHEMA)
        warehouse.write(RUNS_TABLE, runs_df, mode="append", meta=run.meta("record run"))
    except Exception as exc:  # recording must never hide the run's own outcome
        if status == "succeeded":
            raise
        log.warning("could not record failed run %s: %s", run.run_id, exc)
