"""The commands: each checks what it can before touching data, then runs its graph of stages inside a recorded run.
Every entry point (CLI, spark-submit jobs, tests) calls these functions with the Spark session and settings it was
given."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from pyspark.sql import DataFrame, SparkSession

from segscale.catalog import RETENTION_PLAN, RETENTION_SUMMARY, RUNS, TABLES, Table
from segscale.config import Settings
from segscale.errors import InputError
from segscale.io.delta import DeltaStore, Warehouse, open_table
from segscale.io.inputs import detect_format, read_inputs
from segscale.pipeline import stages as s
from segscale.pipeline.context import Run
from segscale.pipeline.graph import Graph, Stage
from segscale.synthetic.campaigns import carry_out
from segscale.synthetic.generator import as_csv_text, generate_frames

log = logging.getLogger(__name__)

# What each snapshot command runs. Features need validated inputs, segmentation reads only published features and
# the plan only published scores.
GRAPHS: dict[str, Graph] = {graph.command: graph for graph in (
    Graph("run", (
        Stage(s.choose_models, "models"), Stage(s.ingest, "inputs"), Stage(s.validate, "validated"),
        Stage(s.compute_features, "features"), Stage(s.train_models, "models"),
        Stage(s.publish_features, "features"), Stage(s.segment, "scores"), Stage(s.migration),
        Stage(s.monitor), Stage(s.measure_outcomes, "uplifts"), Stage(s.plan), Stage(s.queue), Stage(s.economics),
    ), given=("train",)),
    Graph("validate", (Stage(s.ingest, "inputs"), Stage(s.validate, "validated"))),
    Graph("features", (
        Stage(s.ingest, "inputs"), Stage(s.validate, "validated"), Stage(s.compute_features, "features"),
        Stage(s.publish_features, "features"),
    )),
    Graph("segment", (
        Stage(s.champions, "models"), Stage(s.published_features, "features"), Stage(s.segment, "scores"),
        Stage(s.migration),
    )),
    Graph("plan", (Stage(s.published_scores, "scores"), Stage(s.learned_uplifts, "uplifts"), Stage(s.plan),
                   Stage(s.published_features, "features"), Stage(s.queue), Stage(s.economics))),
    Graph("score", (Stage(s.rescore, "scores"), Stage(s.learned_uplifts, "uplifts"), Stage(s.plan),
                    Stage(s.published_features, "features"), Stage(s.queue), Stage(s.economics)),
          given=("churn_version",)),
    Graph("train", (
        Stage(s.every_model_to_train, "models"), Stage(s.ingest, "inputs"), Stage(s.check_inputs, "validated"),
        Stage(s.compute_features, "features"), Stage(s.train_every_model, "models"),
    )),
)}
# Commands whose runs publish snapshot tables; the newest of them says what a snapshot's tables hold.
PUBLISHING = ("run", "validate", "features", "segment", "plan", "score")


def run_pipeline(spark: SparkSession, settings: Settings, snapshot_date: dt.date, run: Run | None = None, *,
                 train: bool = False) -> dict[str, Any]:
    """The main job for one snapshot, or the stages of `run.command` (validate, features, segment, plan): validate
    → [train] → features → segment → migration → plan. The segment stage scores every customer with the champion
    churn and CLV models; `run` trains a model first when `train` is set or it has no champion. A model the data
    cannot support is skipped with a warning (a compatible champion of an earlier run scores instead, if there is
    one) and the rest is published. Nothing is published when the input fails validation, MLflow is unreachable or
    a model to score with is unusable."""
    run = run or Run("run", settings, snapshot_date)
    enabled = [section.enabled for section in (settings.churn, settings.clv)]
    if train and not (run.command == "run" and any(enabled)):
        raise InputError("--train needs the run command and churn.enabled or clv.enabled: true")
    if run.command == "plan" and not all(enabled):
        raise InputError("the retention plan needs churn probabilities and CLV: set churn.enabled and "
                         "clv.enabled to true")
    graph = GRAPHS[run.command]
    with run.bind(spark).recorded():
        graph.run(run, **({"train": train} if "train" in graph.given else {}))
    return run.summary("succeeded")


def score_snapshot(spark: SparkSession, settings: Settings, snapshot_date: dt.date, run: Run | None = None, *,
                   model_version: int | None = None) -> dict[str, Any]:
    """Re-score churn for a published snapshot with the champion (or `model_version`): replaces the snapshot of
    customer_scores with new churn columns and every other column kept, then rebuilds the plan."""
    run = run or Run("score", settings, snapshot_date)
    if not settings.churn.enabled:
        raise InputError("churn.enabled is false, so there is no churn model to score with")
    with run.bind(spark).recorded():
        GRAPHS["score"].run(run, churn_version=model_version)
    return run.summary("succeeded")


def train_models(spark: SparkSession, settings: Settings, snapshot_date: dt.date, run: Run | None = None
                 ) -> dict[str, Any]:
    """Train the enabled models as of `snapshot_date` and register them in MLflow: the churn model out of time
    (with the promotion gate), the CLV models on the whole base. Reads the inputs; publishes no table (the
    `runs` table records the run)."""
    run = run or Run("train", settings, snapshot_date)
    if not (settings.churn.enabled or settings.clv.enabled):
        raise InputError("churn.enabled and clv.enabled are both false: there is no model to train")
    with run.bind(spark).recorded():
        GRAPHS["train"].run(run)
    return run.summary("succeeded")


# ---- backfills ---------------------------------------------------------------------------------------------------
def snapshot_dates(start: dt.date, end: dt.date, every_days: int) -> list[dt.date]:
    """start, start + every_days, ... up to end inclusive."""
    if end < start:
        raise InputError(f"--to {end} is before --from {start}")
    if every_days < 1:
        raise InputError(f"--every must be at least 1 day, got {every_days}")
    return [start + dt.timedelta(days=k) for k in range(0, (end - start).days + 1, every_days)]


def published_with(warehouse: Warehouse, snapshot_date: dt.date, config_hash: str) -> bool:
    """Whether the newest publishing run of the snapshot is a `run` that succeeded with this config hash, so its
    tables hold exactly what another run would publish (given the same input)."""
    if not warehouse.exists(RUNS):
        return False
    runs = open_table(warehouse.uri(RUNS)).to_pyarrow_dataset().to_table(
        columns=["command", "status", "config_hash", "started_at"],
        filter=pads.field("snapshot_date") == pa.scalar(snapshot_date, pa.date32()))
    rows = sorted((r for r in runs.to_pylist() if r["command"] in PUBLISHING), key=lambda r: r["started_at"])
    return bool(rows) and rows[-1]["command"] == "run" and rows[-1]["status"] == "succeeded" \
        and rows[-1]["config_hash"] == config_hash


def backfill(spark: SparkSession, settings: Settings, dates: list[dt.date], *, force: bool = False,
             report: Callable[[dict[str, Any]], None] = lambda outcome: None,
             check: Callable[[dict[str, Any]], None] = lambda summary: None) -> list[dict[str, Any]]:
    """Run the main job for each date in order, skipping the snapshots already published by a successful `run`
    with the same config hash unless `force`. Stops at the first failure (its exception propagates), or when
    `check` raises for a published run's summary."""
    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    outcomes = []
    for day in dates:
        if not force and published_with(warehouse, day, settings.config_hash()):
            outcome = {"snapshot_date": day.isoformat(), "status": "skipped",
                       "reason": f"already published with config {settings.config_hash()}"}
        else:
            summary = run_pipeline(spark, settings, day)
            outcome = {"snapshot_date": day.isoformat(), "status": "published", "run_id": summary["run_id"],
                       "seconds": round(sum(stage["seconds"] for stage in summary["stages"].values()), 1),
                       "warnings": summary["warnings"]}
        outcomes.append(outcome)
        report(outcome)
        if outcome["status"] == "published":
            check(summary)
    return outcomes


