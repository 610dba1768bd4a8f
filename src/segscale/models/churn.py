"""The churn model: trained out of time on a capped sample pulled to the driver, logged to MLflow in skops format
with explicit trusted types, promoted by the gate, and scored on the executors. Definitions: docs/models.md."""

from __future__ import annotations

import dataclasses
import gc
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from segscale.config import ChurnSettings, RiskBands, Settings
from segscale.errors import ConfigError, ModelSkipped, SegscaleError
from segscale.models import registry
from segscale.models.base import Trainer, TrainingData
from segscale.models.churn_classifier import (
    MODEL_FEATURES,
    build_estimator,
    charts,
    classification_metrics,
    evaluate,
    fit_model,
    flat_metrics,
    model_inputs,
    predict_churn,
    usable_features,
)
from segscale.models.registry import ScoringModel, pinned, require_inputs
from segscale.transforms.labels import (
    CUTOFF,
    LABEL,
    TRUE_LABEL,
    TrainingSet,
    capped_sample,
    check_trainable,
    side_counts,
    training_set,
    with_true_dropout,
)
from segscale.transforms.monitoring import SCORE, Reference
from segscale.transforms.rfm import is_buyer

# What scoring adds to customer_scores.
CHURN_COLUMNS = ("churn_probability", "churn_risk_band", "model_name", "model_version")
LOW, MEDIUM, HIGH, CRITICAL = "low", "medium", "high", "critical"
RISK_BANDS = (LOW, MEDIUM, HIGH, CRITICAL)
# Each band's chart colour, from calm to alarming.
RISK_BAND_COLOURS = {LOW: "#7fb77e", MEDIUM: "#f2c14e", HIGH: "#f08a4b", CRITICAL: "#c0392b"}
# The only types outside skops' own safe set that segscale's models may contain. A model needing anything else
# is refused when it is saved (and skops refuses it when it is loaded), whatever its origin.
TRUSTED_TYPES = frozenset({
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
})


@dataclass(frozen=True)
class LabelledRecord:
    """The `training set` stage until the sample is drawn: the out-of-time split and labelled buyers per side."""

    holdout_cutoff: str
    train_cutoffs: list[str]
    labelled: dict[str, dict[str, int]]


@dataclass(frozen=True)
class TrainingSetRecord(LabelledRecord):
    """The `training set` stage: the split, the labelled buyers and the rows sampled to the driver per side."""

    train_rows: int
    holdout_rows: int


@dataclass(frozen=True)
class TrainRecord:
    """The `train` stage: the new version, its holdout metrics against the baselines, and the gate's decision."""

    mlflow_run_id: str
    tracking_uri: str
    model: str
    model_version: int
    metrics: dict[str, float]
    baselines_roc_auc: dict[str, float]
    beats_baselines: bool
    promotion: dict[str, Any]
    features: list[str]
    features_dropped: dict[str, str]


@dataclass(frozen=True)
class ChurnScorer:
    """A pinned version and its UDF: a struct of the model's inputs in, P(churned) out."""

    model: ScoringModel
    predict: Callable[[Column], Column]


class ChurnModel:
    kind = "churn"
    columns = CHURN_COLUMNS
    # Trains on labelled rows of earlier cutoffs, not on the snapshot's features.
    uses_features = False

    def enabled(self, settings: Settings) -> bool:
        return settings.churn.enabled

    def registered_name(self, settings: Settings) -> str:
        return settings.churn.model_name

    def train(self, data: TrainingData, settings: Settings, trainer: Trainer) -> int:
        """The training set from the validated inputs, then fit, evaluate, track, register and gate; the new
        version. ModelSkipped when the data cannot support a model."""
        churn = settings.churn
        try:
            build_estimator(churn)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        with trainer.stage("training set") as stage:
            labelled, train, holdout = _training_sample(data, settings, stage)
        with trainer.stage("train") as stage:
            stage.record = _fit_and_register(settings, trainer, train, holdout, labelled)
        return stage.record.model_version

    def load(self, spark: SparkSession, model: ScoringModel) -> ChurnScorer:
        return ChurnScorer(model, churn_udf(model))

    def predict(self, features_df: DataFrame, loaded: ChurnScorer | None, settings: Settings) -> DataFrame:
        return with_churn_scores(features_df, settings.churn.risk_bands, loaded.model if loaded else None,
                                 loaded.predict if loaded else None)


