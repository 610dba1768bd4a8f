"""Wire the stages: read inputs, transform, publish. Every entry point (CLI, spark-submit jobs, tests) calls these
functions with a Spark session and settings it was given."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
from mlflow import MlflowClient
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segscale import __version__
from segscale.config import ChurnSettings, ClvSettings, Settings
from segscale.errors import InputError, ModelSkipped
from segscale.io.delta import CommitMetadata, DeltaStore, Warehouse, open_table
from segscale.io.inputs import detect_format, input_versions, read_inputs
from segscale.models import MODELS, TrainingData, registry
from segscale.models.churn import CHURN_COLUMNS, RISK_BANDS, churn_udf, with_churn_scores
from segscale.models.clv import clv_params, with_clv
from segscale.models.registry import ScoringModel, require_inputs
from segscale.synthetic.generator import as_csv_text, generate_frames
from segscale.transforms.features import FEATURE_TYPES, customer_features, filter_signed_up_by
from segscale.transforms.plan import (
    PLAN_METRICS,
    SUMMARY_SCHEMA,
    candidates,
    plan_counters,
    ranked,
    retention_plan,
    scored_by_tier,
    summary_rows,
)
from segscale.transforms.rfm import cut_points, quantile_sketch
from segscale.transforms.segments import (
    LIFECYCLE_STAGES,
    VALUE_TIERS,
    customer_scores,
    segment_migration,
    tier_thresholds,
)
from segscale.transforms.validate import Validated, check_bad_ratios, reason_counts, validate_inputs

log = logging.getLogger(__name__)

STAGE_TAG = "segscale-stage:"  # Spark job tag of every job a pipeline stage runs, followed by the stage's name
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
    # What the run worked around (a model skipped, tiers on another basis, an empty plan); empty when nothing.
    T.StructField("warnings", T.ArrayType(T.StringType())),
])


@dataclass(frozen=True)
class ModelOutcome:
    """What a run did with one model. status: `trained` (this run, and scored with it), `champion` (scored with
    the registered champion), `earlier champion` (training was skipped; scored with a champion of an earlier
    run), `skipped` (no model: its columns are null) or `disabled` (config). `skipped` says why training was
    skipped."""

    status: str
    version: int | None = None
    skipped: str | None = None


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
    current_stage: str | None = None
    models: dict[str, ModelOutcome] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Something the run worked around: printed, and kept in the summary and the `runs` table."""
        log.warning(message)
        self.warnings.append(message)

    def meta(self, stage: str, model_version: str | None = None, **extra: Any) -> CommitMetadata:
        return CommitMetadata(
            run_id=self.run_id,
            stage=stage,
            config_hash=self.settings.config_hash(),
            snapshot_date=self.snapshot_date.isoformat() if self.snapshot_date else None,
            model_version=model_version,
            extra=extra,
        )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage and tag its Spark jobs `segscale-stage:<name>` (the Spark UI and its REST API show the
        tag and the description, so a job's shuffle and spill can be traced to the stage that ran it)."""
        record = _StageRecord()
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
            yield record
        finally:
            if context is not None:
                context.removeJobTag(STAGE_TAG + name)
                context.setJobDescription(outer_description)
            record["seconds"] = round(time.perf_counter() - start, 3)
            self.stages[name] = record
            log.info("stage %s: end after %.1f s %s", name, record["seconds"],
                     {k: v for k, v in record.items() if k != "seconds"})

    def lineage_tags(self) -> dict[str, str]:
        return {
            "segscale.run_id": self.run_id, "segscale.config_hash": self.settings.config_hash(),
            "segscale.snapshot_date": self.snapshot_date.isoformat(), "segscale.version": __version__,
            "segscale.input": self.settings.paths.input,
            **{f"lineage.{name}.delta_version": str(version)
               for name, version in self.stages["ingest"]["input_versions"].items()},
        }

    def summary(self, status: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "status": status,
            "snapshot_date": self.snapshot_date.isoformat() if self.snapshot_date else None,
            "config_hash": self.settings.config_hash(),
            "package_version": __version__,
            "stages": self.stages,
            "models": {kind: dataclasses.asdict(outcome) for kind, outcome in self.models.items()},
            "warnings": list(self.warnings),
            **({"failed_stage": self.current_stage} if status == "failed" else {}),
        }


class _StageRecord(dict):
    """A stage's record: a typed record set by a model's stage is kept as its fields."""

    typed: Any = None

    @property
    def record(self) -> Any:
        return self.typed

    @record.setter
    def record(self, value: Any) -> None:
        self.typed = value
        self.update(dataclasses.asdict(value))


SNAPSHOT_PARTITION = {"partition_by": ["snapshot_date"], "mode": "replace_partition"}
# What each command runs; features need validated inputs, segmentation reads only published features and the plan
# only published scores.
STAGES = {
    "validate": ("validate",),
    "features": ("validate", "features"),
    "segment": ("segment",),
    "plan": ("plan",),
    "run": ("validate", "features", "segment", "plan"),
}
CHURN, CLV = "churn", "clv"


def run_pipeline(spark: SparkSession, settings: Settings, snapshot_date: dt.date, run: Run | None = None, *,
                 train: bool = False) -> dict[str, Any]:
    """The main job for one snapshot, or the stages of `run.command`: validate → [train] → features → segment →
    plan. The segment stage scores every customer with the champion churn and CLV models; `run` trains a model
    first when `train` is set or it has no champion. A model the data cannot support is skipped with a warning
    (a compatible champion of an earlier run scores instead, if there is one) and the rest is published. Nothing
    is published when the input fails validation, MLflow is unreachable or a model to score with is unusable."""
    run = run or Run("run", settings, snapshot_date)
    stages = STAGES[run.command]
    enabled = _enabled_models(settings)
    if train and not (enabled and "features" in stages):
        raise InputError("--train needs the run command and churn.enabled or clv.enabled: true")
    if run.command == "plan":
        _require_plan_models(settings)
    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    with _recorded(warehouse, run) as cached:
        models: dict[str, ScoringModel | None] = {}
        to_train: list[str] = []
        if "segment" in stages:
            run.models.update({kind: ModelOutcome("disabled") for kind in (CHURN, CLV) if kind not in enabled})
        if "segment" in stages and enabled:
            # Checked before anything is published: MLflow reachable, usable models (or training planned).
            client = registry.connect(settings.paths.warehouse, settings.churn.experiment)
            for kind, section in enabled.items():
                if "features" in stages and (train or registry.champion_version(client, section.model_name) is None):
                    to_train.append(kind)
                else:
                    models[kind] = registry.scoring_model(client, section.model_name)
                    require_inputs(models[kind], FEATURE_TYPES)
                    run.models[kind] = ModelOutcome("champion", models[kind].version)
        if "validate" in stages:
            cached.append(_validate(warehouse, settings, snapshot_date, run))
        features_df = _features_of(settings, snapshot_date, cached[0]) if "features" in stages else None
        if features_df is not None and CLV in to_train:  # computed once for the CLV fit and the features stage
            features_df = features_df.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            # Before the features are published, so this run's models score them.
            for kind in to_train:
                models[kind] = _train_or_fall_back(kind, warehouse, settings, snapshot_date, run, cached[0],
                                                   client, features_df)
            if features_df is not None:
                with run.stage("features") as record:
                    _write_snapshot(warehouse, "customer_features", features_df, snapshot_date, run, "features",
                                    record)
        finally:
            if features_df is not None:
                features_df.unpersist()
        if "segment" in stages:
            _segment(warehouse, settings, snapshot_date, run, models.get(CHURN), models.get(CLV))
        if "plan" in stages:
            _plan(warehouse, settings, snapshot_date, run)
    return run.summary("succeeded")


def _train_or_fall_back(kind: str, warehouse: Warehouse, settings: Settings, snapshot_date: dt.date, run: Run,
                        validated: Validated, client: MlflowClient, features_df: DataFrame | None
                        ) -> ScoringModel | None:
    """Train `kind` and return the champion left after its gate. When the data cannot support the model, warn
    and return a compatible champion of an earlier run, or None (the model's columns stay null)."""
    name = _enabled_models(settings)[kind].model_name
    try:
        trained = _train(kind, warehouse, settings, snapshot_date, run, validated, features_df)
    except ModelSkipped as skipped:
        return _earlier_champion(kind, name, skipped.reason, run, client)
    model = registry.scoring_model(client, name)
    run.models[kind] = ModelOutcome("trained" if model.version == trained else "champion", model.version)
    return model


def _earlier_champion(kind: str, name: str, reason: str, run: Run, client: MlflowClient) -> ScoringModel | None:
    version = registry.champion_version(client, name)
    model = registry.scoring_model(client, name, version) if version is not None else None
    incompatible = None
    if model is not None:
        try:
            require_inputs(model, FEATURE_TYPES)
        except InputError as exc:
            incompatible = str(exc)
    if model is None or incompatible:
        run.models[kind] = ModelOutcome("skipped", None, reason)
        why_not = f"its champion v{version} cannot score: {incompatible}" if incompatible else "no earlier champion"
        run.warn(f"{kind} model skipped: {reason}. Its columns of customer_scores are null ({why_not}).")
        return None
    run.models[kind] = ModelOutcome("earlier champion", model.version, reason)
    run.warn(f"{kind} model skipped: {reason}. Scored with {model.uri}, the champion of an earlier run.")
    return model


def _enabled_models(settings: Settings) -> dict[str, ChurnSettings | ClvSettings]:
    return {kind: section for kind, section in ((CHURN, settings.churn), (CLV, settings.clv)) if section.enabled}


def _require_plan_models(settings: Settings) -> None:
    if not (settings.churn.enabled and settings.clv.enabled):
        raise InputError("the retention plan needs churn probabilities and CLV: set churn.enabled and "
                         "clv.enabled to true")


def score_snapshot(spark: SparkSession, settings: Settings, snapshot_date: dt.date, run: Run | None = None, *,
                   model_version: int | None = None) -> dict[str, Any]:
    """Re-score churn for a published snapshot with the champion (or `model_version`): replaces the snapshot of
    customer_scores with new churn columns and every other column kept."""
    run = run or Run("score", settings, snapshot_date)
    churn = settings.churn
    if not churn.enabled:
        raise InputError("churn.enabled is false, so there is no churn model to score with")
    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    with _recorded(warehouse, run):
        client = registry.connect(settings.paths.warehouse, churn.experiment)
        model = registry.scoring_model(client, churn.model_name, model_version)
        with run.stage("score") as record:
            scores_df = _snapshot_of(warehouse, "customer_scores", snapshot_date)
            features_df = _snapshot_of(warehouse, "customer_features", snapshot_date)
            churn_df = features_df.transform(with_churn_scores, churn.risk_bands, model,
                                             churn_udf(spark, model))
            rescored_df = (scores_df.drop(*CHURN_COLUMNS, "run_id")
                           .join(churn_df.select("customer_id", *CHURN_COLUMNS), "customer_id", how="left")
                           .select(*[F.lit(run.run_id).alias(c) if c == "run_id" else F.col(c)
                                     for c in scores_df.columns]))
            _write_scores(warehouse, rescored_df, snapshot_date, run, "score", record, model)
        if settings.clv.enabled:  # the plan ranks by churn probability: it follows the new scores
            _plan(warehouse, settings, snapshot_date, run)
    return run.summary("succeeded")


@contextlib.contextmanager
def _recorded(warehouse: Warehouse, run: Run) -> Iterator[list[Validated]]:
    """Record the run in the `runs` table as failed or succeeded; release the validated inputs the body cached
    and MLflow's process-wide state."""
    cached: list[Validated] = []
    try:
        with registry.scoped():
            yield cached
    except Exception:
        _record_run(warehouse, run, "failed")
        raise
    finally:
        for validated in cached:
            _release(validated)
    _record_run(warehouse, run, "succeeded")


def train_models(spark: SparkSession, settings: Settings, snapshot_date: dt.date, run: Run | None = None
                 ) -> dict[str, Any]:
    """Train the enabled models as of `snapshot_date` and register them in MLflow: the churn model out of time
    (with the promotion gate), the CLV models on the whole base. Reads the inputs; publishes no table (the
    `runs` table records the run)."""
    run = run or Run("train", settings, snapshot_date)
    enabled = _enabled_models(settings)
    if not enabled:
        raise InputError("churn.enabled and clv.enabled are both false: there is no model to train")
    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    with _recorded(warehouse, run) as cached:
        registry.connect(settings.paths.warehouse, settings.churn.experiment)
        cached.append(_validate(warehouse, settings, snapshot_date, run, publish_quarantine=False))
        skipped = []
        for kind in enabled:
            try:
                version = _train(kind, warehouse, settings, snapshot_date, run, cached[0])
                run.models[kind] = ModelOutcome("trained", version)
            except ModelSkipped as exc:
                run.models[kind] = ModelOutcome("skipped", None, exc.reason)
                skipped.append(exc)
        if skipped:  # training is this command's only job: the models that could be trained are registered
            registered = [f"{kind} v{o.version}" for kind, o in run.models.items() if o.status == "trained"]
            raise InputError("; ".join(str(exc) for exc in skipped)
                             + (f" (registered: {', '.join(registered)})" if registered else ""))
    return run.summary("succeeded")


def _train(kind: str, warehouse: Warehouse, settings: Settings, snapshot_date: dt.date, run: Run,
           validated: Validated, features_df: DataFrame | None = None) -> int:
    """Train the churn model or fit the CLV model (on `features_df` when the run has computed them); the
    registered version."""
    model = next(m for m in MODELS if m.kind == kind)
    if features_df is None:
        features_df = _features_of(settings, snapshot_date, validated)
    truth = f"{settings.paths.input.rstrip('/')}/customer_truth"
    truth_df = warehouse.store.read(truth) if detect_format(truth) == "delta" else None
    return model.train(TrainingData(snapshot_date, validated, features_df, truth_df), settings, run)


def _write_snapshot(warehouse: Warehouse, name: str, df: DataFrame, snapshot_date: dt.date, run: Run,
                    stage: str, record: dict[str, Any], added_columns: tuple[str, ...] = (), **extra: Any) -> None:
    result = warehouse.write(name, df, replace={"snapshot_date": snapshot_date}, meta=run.meta(stage, **extra),
                             added_columns=added_columns, **SNAPSHOT_PARTITION)
    record.setdefault("published", {})[name] = {"rows": result.rows, "version": result.version}


def _validate(warehouse: Warehouse, settings: Settings, snapshot_date: dt.date, run: Run,
              publish_quarantine: bool = True) -> Validated:
    """Read and validate the inputs; stop when a table's bad share is too high. The flagged rows stay cached
    for the stages after this one (release them with `_release`)."""
    with run.stage("ingest") as record:
        inputs = read_inputs(warehouse.store, settings.paths.input, settings.input.columns)
        record.update(input=settings.paths.input, input_versions=input_versions(settings.paths.input))
    with run.stage("validate") as record:
        validated = validate_inputs(inputs, settings.validation, snapshot_date, run.run_id, run.started_at)
        # Counts, quarantine and features all read the flagged rows: compute them once.
        for flagged_df in validated.flagged.values():
            flagged_df.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counts = reason_counts(validated)
            record["tables"] = counts
            check_bad_ratios(counts, settings.validation.max_bad_ratio)
            if publish_quarantine:
                _write_snapshot(warehouse, "quarantine", validated.quarantine, snapshot_date, run, "validate",
                                record, quarantined=counts)
        except Exception:
            _release(validated)
            raise
    return validated


def _release(validated: Validated | None) -> None:
    for flagged_df in (validated.flagged.values() if validated else ()):
        flagged_df.unpersist()


def _features_of(settings: Settings, snapshot_date: dt.date, validated: Validated) -> DataFrame:
    customers_df = validated.customers.transform(filter_signed_up_by, snapshot_date)
    return customer_features(customers_df, validated.transactions, validated.interactions, snapshot_date,
                             settings.features, settings.rfm.lookback_days)


def _segment(warehouse: Warehouse, settings: Settings, snapshot_date: dt.date, run: Run,
             churn_model: ScoringModel | None, clv_model: ScoringModel | None) -> None:
    with run.stage("segment") as record:
        # Scores are computed from the published features, so this stage never re-reads the transactions.
        features_df = _snapshot_of(warehouse, "customer_features", snapshot_date, run)
        params = clv_params(clv_model) if clv_model else None
        valued_df = features_df.transform(with_clv, params, settings.clv,
                                          clv_model.version if clv_model else None)
        basis = settings.tiers.basis
        if basis == "clv" and clv_model is None:
            basis = "monetary"
            run.warn("value tiers follow monetary (spend so far) instead of tiers.basis clv: this snapshot has no "
                     "CLV model to score with")
        # The tiers' basis joins the RFM dimensions in one sketch. CLV is predicted once: the sketch and the write
        # read the persisted predictions.
        if clv_model is not None:
            valued_df = valued_df.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            sketch = quantile_sketch(valued_df, extra=(basis,) if basis == "clv" else ())
            cuts = cut_points(sketch, settings.rfm)
            thresholds = tier_thresholds(sketch[basis], settings.tiers, basis)
            predict = churn_udf(warehouse.store.spark, churn_model) if churn_model else None
            scored_df = valued_df.transform(with_churn_scores, settings.churn.risk_bands, churn_model, predict)
            scores_df = customer_scores(scored_df, cuts, thresholds, settings, run.run_id)
            record["rfm_cut_points"] = cuts.as_dict()
            record["tier_thresholds"] = {"basis": basis, "high_value_above": thresholds.high_value_above,
                                         "potential_above": thresholds.potential_above}
            # The counts are gathered while the rows are written, not by reading them back.
            counts, value = Observation("tiers_by_stage"), Observation("clv_by_tier")
            observed_df = scores_df.observe(counts, *_tier_stage_counters()).observe(value, *_clv_by_tier())
            _write_scores(warehouse, observed_df, snapshot_date, run, "segment", record, churn_model,
                          rfm_cut_points=cuts.as_dict(), tier_thresholds=record["tier_thresholds"],
                          clv_model=clv_model.uri if clv_model else None)
        finally:
            valued_df.unpersist()
        record["tiers_by_stage"] = _tier_stage_counts(counts.get)
        record["clv_model"] = {"name": clv_model.name, "version": clv_model.version} if clv_model else None
        record["clv_by_tier"] = dict(value.get) if clv_model else None
        record["clv_horizon_days"] = settings.clv.horizon_days
    with run.stage("migration") as record:
        previous = [d for d in warehouse.partition_values("customer_scores", "snapshot_date")
                    if d < snapshot_date.isoformat()]
        if not previous:
            record["previous_snapshot"] = None
            return
        previous_date = dt.date.fromisoformat(previous[-1])
        migration_df = segment_migration(_snapshot_of(warehouse, "customer_scores", previous_date),
                                         _snapshot_of(warehouse, "customer_scores", snapshot_date, run),
                                         previous_date, snapshot_date, run.run_id)
        record["previous_snapshot"] = previous_date.isoformat()
        _write_snapshot(warehouse, "segment_migration", migration_df, snapshot_date, run, "migration", record)


def _write_scores(warehouse: Warehouse, scores_df: DataFrame, snapshot_date: dt.date, run: Run, stage: str,
                  record: dict[str, Any], model: ScoringModel | None, **extra: Any) -> None:
    """Publish the snapshot of customer_scores; the summary and the commit name the churn model, and the rows per
    risk band are counted during the write."""
    bands = Observation("churn_risk_bands")
    band = F.col("churn_risk_band")
    observed_df = scores_df.observe(bands, *[F.count_if(band == F.lit(b)).alias(b) for b in RISK_BANDS],
                                    F.count_if(band.isNull()).alias("unscored"))
    _write_snapshot(warehouse, "customer_scores", observed_df, snapshot_date, run, stage, record,
                    model_version=model.uri if model else None, **extra)
    record["churn_model"] = {"name": model.name, "version": model.version} if model else None
    record["churn_risk_bands"] = dict(bands.get)


def _snapshot_of(warehouse: Warehouse, name: str, snapshot_date: dt.date, run: Run | None = None) -> DataFrame:
    """The snapshot's rows of a published table: written earlier in `run` (perhaps none: a snapshot nobody had
    signed up by), or published before."""
    published_now = run is not None and any(name in record.get("published", {}) for record in run.stages.values())
    if not published_now and (not warehouse.exists(name) or snapshot_date.isoformat() not in
                              warehouse.partition_values(name, "snapshot_date")):
        raise InputError(f"{name} has no snapshot {snapshot_date} in {warehouse.root}; run the earlier stages "
                         f"for that date first")
    return warehouse.read(name).where(F.col("snapshot_date") == F.lit(snapshot_date))


def _tier_stage_counters() -> list[Column]:
    tier, stage = F.col("value_tier"), F.col("lifecycle_stage")
    return [F.count_if((tier == F.lit(t)) & (stage == F.lit(s))).alias(f"{t}/{s}")
            for t in VALUE_TIERS for s in LIFECYCLE_STAGES]


def _clv_by_tier() -> list[Column]:
    tier = F.col("value_tier")
    return [F.coalesce(F.sum(F.when(tier == F.lit(t), F.col("clv"))), F.lit(0.0)).alias(t) for t in VALUE_TIERS]


def _plan(warehouse: Warehouse, settings: Settings, snapshot_date: dt.date, run: Run) -> None:
    """Publish retention_plan and retention_summary from the snapshot's published customer_scores. Without a
    churn probability and a CLV for anyone (a model disabled or skipped), the plan is empty and retention_summary
    says why, so an earlier plan of the snapshot never stays behind."""
    with run.stage("plan") as record:
        retention = settings.retention
        scores_df = _snapshot_of(warehouse, "customer_scores", snapshot_date, run)
        scored = scored_by_tier(scores_df)
        note = None if sum(scored.values()) else _why_no_plan(settings, run)
        with ranked(candidates(scores_df, retention), retention.budget) as ranked_df:
            plan = Observation("plan_by_tier")
            _write_snapshot(warehouse, "retention_plan",
                            retention_plan(ranked_df, run.run_id).observe(plan, *plan_counters()),
                            snapshot_date, run, "plan", record, budget=retention.budget)
            rows = summary_rows(plan.get, scored, retention, note)
        summary_df = warehouse.store.spark.createDataFrame(
            [{**row, "snapshot_date": snapshot_date, "run_id": run.run_id} for row in rows], SUMMARY_SCHEMA)
        _write_snapshot(warehouse, "retention_summary", summary_df, snapshot_date, run, "plan", record,
                        added_columns=("note",), budget=retention.budget)
        if note and settings.churn.enabled and settings.clv.enabled:  # not what the config asked for
            run.warn(f"the retention plan is empty: {note}")
        spend = sum(row["spend"] for row in rows)
        record["retention"] = {
            "budget": retention.budget, "spend": spend, "note": note,
            "customers_targeted": sum(row["customers_targeted"] for row in rows),
            "expected_saved_value": sum(row["expected_saved_value"] for row in rows),
            "tiers": {row["value_tier"]: {k: row[k] for k in ("treatment", "scored_customers", *PLAN_METRICS,
                                                               "share_of_budget", "roi")} for row in rows},
        }


def _why_no_plan(settings: Settings, run: Run) -> str:
    """Why no customer of the snapshot has both a churn probability and a CLV."""
    disabled = [f"{kind}.enabled is false" for kind, section in ((CHURN, settings.churn), (CLV, settings.clv))
                if not section.enabled]
    if disabled:
        return " and ".join(disabled)
    skipped = [f"no {kind} model ({outcome.skipped})" for kind, outcome in run.models.items()
               if outcome.status == "skipped"]
    if skipped:
        return "; ".join(skipped)
    return "no customer of this snapshot has both a churn probability and a CLV (they need a purchase)"


def _tier_stage_counts(observed: dict[str, int]) -> dict[str, dict[str, int]]:
    """{tier: {stage: customers}} from the observed counters, leaving out empty combinations."""
    counts: dict[str, dict[str, int]] = {}
    for key, customers in observed.items():
        if customers:
            tier, stage = key.split("/")
            counts.setdefault(tier, {})[stage] = customers
    return counts


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


# Commands whose runs publish snapshot tables; the newest of them says what a snapshot's tables hold.
PUBLISHING = ("run", *STAGES, "score")


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
    if not warehouse.exists(RUNS_TABLE):
        return False
    runs = open_table(warehouse.uri(RUNS_TABLE)).to_pyarrow_dataset().to_table(
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


def _record_run(warehouse: Warehouse, run: Run, status: str) -> None:
    """Append the run, its effective config and summary to the `runs` table (best effort on failure)."""
    row = (run.run_id, run.command, run.snapshot_date, status, run.started_at, dt.datetime.now(dt.UTC),
           run.settings.config_hash(), run.settings.to_json(), json.dumps(run.summary(status), default=str),
           __version__, list(run.warnings))
    try:
        runs_df = warehouse.store.spark.createDataFrame([row], RUNS_SCHEMA)
        warehouse.write(RUNS_TABLE, runs_df, mode="append", meta=run.meta("record run"), added_columns=("warnings",))
    except Exception as exc:  # recording must never hide the run's own outcome
        if status == "succeeded":
            raise
        log.warning("could not record failed run %s: %s", run.run_id, exc)