# ---- maintenance -------------------------------------------------------------------------------------------------
# Commits that change no row: a table whose commits since the newest completed run are all of these is as readers
# see it.
NO_DATA_CHANGE = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END"})
# The tables snapshot retention prunes (retention_outcomes keeps every plan's outcome: the learned uplift's memory).
SNAPSHOT_TABLES = tuple(t for t in TABLES if t.partition_by == ("snapshot_date",) and not t.outlives_retention)


@dataclass(frozen=True)
class RetentionRecord:
    kept: list[str]  # the snapshots the retention rules keep
    deleted: dict[str, list[str]]  # per table, the snapshots a commit deleted
    held: dict[str, str]  # the tables left alone, and why


@dataclass(frozen=True)
class OptimizeRecord:
    # per table: files before and after, and the snapshots Z-ordered (absent: the files were only compacted)
    tables: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class VacuumRecord:
    deleted_files: dict[str, int]


@dataclass(frozen=True)
class CheckpointRecord:
    versions: dict[str, int]


def maintain(spark: SparkSession, settings: Settings, run: Run | None = None) -> dict[str, Any]:
    """Maintain every published table, as one recorded run whose table versions readers then see: delete the
    snapshots the retention rules (`maintenance`) no longer keep, compact small files and Z-order the partitions of
    clustered tables written since the last maintenance, vacuum (keeping what the newest `maintenance.keep_runs`
    completed runs recorded) and write a checkpoint. A table holding commits of a run that did not complete is
    neither pruned nor rewritten (that would publish them), only vacuumed and checkpointed."""
    run = run or Run("maintain", settings)
    with run.bind(spark).recorded():
        warehouse = run.warehouse
        tables = [t for t in TABLES if warehouse.exists(t)]
        visible = warehouse.published_versions()
        held = {t.name: why for t in tables if (why := _unpublished_commits(warehouse, t, visible))}
        for name, why in held.items():
            run.warn(f"{name} left unpruned and uncompacted: {why}")
        free = [t for t in tables if t.name not in held]
        _apply_retention(run, [t for t in free if t in SNAPSHOT_TABLES], tables, held)
        _optimize(run, free)
        with run.stage("vacuum") as stage:
            kept = warehouse.versions_runs_read(settings.maintenance.keep_runs)
            stage.record = VacuumRecord({t.name: len(warehouse.vacuum(t, keep_versions=kept.get(t.name, ())))
                                         for t in tables})
        with run.stage("checkpoint") as stage:
            stage.record = CheckpointRecord({t.name: warehouse.checkpoint(t) for t in tables})
    return run.summary("succeeded")


