"""The stages the commands are made of (`segscale.pipeline.graph` wires them).

Each stage is `fn(run, **needs) -> value`: it reads through the run's warehouse, calls the transforms and the
models, publishes through `run.publish`, and sets the typed record the summary shows (`run.stage(...)`). The
values passed between stages are the typed results below, never dicts with string keys.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import mlflow
from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from segscale.catalog import (
    AT_RISK_QUEUE,
    CUSTOMER_ATTRIBUTES,
    CUSTOMER_FEATURES,
    CUSTOMER_SCORES,
    MODEL_MONITORING,
    QUARANTINE,
    RETENTION_OUTCOMES,
    RETENTION_PLAN,
    RETENTION_SUMMARY,
    SEGMENT_MIGRATION,
    TIER_ECONOMICS,
    UPLIFT_MODELS,
)
from segscale.errors import InputError, ModelSkipped
from segscale.io.inputs import detect_format, input_versions, read_inputs
from segscale.models import registry
from segscale.models.all import MODELS
from segscale.models.base import Model, TrainingData
from segscale.models.churn import CHURN_COLUMNS, DRIFT_REFERENCE, RISK_BANDS, load_classifier
from segscale.models.churn_classifier import features_of
from segscale.models.clv import clv_params
from segscale.models.reasons import REASON_COLUMNS, REASON_FIELDS, with_reasons
from segscale.models.registry import ScoringModel, require_inputs
from segscale.pipeline.context import ModelOutcome, Published, Run
from segscale.transforms.conform import InputTables
from segscale.transforms.economics import YEAR_DAYS, economics_rows, tier_sums
from segscale.transforms.features import (
    FEATURE_TYPES,
    customer_attributes,
    customer_features,
    filter_signed_up_by,
)
from segscale.transforms.migration import segment_migration
from segscale.transforms.monitoring import (
    BACKTEST,
    DECISION,
    DRIFT,
    Finding,
    Reference,
    backtest,
    backtest_findings,
    bin_counts,
    clv_backtest,
    clv_findings,
    drift_findings,
    finite,
    labelled_scores,
    retrain_decision,
)
from segscale.transforms.outcomes import (
    Uplift,
    group_sums,
    matured,
    outcome_rows,
    plan_treatments,
    plan_uplifts,
    window_purchases,
)
from segscale.transforms.plan import (
    PLAN_METRICS,
    TREATED,
    candidates,
    plan_counters,
    ranked,
    retention_plan,
    scored_by_tier,
    summary_rows,
)
from segscale.transforms.rfm import cut_points, quantile_sketch
from segscale.transforms.segments import LIFECYCLE_STAGES, VALUE_TIERS, customer_scores, tier_thresholds
from segscale.transforms.uplift import UpliftModel, fit_uplift_model, randomized_rows
from segscale.transforms.validate import TableCounts, Validated, check_bad_ratios, reason_counts, validate_inputs

CHURN, CLV = "churn", "clv"


# ---- the values stages pass on -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelChoice:
    """What the run does with one model: score with the pinned `scoring` version, train it first, or neither
    (disabled, or training skipped without an earlier champion: its columns stay null)."""

    model: Model
    scoring: ScoringModel | None = None
    train: bool = False


@dataclass(frozen=True)
class ModelSet:
    """The run's choice for every model of `segscale.models.all.MODELS`, in that order."""

    choices: tuple[ModelChoice, ...]

    def __iter__(self) -> Iterator[ModelChoice]:
        return iter(self.choices)

    def scoring(self, kind: str) -> ScoringModel | None:
        return next(c.scoring for c in self.choices if c.model.kind == kind)

    def with_choice(self, choice: ModelChoice) -> ModelSet:
        return ModelSet(tuple(choice if c.model.kind == choice.model.kind else c for c in self.choices))


@dataclass(frozen=True)
class Features:
    """The snapshot's features: computed from the validated inputs (with the customers' attributes, published
    beside them), or read from the published table."""

    df: DataFrame
    attributes: DataFrame | None = None


@dataclass(frozen=True)
class Scores:
    """The snapshot of customer_scores this run published."""

    df: DataFrame


# ---- the records stages leave in the summary ---------------------------------------------------------------------
@dataclass(frozen=True)
class IngestRecord:
    input: str
    input_versions: dict[str, int | None]


@dataclass(frozen=True)
class ValidateRecord:
    tables: dict[str, TableCounts]


@dataclass(frozen=True)
class ScoreRecord:
    """Who scored churn and how many customers fell in each risk band (counted while the rows were written)."""

    churn_model: dict[str, Any] | None
    churn_risk_bands: dict[str, int]


@dataclass(frozen=True)
class SegmentRecord(ScoreRecord):
    rfm_cut_points: dict[str, list[float]]
    tier_thresholds: dict[str, Any]
    tiers_by_stage: dict[str, dict[str, int]]
    clv_model: dict[str, Any] | None
    clv_by_tier: dict[str, float] | None
    clv_horizon_days: int


@dataclass(frozen=True)
class MigrationRecord:
    """The snapshot this one is compared with, and the next later snapshot, whose migration (from this one) the
    stage published again, with its commit."""

    previous_snapshot: str | None
    next_snapshot: str | None = None
    next_published: Published | None = None


@dataclass(frozen=True)
class PlanRecord:
    retention: dict[str, Any]


@dataclass(frozen=True)
class OutcomesRecord:
    """The plans measured by this run (snapshot → per tier the treated and control groups, the incremental
    retention with its interval and the learned uplift), the earlier plans still within their horizon, and the
    uplift per tier the snapshot's plan uses."""

    measured: dict[str, dict[str, dict[str, Any]]]
    waiting: list[str]
    uplifts: dict[str, dict[str, Any]]
    uplift_model: dict[str, Any] | None = None