def _training_sample(data: TrainingData, settings: Settings, stage: Any
                     ) -> tuple[TrainingSet, pd.DataFrame, pd.DataFrame]:
    """The labelled rows of every cutoff, counted, checked and sampled to at most churn.max_train_rows per side."""
    churn = settings.churn
    validated = data.validated
    labelled = training_set(validated.customers, validated.transactions, validated.interactions,
                            data.snapshot_date, settings)
    # Counting the labels, then sampling both sides, reads the labelled rows three times: keep them (every cutoff
    # comes from one pass over the events, so one computation serves both sides).
    labelled.rows.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = side_counts(labelled)
        stage.record = LabelledRecord(
            holdout_cutoff=labelled.holdout_cutoff.isoformat(),
            train_cutoffs=[c.isoformat() for c in labelled.cutoffs[1:]],
            labelled={side: {"churned": c[True], "retained": c[False]}
                      for side, c in zip(("train", "holdout"), counts, strict=True)})
        check_trainable(*counts, labelled, churn)
        holdout_df = labelled.holdout
        if data.truth is not None:
            holdout_df = with_true_dropout(holdout_df, data.truth, labelled.holdout_cutoff)
        # The only rows pulled to the driver: at most churn.max_train_rows per side, one fraction per label, and of
        # those only the columns the fit and the evaluation read (ids and dates as Python objects would double
        # the driver's memory). They arrive in a stated order, the latest cutoff first and then by customer: the
        # calibration folds are cut in row order, so the fit must not depend on how Spark laid the rows out.
        capped = [capped_sample(rows_df, c, churn.max_train_rows, churn.sample_seed)
                  for rows_df, c in zip((labelled.train, holdout_df), counts, strict=True)]
        pulled = [c for c in (*MODEL_FEATURES, LABEL, TRUE_LABEL) if c in holdout_df.columns]
        ordered = [rows_df.orderBy(F.col(CUTOFF).desc(), "customer_id")
                   .select(*[c for c in pulled if c in rows_df.columns]) for rows_df in capped]
        train, holdout = [rows_df.toPandas() for rows_df in ordered]  # small: at most churn.max_train_rows each
    finally:
        labelled.rows.unpersist()
    stage.record = TrainingSetRecord(**dataclasses.asdict(stage.record), train_rows=len(train),
                                     holdout_rows=len(holdout))
    return labelled, train, holdout


def _fit_and_register(settings: Settings, trainer: Trainer, train: pd.DataFrame, holdout: pd.DataFrame,
                      data: TrainingSet) -> TrainRecord:
    churn = settings.churn
    client = registry.connect(settings.paths.warehouse, churn.experiment)
    features, dropped = usable_features(train)
    if not features:
        raise ModelSkipped("churn", "every feature is missing or has one value in every training row")
    try:
        model = fit_model(train, features, churn)
    except ValueError as exc:  # scikit-learn's word for data it cannot fit
        raise ModelSkipped("churn", f"{churn.estimator} could not be fitted on the training rows: {exc}") from None
    evaluation = evaluate(model, train, holdout, settings.lifecycle)
    y_holdout = holdout[LABEL].astype(int).to_numpy()

    def champion_auc(version: int) -> float:
        champion = load_classifier(churn.model_name, version)
        return classification_metrics(y_holdout, predict_churn(champion, holdout))["roc_auc"]

    with mlflow.start_run(run_name=f"churn {trainer.run_id}") as ml_run:
        mlflow.log_params(_params(churn, data, len(train), len(holdout), features, dropped))
        mlflow.set_tags(trainer.lineage_tags())
        mlflow.log_metrics({k: v for k, v in flat_metrics(evaluation).items() if v == v})  # NaN is not loggable
        mlflow.log_dict(evaluation, "evaluation.json")
        mlflow.log_dict({"features": features, "dropped": dropped}, "features.json")
        mlflow.log_dict(drift_reference(model, train, holdout, features, data).as_dict(), DRIFT_REFERENCE)
        with tempfile.TemporaryDirectory() as charts_dir:
            for chart in charts(model, holdout, evaluation, Path(charts_dir), churn.sample_seed):
                mlflow.log_artifact(str(chart), "charts")
        version = log_classifier(model, churn.model_name, model_inputs(holdout.head(5), features))
        promotion = registry.gate(client, churn.model_name, version, evaluation["model"]["roc_auc"],
                                  churn.promotion_tolerance, champion_auc)
        if promotion.champion_auc is not None:
            mlflow.log_metric("champion_holdout_roc_auc", promotion.champion_auc)
        mlflow.set_tags({"promotion_decision": "promoted" if promotion.promoted else "kept champion",
                         "promotion_reason": promotion.reason})
    if not evaluation["beats_baselines"]:
        trainer.warn(f"churn model v{version} does not beat both baselines on the holdout: ROC-AUC "
                     f"{evaluation['model']['roc_auc']:.4f} against " + ", ".join(
                         f"{name} {m['roc_auc']:.4f}" for name, m in evaluation["baselines"].items()))
    return TrainRecord(
        mlflow_run_id=ml_run.info.run_id, tracking_uri=mlflow.get_tracking_uri(), model=churn.model_name,
        model_version=version, metrics=evaluation["model"],
        baselines_roc_auc={name: m["roc_auc"] for name, m in evaluation["baselines"].items()},
        beats_baselines=evaluation["beats_baselines"], promotion=dataclasses.asdict(promotion),
        features=features, features_dropped=dropped)


DRIFT_REFERENCE = "drift_reference.json"  # the version's training distribution, an artifact of its MLflow run