def expired_snapshots(snapshots: Sequence[str], keep_snapshots: int | None, keep_days: int | None) -> list[str]:
    """The snapshots (ISO dates) no retention rule keeps: neither among the newest `keep_snapshots` nor within
    `keep_days` days of the newest. None when no rule is set."""
    if keep_snapshots is None and keep_days is None:
        return []
    ordered = sorted(set(snapshots))
    kept = set(ordered[-keep_snapshots:]) if keep_snapshots else set()
    if keep_days is not None and ordered:
        newest = dt.date.fromisoformat(ordered[-1])
        kept |= {day for day in ordered if (newest - dt.date.fromisoformat(day)).days <= keep_days}
    return [day for day in ordered if day not in kept]


def _unpublished_commits(warehouse: Warehouse, table: Table, visible: dict[str, int] | None) -> str | None:
    """Why `table` must not be rewritten: it has commits no completed run published (None: it has none)."""
    if visible is None or table is RUNS:
        return None
    if table.name not in visible:
        return "no completed run has published it yet"
    newer = warehouse.store.version(warehouse.uri(table)) - visible[table.name]
    unpublished = [v for v in warehouse.history(table, newer) if v.operation not in NO_DATA_CHANGE] if newer > 0 else []
    if not unpublished:
        return None
    runs = sorted({str(v.metadata.get("run_id", "unknown")) for v in unpublished})
    return (f"versions {', '.join(str(v.version) for v in reversed(unpublished))} hold commits of runs that did not "
            f"complete ({', '.join(runs)}); the next completed run publishes them, then maintain can prune it")


def _apply_retention(run: Run, tables: list[Table], every_table: list[Table], held: dict[str, str]) -> None:
    warehouse, policy = run.warehouse, run.settings.maintenance
    with run.stage("retention") as stage:
        present = {t.name: warehouse.partition_values(t, "snapshot_date") for t in every_table
                   if t in SNAPSHOT_TABLES}
        expired = expired_snapshots([day for days in present.values() for day in days], policy.keep_snapshots,
                                    policy.keep_days)
        deleted = {}
        for table in tables:
            gone = [day for day in present[table.name] if day in expired]
            if gone:
                warehouse.delete_snapshots(table, gone, run.meta(stage.name, deleted_snapshots=gone))
                deleted[table.name] = gone
        kept = sorted({day for days in present.values() for day in days} - set(expired))
        stage.record = RetentionRecord(kept, deleted, held)


def _optimize(run: Run, tables: list[Table]) -> None:
    """Compact every table; Z-order the snapshots of a clustered table that gained files since the last maintain
    run (every snapshot the first time)."""
    warehouse = run.warehouse
    target = int(run.settings.maintenance.target_file_mb * 2**20)
    maintained = (warehouse.recorded_versions("maintain") or [{}])[-1]
    with run.stage("optimize") as stage:
        done = {}
        for table in tables:
            files = {"files_before": warehouse.file_count(table)}
            if table.cluster_by:
                since = maintained.get(table.name)
                snapshots = warehouse.snapshots_added_since(table, since) if since is not None else None
                if snapshots is None:
                    snapshots = warehouse.partition_values(table, "snapshot_date")
                if snapshots:
                    warehouse.optimize(table, run.meta(stage.name, cluster_by=list(table.cluster_by),
                                                       snapshots=snapshots), target, snapshots)
                files["clustered"] = snapshots
            else:
                warehouse.optimize(table, run.meta(stage.name), target)
            done[table.name] = {**files, "files_after": warehouse.file_count(table)}
        stage.record = OptimizeRecord(done)


# ---- synthetic inputs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratedRecord:
    path: str
    format: str


@dataclass(frozen=True)
class GeneratedTableRecord(GeneratedRecord):
    rows: int
    files: int
    version: int