OUTCOME_FIGURES = ("treatment", "customers_treated", "customers_controlled", "incremental_retention",
                   "incremental_retention_low", "incremental_retention_high", "realized_uplift", "learned_uplift")


@dataclass(frozen=True)
class Uplifts:
    """What the snapshot's plan values its candidates with: per tier, the configured or learned uplift (source
    `model` when the per-customer uplift model replaces it), and that model."""

    tiers: dict[str, Uplift]
    model: UpliftModel | None = None

    @property
    def incremental_retention(self) -> Column | None:
        return self.model.incremental_retention() if self.model is not None else None

    def record(self) -> dict[str, dict[str, Any]]:
        return {tier: {"uplift": u.value, "source": u.source, "plans": list(u.plans)} for tier, u in self.tiers.items()}


# ---- models --------------------------------------------------------------------------------------------------
def choose_models(run: Run, train: bool) -> ModelSet:
    """Which model scores the snapshot: the champion, or a new version this run trains first (with --train, or
    when there is no champion yet). Checked before anything is read: MLflow answers, champions can score."""
    return _choose(run, may_train=True, train=train)


def champions(run: Run) -> ModelSet:
    """The champions that score the published features (every enabled model must have one)."""
    return _choose(run, may_train=False, train=False)


def every_model_to_train(run: Run) -> ModelSet:
    """Every enabled model, to be trained (MLflow must answer)."""
    registry.connect(run.settings.paths.warehouse, run.settings.churn.experiment)
    return ModelSet(tuple(ModelChoice(m, train=m.enabled(run.settings)) for m in MODELS))


def _choose(run: Run, *, may_train: bool, train: bool) -> ModelSet:
    settings = run.settings
    choices = []
    client = None
    for model in MODELS:
        if not model.enabled(settings):
            run.models[model.kind] = ModelOutcome("disabled")
            choices.append(ModelChoice(model))
            continue
        client = client or registry.connect(settings.paths.warehouse, settings.churn.experiment)
        name = model.registered_name(settings)
        champion = registry.champion_version(client, name)
        policy = retrain_requested(run, model.kind, champion) if may_train and not train and champion else None
        if may_train and (train or champion is None or policy):
            if policy:
                run.warn(f"training a new {model.kind} model as the monitoring policy says ({policy})")
            choices.append(ModelChoice(model, train=True))
            continue
        scoring = registry.scoring_model(client, name)
        require_inputs(scoring, FEATURE_TYPES)
        run.models[model.kind] = ModelOutcome("champion", scoring.version)
        choices.append(ModelChoice(model, scoring))
    return ModelSet(tuple(choices))


def train_models(run: Run, models: ModelSet, validated: Validated, features: Features) -> ModelSet:
    """Train the models chosen for training, before the features are published so this run's models score them.
    A model the data cannot support is skipped with a warning; a compatible champion of an earlier run scores
    instead, if there is one."""
    to_train = [choice for choice in models if choice.train]
    if any(choice.model.uses_features for choice in to_train):
        run.keep(features.df)  # a second reader: the features stage writes them (and releases them)
    data = _training_data(run, validated, features)
    client = registry.connect(run.settings.paths.warehouse, run.settings.churn.experiment) if to_train else None
    for choice in to_train:
        model, name = choice.model, choice.model.registered_name(run.settings)
        try:
            trained = model.train(data, run.settings, run)
        except ModelSkipped as skipped:
            scoring = _earlier_champion(run, model, name, skipped.reason, client)
        else:
            scoring = registry.scoring_model(client, name)
            run.models[model.kind] = ModelOutcome("trained" if scoring.version == trained else "champion",
                                                  scoring.version)
        models = models.with_choice(ModelChoice(model, scoring))
    return models


def train_every_model(run: Run, models: ModelSet, validated: Validated, features: Features) -> ModelSet:
    """`segscale train`: train every enabled model; a model the data cannot support fails the command (training
    is its only job) after the others are registered."""
    data = _training_data(run, validated, features)
    skipped = []
    for choice in models:
        if not choice.train:
            continue
        try:
            run.models[choice.model.kind] = ModelOutcome("trained", choice.model.train(data, run.settings, run))
        except ModelSkipped as exc:
            run.models[choice.model.kind] = ModelOutcome("skipped", None, exc.reason)
            skipped.append(exc)
    if skipped:
        registered = [f"{kind} v{o.version}" for kind, o in run.models.items() if o.status == "trained"]
        raise InputError("; ".join(str(exc) for exc in skipped)
                         + (f" (registered: {', '.join(registered)})" if registered else ""))
    return models


def _training_data(run: Run, validated: Validated, features: Features) -> TrainingData:
    truth = f"{run.settings.paths.input.rstrip('/')}/customer_truth"  # only generated inputs have one
    truth_df = run.warehouse.store.read(truth) if detect_format(truth) == "delta" else None
    return TrainingData(run.snapshot_date, validated, features.df, truth_df)


def _earlier_champion(run: Run, model: Model, name: str, reason: str, client: Any) -> ScoringModel | None:
    version = registry.champion_version(client, name)
    scoring = registry.scoring_model(client, name, version) if version is not None else None
    incompatible = None
    if scoring is not None:
        try:
            require_inputs(scoring, FEATURE_TYPES)
        except InputError as exc:
            incompatible = str(exc)
    kind = model.kind
    if scoring is None or incompatible:
        run.models[kind] = ModelOutcome("skipped", None, reason)
        why_not = f"its champion v{version} cannot score: {incompatible}" if incompatible else "no earlier champion"
        run.warn(f"{kind} model skipped: {reason}. Its columns of customer_scores are null ({why_not}).")
        return None
    run.models[kind] = ModelOutcome("earlier champion", scoring.version, reason)
    run.warn(f"{kind} model skipped: {reason}. Scored with {scoring.uri}, the champion of an earlier run.")
    return scoring