def drift_reference(model: Any, train: pd.DataFrame, holdout: pd.DataFrame, features: list[str],
                    data: TrainingSet) -> Reference:
    """What monitoring compares later snapshots with: the quantile bins of every feature over the training rows,
    and of the churn probability over the holdout (the model's out-of-sample scores, as in production)."""
    columns = {name: values.to_numpy() for name, values in model_inputs(train, features).items()}
    return Reference.of({**columns, SCORE: predict_churn(model, holdout)}, data.holdout_cutoff)


def _params(churn: ChurnSettings, data: TrainingSet, train_rows: int, holdout_rows: int, features: list[str],
            dropped: dict[str, str]) -> dict[str, Any]:
    return {
        "estimator": churn.estimator, **{f"estimator.{k}": v for k, v in churn.estimator_params.items()},
        "horizon_days": churn.horizon_days, "labelled_cutoffs": churn.labelled_cutoffs,
        "calibration": churn.calibration, "calibration_folds": churn.calibration_folds,
        "max_train_rows": churn.max_train_rows, "sample_seed": churn.sample_seed,
        "holdout_cutoff": data.holdout_cutoff.isoformat(),
        "train_cutoffs": ",".join(c.isoformat() for c in data.cutoffs[1:]),
        "train_rows": train_rows, "holdout_rows": holdout_rows,
        "features": ",".join(features), "features_dropped": ",".join(dropped) or "-",
    }


# ---- scoring -----------------------------------------------------------------------------------------------------
def risk_band(probability: Column, bands: RiskBands) -> Column:
    """low / medium / high / critical from the bands' inclusive lower bounds; null stays null."""
    return (
        F.when(probability >= bands.critical, F.lit(CRITICAL))
        .when(probability >= bands.high, F.lit(HIGH))
        .when(probability >= bands.medium, F.lit(MEDIUM))
        .when(probability.isNotNull(), F.lit(LOW))
    )


def with_churn_scores(features_df: DataFrame, bands: RiskBands, model: ScoringModel | None = None,
                      predict: Callable[[Column], Column] | None = None) -> DataFrame:
    """Adds churn_probability (null for prospects), churn_risk_band, model_name and model_version. `predict`
    maps a struct of the model's inputs to P(churned); without a model the four columns are null."""
    if model is None or predict is None:
        return features_df.select(
            "*", F.lit(None).cast("double").alias("churn_probability"),
            F.lit(None).cast("string").alias("churn_risk_band"), F.lit(None).cast("string").alias("model_name"),
            F.lit(None).cast("int").alias("model_version"))
    require_inputs(model, features_df.columns)
    # The model sees float64 (nullable integers arrive as NaN, as in training).
    inputs = F.struct(*[F.col(name).cast("double").alias(name) for name in model.inputs])
    probability_df = features_df.select("*", F.when(is_buyer(), predict(inputs)).alias("churn_probability"))
    return probability_df.select(
        "*", risk_band(F.col("churn_probability"), bands).alias("churn_risk_band"),
        F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version"))


def churn_udf(model: ScoringModel) -> Callable[[Column], Column]:
    """The registered version as a pandas UDF that predicts on the executors in Arrow batches: a struct of the
    model's inputs in, P(churned) out. The driver loads the registered artifact once (skops, its trusted types
    checked) and the fitted estimator travels with the UDF, so a Python worker imports scikit-learn to predict and
    nothing of MLflow (docs/decisions.md)."""
    classifier = load_classifier(model.name, model.version)

    def churned(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        # PySpark's worker runs a full garbage collection after every task. Frozen before the first batch, the
        # estimator and scikit-learn's modules (here for the worker's life) are not walked again each time.
        gc.freeze()
        for inputs in batches:
            yield pd.Series(classifier.predict_proba(inputs)[:, 1])

    return F.pandas_udf(churned, "double")


# ---- MLflow ------------------------------------------------------------------------------------------------------
def log_classifier(model: object, name: str, example: pd.DataFrame) -> int:
    """Log `model` to the active run in skops format (pyfunc predicts probabilities), register it under `name`
    and return the new version. skops may load only TRUSTED_TYPES: MLflow saves the model and loads it back with
    that list before logging anything, so a model containing any other type is refused here, unregistered."""
    signature = infer_signature(example, model.predict_proba(example))
    try:
        info = mlflow.sklearn.log_model(
            model, name="model", serialization_format="skops", skops_trusted_types=sorted(TRUSTED_TYPES),
            signature=signature, input_example=example, registered_model_name=name,
            pyfunc_predict_fn="predict_proba",
            pip_requirements=pinned("mlflow", "numpy", "pandas", "scikit-learn", "scipy", "skops"))
    except MlflowException as exc:
        untrusted = re.search(r"Untrusted types found in the file: (\[[^\]]*\])", str(exc))
        if untrusted is None:
            raise
        raise SegscaleError(f"the model contains types segscale does not trust for loading: {untrusted[1]}; only "
                            f"{sorted(TRUSTED_TYPES)} are allowed (see docs/models.md)") from exc
    return int(info.registered_model_version)


def load_classifier(name: str, version: int) -> object:
    """A registered scikit-learn model; skops refuses any type the version was not saved as trusting."""
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")