def generate_inputs(spark: SparkSession, settings: Settings, out_dir: str, run: Run | None = None
                    ) -> dict[str, Any]:
    """Generate the synthetic input tables on the executors and write them under `out_dir`."""
    run = run or Run("generate", settings)
    gen = settings.generate
    store = DeltaStore(spark, settings.delta)
    for name in SIMULATED:  # what `segscale treat` made of the previous tables: not true of the new ones
        _remove_dir(f"{out_dir.rstrip('/')}/{name}")
    for name, frame_df in generate_frames(spark, gen).items():
        with run.stage(f"generate {name}") as stage:
            path = f"{out_dir.rstrip('/')}/{name}"
            fmt = "delta" if name == "customer_truth" else gen.format
            if fmt == "delta":
                result = store.write(path, frame_df, mode="overwrite",
                                     meta=run.meta(f"generate {name}", seed=gen.seed, customers=gen.customers))
                stage.record = GeneratedTableRecord(path, fmt, result.rows, result.files, result.version)
            else:
                _write_plain(frame_df, path, fmt)
                stage.record = GeneratedRecord(path, fmt)
    return run.summary("succeeded")


# The tables `treat_plan` adds to a generated input.
SIMULATED = ("treatments", "treatment_truth")


def _remove_dir(path: str) -> None:
    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    if fs.get_file_info(root).type == pafs.FileType.Directory:
        fs.delete_dir(root)


def _write_plain(frame_df: DataFrame, path: str, fmt: str, mode: str = "overwrite") -> None:
    if fmt == "parquet":
        frame_df.write.mode(mode).parquet(path)
        return
    frame_df.transform(as_csv_text).write.mode(mode).option("header", True).csv(path)


def treat_plan(spark: SparkSession, settings: Settings, snapshot_date: dt.date, run: Run | None = None
               ) -> dict[str, Any]:
    """Carry out the published plan of `snapshot_date` on generated input (segscale.synthetic.campaigns): append
    the purchases the true effect saves to its transactions, the treated group to its treatments, and every
    customer's potential outcomes to treatment_truth. Refused on input without a generator's ground truth (real
    data is never changed) and for a plan already carried out."""
    run = run or Run("treat", settings, snapshot_date)
    input_dir = settings.paths.input.rstrip("/")
    if detect_format(f"{input_dir}/customer_truth") != "delta":
        raise InputError(f"{input_dir} holds no generated input (no customer_truth table): segscale treat only "
                         f"simulates a plan on data made by segscale generate, never on real data")
    store = DeltaStore(spark, settings.delta)
    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    plans = warehouse.partition_values(RETENTION_PLAN, "snapshot_date") if warehouse.exists(RETENTION_PLAN) else []
    if snapshot_date.isoformat() not in plans:
        summary = (warehouse.read(RETENTION_SUMMARY).where(f"snapshot_date = DATE'{snapshot_date}'").select("note")
                   .collect() if warehouse.exists(RETENTION_SUMMARY) else [])  # small: three rows
        if summary:
            raise InputError(f"the plan of {snapshot_date} in {warehouse.root} is empty "
                             f"({summary[0]['note'] or 'no candidate was worth its treatment'}): nothing to carry out")
        raise InputError(f"retention_plan has no snapshot {snapshot_date} in {warehouse.root}; run segscale run for "
                         f"that date first")
    truth_path = f"{input_dir}/treatment_truth"
    if store.exists(truth_path) and store.read(truth_path).where(
            f"snapshot_date = DATE'{snapshot_date}'").limit(1).count():
        raise InputError(f"the plan of {snapshot_date} was already carried out on {input_dir} (treatment_truth has "
                         f"its rows); generate the input again to start over")
    inputs = read_inputs(store, input_dir, settings.input.columns)
    plan_df = warehouse.read(RETENTION_PLAN).where(f"snapshot_date = DATE'{snapshot_date}'")
    added_df, treatments_df, truth_df = carry_out(plan_df, inputs.transactions, snapshot_date,
                                                  settings.churn.horizon_days, settings.generate)
    fmt = detect_format(f"{input_dir}/transactions")
    for name, frame_df in (("transactions", added_df), ("treatments", treatments_df), ("treatment_truth", truth_df)):
        with run.stage(f"treat {name}") as stage:
            path = f"{input_dir}/{name}"
            table_format = "delta" if name == "treatment_truth" else fmt
            if table_format == "delta":
                result = store.write(path, frame_df, mode="append",
                                     meta=run.meta(f"treat {name}", plan=snapshot_date.isoformat()))
                stage.record = GeneratedTableRecord(path, table_format, result.rows, result.files, result.version)
            else:
                _write_plain(frame_df, path, table_format, mode="append")
                stage.record = GeneratedRecord(path, table_format)
    return run.summary("succeeded")