# ---- inputs and features -------------------------------------------------------------------------------------
def ingest(run: Run) -> InputTables:
    """Read the input tables (Delta, Parquet or CSV) into frames of the input contract."""
    settings = run.settings
    with run.stage("ingest") as stage:
        inputs = read_inputs(run.warehouse.store, settings.paths.input, settings.input.columns)
        stage.record = IngestRecord(settings.paths.input, input_versions(settings.paths.input))
    return inputs


def validate(run: Run, inputs: InputTables) -> Validated:
    """Flag every input row, stop when a table's bad share is too high, publish the snapshot's quarantine."""
    return _validated(run, inputs, publish=True)


def check_inputs(run: Run, inputs: InputTables) -> Validated:
    """Validate like `validate`, without publishing the quarantine (`segscale train`)."""
    return _validated(run, inputs, publish=False)


def _validated(run: Run, inputs: InputTables, *, publish: bool) -> Validated:
    settings = run.settings
    with run.stage("validate") as stage:
        validated = validate_inputs(inputs, settings.validation, run.snapshot_date, run.run_id, run.started_at)
        # Counts, quarantine, features and the training set all read the flagged rows: each table's checks and its
        # one shuffle are computed once, kept for the whole run.
        for kept_df in validated.kept:
            run.keep(kept_df)
        counts = reason_counts(validated)
        stage.record = ValidateRecord(counts)
        check_bad_ratios(counts, settings.validation.max_bad_ratio)
        if publish:
            run.publish(stage, QUARANTINE, validated.quarantine, quarantined=counts)
    return validated


def compute_features(run: Run, validated: Validated) -> Features:
    """One row of features per customer signed up by the snapshot date (defined here, computed when read)."""
    settings = run.settings
    customers_df = validated.customers.transform(filter_signed_up_by, run.snapshot_date)
    return Features(customer_features(customers_df, validated.transactions, validated.interactions,
                                      run.snapshot_date, settings.features, settings.rfm.lookback_days),
                    customer_attributes(customers_df, run.snapshot_date, run.run_id))


def publish_features(run: Run, features: Features) -> Features:
    """Publish customer_features and customer_attributes; later stages read the published rows, never the events
    again."""
    with run.stage("features") as stage:
        run.publish(stage, CUSTOMER_FEATURES, features.df)
        run.publish(stage, CUSTOMER_ATTRIBUTES, features.attributes)
    run.release(features.df)
    return Features(run.snapshot_of(CUSTOMER_FEATURES))


def published_features(run: Run) -> Features:
    """The snapshot's published customer_features (`segscale segment`)."""
    return Features(run.snapshot_of(CUSTOMER_FEATURES))


# ---- scores ------------------------------------------------------------------------------------------------------
def segment(run: Run, features: Features, models: ModelSet) -> Scores:
    """Score every customer with the chosen models, then RFM, value tiers and lifecycle stages; publish
    customer_scores."""
    settings = run.settings
    with run.stage("segment") as stage:
        clv_model, churn_model = models.scoring(CLV), models.scoring(CHURN)
        basis = settings.tiers.basis
        if basis == "clv" and clv_model is None:
            basis = "monetary"
            run.warn("value tiers follow monetary (spend so far) instead of tiers.basis clv: this snapshot has no "
                     "CLV model to score with")
        predicted_df = _predicted(run, features.df, models)
        # The sketch and the write read the same predictions: computed once.
        if clv_model or churn_model:
            run.keep(predicted_df)
        sketch = quantile_sketch(predicted_df, extra=(basis,) if basis == "clv" else ())
        cuts = cut_points(sketch, settings.rfm)
        thresholds = tier_thresholds(sketch[basis], settings.tiers, basis)
        thresholds_record = {"basis": basis, "high_value_above": thresholds.high_value_above,
                             "potential_above": thresholds.potential_above}
        scores_df = customer_scores(predicted_df, cuts, thresholds, settings, run.run_id,
                                    [column for model in MODELS for column in model.columns])
        # The counts are gathered while the rows are written, not by reading them back.
        counts, value = Observation("tiers_by_stage"), Observation("clv_by_tier")
        observed_df = scores_df.observe(counts, *_tier_stage_counters()).observe(value, *_clv_by_tier())
        bands = _publish_scores(run, stage, observed_df, churn_model, rfm_cut_points=cuts.as_dict(),
                                tier_thresholds=thresholds_record, clv_model=clv_model.uri if clv_model else None)
        run.release(predicted_df)
        stage.record = SegmentRecord(
            churn_model=_named(churn_model), churn_risk_bands=bands, rfm_cut_points=cuts.as_dict(),
            tier_thresholds=thresholds_record, tiers_by_stage=_tier_stage_counts(counts.get),
            clv_model=_named(clv_model), clv_by_tier=dict(value.get) if clv_model else None,
            clv_horizon_days=settings.clv.horizon_days)
    return Scores(run.snapshot_of(CUSTOMER_SCORES))


def rescore(run: Run, churn_version: int | None) -> Scores:
    """`segscale score`: new churn columns for a published snapshot, every other column kept."""
    settings = run.settings
    client = registry.connect(settings.paths.warehouse, settings.churn.experiment)
    churn = next(model for model in MODELS if model.kind == CHURN)
    scoring = registry.scoring_model(client, settings.churn.model_name, churn_version)
    with run.stage("score") as stage:
        scores_df = run.snapshot_of(CUSTOMER_SCORES)
        churn_df = churn.predict(run.snapshot_of(CUSTOMER_FEATURES), churn.load(run.spark, scoring), settings)
        rescored_df = (scores_df.drop(*CHURN_COLUMNS, "run_id")
                       .join(churn_df.select("customer_id", *CHURN_COLUMNS), "customer_id", how="left")
                       .select(*[F.lit(run.run_id).alias(c) if c == "run_id" else F.col(c)
                                 for c in scores_df.columns]))
        bands = _publish_scores(run, stage, rescored_df, scoring, **_segment_details(run))
        stage.record = ScoreRecord(_named(scoring), bands)
    return Scores(run.snapshot_of(CUSTOMER_SCORES))


def _segment_details(run: Run) -> dict[str, Any]:
    """What the segment stage recorded about the snapshot's rows (RFM cut points, tier thresholds, the CLV model),
    from the newest commit of the snapshot that carries it: a score commit names all that shaped the rows it
    keeps, as the segment commit does."""
    day = run.snapshot_date.isoformat()
    for commit in run.warehouse.history(CUSTOMER_SCORES):  # newest first
        extra = commit.metadata.get("extra", {})
        if commit.metadata.get("snapshot_date") == day and "tier_thresholds" in extra:
            return dict(extra)
    return {}


def _predicted(run: Run, features_df: DataFrame, models: ModelSet) -> DataFrame:
    """The features with every model's columns (null for a model that does not score)."""
    predicted_df = features_df
    for choice in models:
        loaded = choice.model.load(run.spark, choice.scoring) if choice.scoring else None
        predicted_df = choice.model.predict(predicted_df, loaded, run.settings)
    return predicted_df


def _publish_scores(run: Run, stage: Any, scores_df: DataFrame, churn_model: ScoringModel | None,
                    **extra: Any) -> dict[str, int]:
    """Publish the snapshot of customer_scores (the commit names the churn model); the rows per risk band,
    counted during the write."""
    bands = Observation("churn_risk_bands")
    band = F.col("churn_risk_band")
    observed_df = scores_df.observe(bands, *[F.count_if(band == F.lit(b)).alias(b) for b in RISK_BANDS],
                                    F.count_if(band.isNull()).alias("unscored"))
    run.publish(stage, CUSTOMER_SCORES, observed_df, model_version=churn_model.uri if churn_model else None,
                **extra)
    return dict(bands.get)


def _named(model: ScoringModel | None) -> dict[str, Any] | None:
    return {"name": model.name, "version": model.version} if model else None


def _tier_stage_counters() -> list[Column]:
    tier, stage = F.col("value_tier"), F.col("lifecycle_stage")
    return [F.count_if((tier == F.lit(t)) & (stage == F.lit(s))).alias(f"{t}/{s}")
            for t in VALUE_TIERS for s in LIFECYCLE_STAGES]


def _tier_stage_counts(observed: dict[str, int]) -> dict[str, dict[str, int]]:
    """{tier: {stage: customers}} from the observed counters, leaving out empty combinations."""
    counts: dict[str, dict[str, int]] = {}
    for key, customers in observed.items():
        if customers:
            tier, stage = key.split("/")
            counts.setdefault(tier, {})[stage] = customers
    return counts


def _clv_by_tier() -> list[Column]:
    tier = F.col("value_tier")
    return [F.coalesce(F.sum(F.when(tier == F.lit(t), F.col("clv"))), F.lit(0.0)).alias(t) for t in VALUE_TIERS]


def migration(run: Run, scores: Scores) -> None:
    """Customers moving between (value tier, lifecycle stage) since the previous snapshot; and, when a later
    snapshot is published, its migration again, from this snapshot's new scores (a rerun or backfill of an older
    snapshot would otherwise leave the next one compared with scores that are no longer published)."""
    with run.stage("migration") as stage:
        day = run.snapshot_date.isoformat()
        snapshots = run.warehouse.partition_values(CUSTOMER_SCORES, "snapshot_date")
        previous, later = [d for d in snapshots if d < day], [d for d in snapshots if d > day]
        if previous:
            previous_date = dt.date.fromisoformat(previous[-1])
            run.publish(stage, SEGMENT_MIGRATION, segment_migration(
                run.snapshot_of(CUSTOMER_SCORES, previous_date), scores.df, previous_date, run.snapshot_date,
                run.run_id))
        next_published = None
        if later:
            next_date = dt.date.fromisoformat(later[0])
            next_published = run.publish(stage, SEGMENT_MIGRATION, segment_migration(
                scores.df, run.snapshot_of(CUSTOMER_SCORES, next_date), run.snapshot_date, next_date, run.run_id),
                snapshot_date=next_date)
        stage.record = MigrationRecord(previous[-1] if previous else None, later[0] if later else None,
                                       next_published)


# ---- outcomes and the plan ---------------------------------------------------------------------------------------
def measure_outcomes(run: Run, validated: Validated) -> Uplifts:
    """Measure every published plan whose horizon has ended by this snapshot and that has no outcome from its
    current rows yet (retention_outcomes); then the uplift each tier's plan uses. A plan without treated or control
    customers (empty, or published before the control groups) has nothing to measure."""
    settings = run.settings
    horizon = settings.churn.horizon_days
    with run.stage("outcomes") as stage:
        plans = run.warehouse.partition_values(RETENTION_PLAN, "snapshot_date") if run.warehouse.exists(
            RETENTION_PLAN) else []
        earlier = [d for d in plans if d < run.snapshot_date.isoformat()]
        due = matured(earlier, run.snapshot_date, horizon)
        outcomes = _outcomes(run)
        measured = {}
        for plan_date in due:
            summary = _plan_summary(run, plan_date)
            if not any((row.get("customers_targeted") or 0) + (row.get("customers_controlled") or 0)
                       for row in summary.values()):
                continue  # an empty plan, or one published before the control groups: nothing to compare
            plan_run = next(iter(summary.values()))["run_id"]
            known = [o for o in outcomes if o["snapshot_date"] == plan_date]
            if known and all(o["plan_run_id"] == plan_run for o in known):
                continue
            next_plan = dt.date.fromisoformat(earlier[earlier.index(plan_date.isoformat()) + 1]) if (
                plan_date.isoformat() != earlier[-1]) else None
            recorded = (plan_treatments(validated.treatments, plan_date, next_plan)
                        if validated.treatments is not None else None)
            sums = group_sums(run.snapshot_of(RETENTION_PLAN, plan_date), validated.transactions, recorded,
                              plan_date, horizon)
            planned = {tier: row.get("uplift") for tier, row in summary.items()}
            rows = outcome_rows(sums, plan_date, run.snapshot_date, planned,
                                [o for o in outcomes if o["snapshot_date"] < plan_date], settings.retention,
                                horizon, run.run_id)
            run.publish(stage, RETENTION_OUTCOMES, run.spark.createDataFrame(rows, RETENTION_OUTCOMES.spark_schema),
                        snapshot_date=plan_date, measured_on=run.snapshot_date.isoformat())
            measured[plan_date.isoformat()] = {row["value_tier"]: {k: row[k] for k in OUTCOME_FIGURES} for row in rows}
            outcomes = [o for o in outcomes if o["snapshot_date"] != plan_date] + rows
        fitted = (_fit_uplift_model(run, stage, validated, outcomes, plans) if settings.retention.uplift_model
                  else None)
        uplifts = _uplifts_as_of(run, outcomes)
        stage.record = OutcomesRecord(measured, [d for d in earlier if dt.date.fromisoformat(d) not in due],
                                      uplifts.record(), _model_record(fitted) if fitted else None)
    return uplifts


def _fit_uplift_model(run: Run, stage: Any, validated: Validated, outcomes: list[dict[str, Any]],
                      published: list[str]) -> UpliftModel | None:
    """Fit the per-customer uplift model on the treated and control customers of every measured plan still in
    retention_plan (`published`: its snapshots), and publish it (uplift_models); None when the latest model was
    fitted on the same plans."""
    horizons = {o["snapshot_date"]: o["horizon_days"] for o in outcomes if o["customers_controlled"]
                and o["snapshot_date"].isoformat() in published and o["horizon_end"] <= run.snapshot_date}
    latest = _latest_uplift_model(run)
    if not horizons or (latest is not None and latest.plans == tuple(d.isoformat() for d in sorted(horizons))):
        return None
    seed = run.settings.retention.holdout_seed
    frames = [randomized_rows(run.snapshot_of(RETENTION_PLAN, day),
                              window_purchases(validated.transactions, day, horizon), seed)
              for day, horizon in sorted(horizons.items())]
    model = fit_uplift_model(functools.reduce(DataFrame.unionByName, frames), run.snapshot_date,
                             [day.isoformat() for day in sorted(horizons)], run.settings.retention.confidence)
    row = model.row(run.run_id)
    run.publish(stage, UPLIFT_MODELS, run.spark.createDataFrame([row], UPLIFT_MODELS.spark_schema),
                qini_coefficient=row["qini_coefficient"])
    if model.note:
        run.warn(f"the per-customer uplift model: {model.note}")
    return model


def _model_record(model: UpliftModel) -> dict[str, Any]:
    return {"plans": list(model.plans), "customers_fitted": model.customers_fitted,
            "customers_evaluated": model.customers_evaluated,
            "qini_coefficient": model.qini.coefficient if model.qini else None,
            "qini_random_sd": model.qini.random_sd if model.qini else None,
            "used_by_plans": model.used, "note": model.note}


def learned_uplifts(run: Run) -> Uplifts:
    """The uplift each tier's plan uses, from the published outcomes (`segscale plan` and `score`)."""
    return _uplifts_as_of(run, _outcomes(run))


def _outcomes(run: Run) -> list[dict[str, Any]]:
    """Every published row of retention_outcomes."""
    if not run.warehouse.exists(RETENTION_OUTCOMES):
        return []
    return [row.asDict() for row in run.warehouse.read(RETENTION_OUTCOMES).collect()]  # small: 3 rows per plan


def _plan_summary(run: Run, plan_date: dt.date) -> dict[str, dict[str, Any]]:
    """The published retention_summary rows of a plan, per tier."""
    rows = run.snapshot_of(RETENTION_SUMMARY, plan_date).collect()  # small: three rows
    return {row["value_tier"]: row.asDict() for row in rows}


def _uplifts_as_of(run: Run, outcomes: list[dict[str, Any]]) -> Uplifts:
    """The uplifts of this snapshot's plan: learned from the outcomes whose window ended by the snapshot, so a
    backfilled snapshot plans with what was known then; with `retention.uplift_model`, the latest uplift model
    fitted on or before the snapshot instead, if it ranks better than random targeting."""
    known = [o for o in outcomes if o["horizon_end"] <= run.snapshot_date]
    tiers = plan_uplifts(known, run.settings.retention)
    model = _latest_uplift_model(run) if run.settings.retention.uplift_model else None
    if model is None or not model.used:
        return Uplifts(tiers)
    return Uplifts({tier: Uplift(None, "model", model.plans) for tier in tiers}, model)


def _latest_uplift_model(run: Run) -> UpliftModel | None:
    """The uplift_models row of the latest snapshot on or before the run's."""
    if not run.warehouse.exists(UPLIFT_MODELS):
        return None
    rows = run.warehouse.read(UPLIFT_MODELS).where(F.col("snapshot_date") <= F.lit(run.snapshot_date)).orderBy(
        F.col("snapshot_date").desc()).limit(1).collect()  # small: one row
    return UpliftModel.from_row(rows[0].asDict()) if rows else None


def published_scores(run: Run) -> Scores:
    """The snapshot's published customer_scores (`segscale plan`)."""
    return Scores(run.snapshot_of(CUSTOMER_SCORES))


def plan(run: Run, scores: Scores, uplifts: Uplifts) -> None:
    """Publish retention_plan and retention_summary from the snapshot's customer_scores. Without a churn
    probability and a CLV for anyone (a model disabled or skipped), the plan is empty and retention_summary says
    why, so an earlier plan of the snapshot never stays behind."""
    settings = run.settings
    with run.stage("plan") as stage:
        retention = settings.retention
        scored = scored_by_tier(scores.df)
        note = None if sum(scored.values()) else _why_no_plan(run)
        with ranked(candidates(scores.df, retention, {t: u.value for t, u in uplifts.tiers.items()},
                               uplifts.incremental_retention), retention) as ranked_df:
            counted = Observation("plan_by_tier")
            run.publish(stage, RETENTION_PLAN, retention_plan(ranked_df, run.run_id).observe(counted,
                                                                                              *plan_counters()),
                        budget=retention.budget, holdout_share=retention.holdout_share,
                        holdout_seed=retention.holdout_seed)
            rows = summary_rows(counted.get, scored, retention, uplifts.tiers, note)
        summary_df = run.spark.createDataFrame(
            [{**row, "snapshot_date": run.snapshot_date, "run_id": run.run_id} for row in rows],
            RETENTION_SUMMARY.spark_schema)
        run.publish(stage, RETENTION_SUMMARY, summary_df, budget=retention.budget)
        if note and settings.churn.enabled and settings.clv.enabled:  # not what the config asked for
            run.warn(f"the retention plan is empty: {note}")
        stage.record = PlanRecord({
            "budget": retention.budget, "spend": sum(row["spend"] for row in rows), "note": note,
            "customers_targeted": sum(row["customers_targeted"] for row in rows),
            "expected_saved_value": sum(row["expected_saved_value"] for row in rows),
            "holdout_share": retention.holdout_share, "uplifts": uplifts.record(),
            "customers_controlled": sum(row["customers_controlled"] for row in rows),
            "tiers": {row["value_tier"]: {k: row[k] for k in ("treatment", "scored_customers", *PLAN_METRICS,
                                                               "share_of_budget", "roi", "tier_budget",
                                                               "capacity")} for row in rows},
        })


@dataclass(frozen=True)
class EconomicsRecord:
    tiers: dict[str, dict[str, Any]]


def economics(run: Run, scores: Scores) -> None:
    """Publish tier_economics: per tier, revenue and cost to serve over the last year, margin, CLV per unit of
    spend and the change since the previous snapshot; its warnings go to the run's."""
    day = run.snapshot_date
    with run.stage("economics") as stage:
        sums = tier_sums(scores.df, run.snapshot_of(CUSTOMER_FEATURES))
        year_start = day - dt.timedelta(days=YEAR_DAYS)
        spend = [row.asDict() for row in run.warehouse.read(RETENTION_SUMMARY).where(
            (F.col("snapshot_date") > F.lit(year_start)) & (F.col("snapshot_date") <= F.lit(day))).select(
            "snapshot_date", "value_tier", "spend").collect()]  # small: three rows per plan of the year
        previous = []
        if run.warehouse.exists(TIER_ECONOMICS):
            snapshots = run.warehouse.partition_values(TIER_ECONOMICS, "snapshot_date")
            earlier = [d for d in snapshots if d < day.isoformat()]
            if earlier:
                previous = [row.asDict() for row in run.snapshot_of(
                    TIER_ECONOMICS, dt.date.fromisoformat(earlier[-1])).collect()]  # small: three rows
        rows = economics_rows(sums, spend, previous, day, run.settings.retention, run.run_id)
        run.publish(stage, TIER_ECONOMICS, run.spark.createDataFrame(rows, TIER_ECONOMICS.spark_schema))
        for row in rows:
            if row["warning"]:
                run.warn(row["warning"])
        stage.record = EconomicsRecord({row["value_tier"]: {k: row[k] for k in (
            "customers", "revenue_365d", "cost_to_serve", "margin", "cost_share", "clv_per_spend", "value_share",
            "warning")} for row in rows})


@dataclass(frozen=True)
class MonitorRecord:
    """The `monitor` stage: the top drifting columns, the snapshots backtested, the alerts, and per model the retrain
    decision and why."""

    drift: dict[str, float]
    backtested: list[str]
    alerts: list[str]
    retrain: dict[str, bool]
    reasons: dict[str, str]
    notes: list[str]


TOP_DRIFT = 5  # drifting columns the summary names


def monitor(run: Run, validated: Validated, scores: Scores) -> None:
    """Publish model_monitoring: the churn model's drift against its training rows, backtests of every snapshot
    whose churn horizon has passed since, alerts and the retrain decisions; alerts go to the run's warnings."""
    settings = run.settings
    if not settings.monitoring.enabled:
        return
    with run.stage("monitor") as stage:
        # MLflow only when a model's artifacts are read: a run without models creates no store.
        client = functools.cache(lambda: registry.connect(settings.paths.warehouse, settings.churn.experiment))
        model = _churn_model_of(scores)
        notes: list[str] = []
        findings = {CHURN: _drift(run, client, model, scores, notes), CLV: []}
        backtested = []
        for scored_on in _to_backtest(run):
            found = _backtests(run, client, validated, scored_on)
            if found is not None:
                backtested.append(scored_on.isoformat())
                for kind in findings:
                    findings[kind] += found[kind]
        # A decision is about the version that scores now: a backtest of a version it replaced does not count.
        current = {CHURN: model.version if model else None, CLV: _clv_version_of(scores)}
        decisions = {kind: retrain_decision([f for version, f in found if version == current[kind]],
                                            settings.monitoring) for kind, found in findings.items()}
        rows = [_monitoring_row(run, kind, version, f) for kind, found in findings.items()
                for version, f in [*found, (current[kind], decisions[kind])]]
        run.publish(stage, MODEL_MONITORING, run.spark.createDataFrame(rows, MODEL_MONITORING.spark_schema),
                    model_version=model.uri if model else None)
        alerts = [f"{kind} {f.kind} {f.subject} {f.metric} {f.value:.4g} (limit {f.threshold:.4g})"
                  for kind, found in findings.items() for _, f in found if f.alert]
        for alert in alerts:
            run.warn(f"monitoring alert: {alert}")
        drift = [f for _, f in findings[CHURN] if f.kind == DRIFT]
        stage.record = MonitorRecord(
            drift={f.subject: round(f.value, 4) for f in drift[:TOP_DRIFT]}, backtested=backtested, alerts=alerts,
            retrain={kind: d.alert for kind, d in decisions.items()},
            reasons={kind: d.note for kind, d in decisions.items()}, notes=notes)


def _drift(run: Run, client: Callable[[], Any], model: ScoringModel | None, scores: Scores, notes: list[str]
           ) -> list[tuple[int | None, Finding]]:
    """PSI of the scoring churn version's features and scores over the snapshot's buyers, against its training
    rows; none (and a note why) without a version or its reference."""
    if model is None:
        notes.append("no churn model scored this snapshot")
        return []
    reference = _churn_artifacts(client(), model)[0]
    if reference is None:
        notes.append(f"{model.name} v{model.version} has no drift reference (trained before monitoring)")
        return []
    buyers_df = scores.df.select("customer_id", "churn_probability").join(
        run.snapshot_of(CUSTOMER_FEATURES), "customer_id").where(F.col("recency_days").isNotNull())
    return [(model.version, f) for f in drift_findings(bin_counts(buyers_df, reference), reference,
                                                        run.settings.monitoring)]


def _backtests(run: Run, client: Callable[[], Any], validated: Validated, scored_on: dt.date
               ) -> dict[str, list[tuple[int | None, Finding]]] | None:
    """The churn and CLV backtests of the scores published on `scored_on`, each with the version that scored;
    None when no model scored that snapshot."""
    settings = run.settings
    scored_df = run.snapshot_of(CUSTOMER_SCORES, scored_on)
    versions = scored_df.where(F.col("model_version").isNotNull() | F.col("clv_model_version").isNotNull()).select(
        "model_name", "model_version", "clv_model_version").limit(1).collect()  # small: one row
    if not versions:
        return None
    churn_version, clv_version = versions[0]["model_version"], versions[0]["clv_model_version"]
    found: dict[str, list[tuple[int | None, Finding]]] = {CHURN: [], CLV: []}
    if churn_version is not None:
        result = backtest(labelled_scores(scored_df, validated.transactions, scored_on, settings.churn.horizon_days))
        if result is not None:
            trained_auc = _churn_artifacts(client(), ScoringModel(versions[0]["model_name"], churn_version, ()))[1]
            found[CHURN] = [(churn_version, f) for f in
                            backtest_findings(result, scored_on, trained_auc, settings.monitoring)]
    if clv_version is not None:
        client()  # the tracking store the version's config is read from
        params = clv_params(ScoringModel(settings.clv.model_name, clv_version, ()))
        rows = clv_backtest(run.snapshot_of(CUSTOMER_FEATURES, scored_on), scored_df, validated.transactions,
                            params, scored_on, run.snapshot_date)
        found[CLV] = [(clv_version, f) for f in clv_findings(rows, scored_on, settings.monitoring)]
    return found


def _monitoring_row(run: Run, kind: str, version: int | None, finding: Finding) -> dict[str, Any]:
    return {"snapshot_date": run.snapshot_date, "model": kind, "model_version": version,
            **{k: getattr(finding, k) for k in ("kind", "reference_date", "subject", "metric", "threshold",
                                                "alert", "customers", "note")},
            "value": finite(finding.value), "run_id": run.run_id}


def _churn_artifacts(client: Any, model: ScoringModel) -> tuple[Reference | None, float | None]:
    """The drift reference and the holdout ROC-AUC a churn version was trained with (None for a version logged
    before monitoring)."""
    run_id = client.get_model_version(model.name, str(model.version)).run_id
    found = {artifact.path for artifact in client.list_artifacts(run_id)}
    reference = (Reference.from_dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/{DRIFT_REFERENCE}"))
                 if DRIFT_REFERENCE in found else None)
    evaluation = mlflow.artifacts.load_dict(f"runs:/{run_id}/evaluation.json") if "evaluation.json" in found else {}
    return reference, evaluation.get("model", {}).get("roc_auc")


def _to_backtest(run: Run) -> list[dt.date]:
    """The published snapshots whose churn horizon has ended by this one and that no other run's monitoring has
    backtested yet, oldest first."""
    if not run.warehouse.exists(CUSTOMER_SCORES):
        return []
    day = run.snapshot_date.isoformat()
    earlier = [d for d in run.warehouse.partition_values(CUSTOMER_SCORES, "snapshot_date") if d < day]
    done: set[dt.date] = set()
    if run.warehouse.exists(MODEL_MONITORING):
        done = {row["reference_date"] for row in run.warehouse.read(MODEL_MONITORING).where(
            (F.col("kind") == F.lit(BACKTEST)) & (F.col("snapshot_date") != F.lit(run.snapshot_date))
        ).select("reference_date").distinct().collect()}  # small: one row per snapshot backtested
    return [d for d in matured(earlier, run.snapshot_date, run.settings.churn.horizon_days) if d not in done]


def _clv_version_of(scores: Scores) -> int | None:
    rows = scores.df.where(F.col("clv_model_version").isNotNull()).select("clv_model_version").limit(
        1).collect()  # small: one row
    return int(rows[0]["clv_model_version"]) if rows else None


def retrain_requested(run: Run, kind: str, champion: int) -> str | None:
    """Why the policy wants `kind` retrained: the latest monitoring decision before this snapshot, when it was
    taken for the version that is still champion and says retrain."""
    if not run.settings.monitoring.enabled or not run.warehouse.exists(MODEL_MONITORING):
        return None
    rows = run.warehouse.read(MODEL_MONITORING).where(
        (F.col("kind") == F.lit(DECISION)) & (F.col("model") == F.lit(kind))
        & (F.col("snapshot_date") < F.lit(run.snapshot_date))).orderBy(F.col("snapshot_date").desc()).limit(
        1).collect()  # small: one row
    if rows and rows[0]["alert"] and rows[0]["model_version"] == champion:
        return f"monitoring of {rows[0]['snapshot_date']}: {rows[0]['note']}"
    return None


@dataclass(frozen=True)
class QueueRecord:
    """The `queue` stage: the customers queued (at risk and on request), the at-risk ones left out by
    queue.max_customers, the churn model explained, and why there are no reasons, if there are none."""

    customers: int
    at_risk: int
    left_out: int
    on_request: int
    churn_model: dict[str, Any] | None
    note: str | None


def queue(run: Run, features: Features, scores: Scores) -> None:
    """Publish at_risk_queue: the at-risk customers of queue.tiers, the highest value at risk first (at most
    queue.max_customers), and those of queue.customers, with their planned treatment and the three strongest
    reasons behind their churn probability (TreeSHAP on the executors)."""
    settings = run.settings.queue
    with run.stage("queue") as stage:
        model = _churn_model_of(scores)
        note = None if settings.enabled else "queue.enabled is false"
        if note is None and model is None:
            note = "no churn model scored this snapshot"
        value_at_risk = F.col("churn_probability") * F.col("clv")
        at_risk = (F.col("value_tier").isin(settings.tiers)
                   & (F.col("churn_probability") >= F.lit(settings.min_churn_probability)))
        requested = F.col("customer_id").isin(settings.customers) if settings.customers else F.lit(False)
        scores_df = scores.df.select("customer_id", "snapshot_date", "value_tier", "lifecycle_stage",
                                     "churn_probability", "clv", value_at_risk.alias("value_at_risk"),
                                     requested.alias("on_request"), at_risk.alias("_at_risk"))
        if not settings.enabled:
            scores_df = scores_df.where(F.lit(False))
        at_risk_total = scores_df.where("_at_risk").count()
        at_risk_df = (scores_df.where("_at_risk").orderBy(F.col("value_at_risk").desc_nulls_last(), "customer_id")
                      .limit(settings.max_customers))
        # Kept: the reasons and the published rows both read the queue.
        queued_df = run.keep(at_risk_df.unionByName(scores_df.where("on_request")).dropDuplicates(["customer_id"])
                             .drop("_at_risk"))
        customers = queued_df.count()
        reasons_df = None
        if note is None:
            registry.connect(run.settings.paths.warehouse, run.settings.churn.experiment)
            classifier = load_classifier(model.name, model.version)
            try:
                reasons_df = with_reasons(queued_df.join(features.df, "customer_id"), classifier,
                                          features_of(classifier))
            except ValueError as exc:
                note = f"no reason codes: {exc}"
                run.warn(f"at_risk_queue has no reason codes: {exc}")
        if reasons_df is None:
            reasons_df = run.spark.createDataFrame([], ", ".join(
                ["customer_id string", *[f"{name} {kind}" for name, kind in REASON_FIELDS.items()]]))
        plan_df = run.snapshot_of(RETENTION_PLAN).select(
            "customer_id", "treatment_group",
            F.when(F.col("treatment_group") == F.lit(TREATED), F.col("treatment")).alias("planned_treatment"))
        queue_df = queued_df.join(reasons_df, "customer_id", "left").join(plan_df, "customer_id", "left").select(
            *[c for c in AT_RISK_QUEUE.column_names if c in queued_df.columns and c != "on_request"],
            "treatment_group", "planned_treatment",
            *[F.try_element_at("reason_phrases", F.lit(k)).alias(name) for k, name in enumerate(REASON_COLUMNS, 1)],
            "reason_features", "reason_contributions", "on_request",
            F.lit(model.version if model else None).cast("int").alias("churn_model_version"),
            F.lit(run.run_id).alias("run_id"))
        run.publish(stage, AT_RISK_QUEUE, queue_df, model_version=model.uri if model else None)
        run.release(queued_df)
        stage.record = QueueRecord(
            customers=customers, at_risk=at_risk_total, left_out=max(at_risk_total - settings.max_customers, 0),
            on_request=len(settings.customers), churn_model=_named(model), note=note)


def _churn_model_of(scores: Scores) -> ScoringModel | None:
    """The churn model version that scored the snapshot (customer_scores' model_name and model_version)."""
    rows = scores.df.where(F.col("model_version").isNotNull()).select("model_name", "model_version").limit(
        1).collect()  # small: one row
    return ScoringModel(rows[0]["model_name"], int(rows[0]["model_version"]), ()) if rows else None


def _why_no_plan(run: Run) -> str:
    """Why no customer of the snapshot has both a churn probability and a CLV."""
    disabled = [f"{model.kind}.enabled is false" for model in MODELS if not model.enabled(run.settings)]
    if disabled:
        return " and ".join(disabled)
    skipped = [f"no {kind} model ({outcome.skipped})" for kind, outcome in run.models.items()
               if outcome.status == "skipped"]
    if skipped:
        return "; ".join(skipped)
    return "no customer of this snapshot has both a churn probability and a CLV (they need a purchase)"

