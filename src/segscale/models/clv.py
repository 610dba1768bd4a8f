"""Customer lifetime value: BG/NBD (purchase and dropout) and Gamma-Gamma (spend per order) fitted on the whole
base by maximum likelihood (definitions: docs/models.md).

The fit never sees customers one by one: Spark aggregates the model inputs into a weighted histogram of distinct
input tuples, only the histogram reaches the driver, and scipy maximises the likelihood with the counts as weights.
The histogram holds exact days and exact spend while it stays under `clv.max_histogram_rows`; beyond, recency and
T are rounded to coarser day bins and spend to a log grid, the finest that fit (`choose_resolution`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from segscale.config import ClvSettings, Settings
from segscale.models import registry
from segscale.models.base import Trainer, TrainingData
from segscale.models.bgnbd import (
    CLV_COLUMNS,
    HISTOGRAM_WEIGHT,
    INPUT_COLUMNS,
    ClvParams,
    Fit,
    Laplace,
    fit_bgnbd,
    fit_gamma_gamma,
    predict_clv,
)
from segscale.models.registry import ScoringModel, pinned

# The resolutions tried, finest first, when clv.bin_days or clv.spend_bin_relative is not fixed in the config.
DAY_BINS = (1, 2, 3, 7, 14, 28, 56, 91)
SPEND_BINS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Resolution:
    """How finely the histograms hold the inputs: recency and T rounded to multiples of `bin_days` (1: exact days),
    mean spend to a log grid of relative width `spend_bin_relative` (0: exact)."""

    bin_days: int
    spend_bin_relative: float


def binned(days: Column, bin_days: int) -> Column:
    """Days rounded to the nearest multiple of `bin_days` (monotone, so t_x <= T survives binning)."""
    if bin_days == 1:
        return days.cast("double")
    return (F.floor(days / F.lit(bin_days) + F.lit(0.5)) * F.lit(bin_days)).cast("double")


def binned_spend(spend: Column, relative: float) -> Column:
    """Spend rounded on a log grid of relative width `relative` (0: exact)."""
    spend = spend.cast("double")
    if relative == 0:
        return spend
    width = F.log1p(F.lit(relative))
    return F.exp(F.round(F.log(spend) / width) * width)


def _is_buyer() -> Column:
    return F.col("bgnbd_frequency").isNotNull() & F.col("bgnbd_T").isNotNull()


def _is_repeat_spender() -> Column:
    return (F.col("bgnbd_frequency") > 0) & (F.col("bgnbd_monetary") > 0)


def _frequency() -> Column:
    return F.col("bgnbd_frequency").cast("double")


def choose_resolution(features_df: DataFrame, settings: ClvSettings) -> tuple[Resolution, dict[str, dict]]:
    """The finest resolution whose histograms stay under clv.max_histogram_rows (the configured bin_days or
    spend_bin_relative when set), and the estimated rows at every candidate. One pass over the inputs counts
    the distinct keys of every candidate histogram with HyperLogLog sketches (order-independent, so the choice
    is the same on any cluster)."""
    day_bins = DAY_BINS if settings.bin_days is None else (settings.bin_days,)
    spend_bins = SPEND_BINS if settings.spend_bin_relative is None else (settings.spend_bin_relative,)
    x = _frequency()
    counters = [
        *[F.approx_count_distinct(F.when(_is_buyer(), F.xxhash64(
            x, binned(F.col("bgnbd_recency"), k), binned(F.col("bgnbd_T"), k)))).alias(f"days_{k}")
          for k in day_bins],
        *[F.approx_count_distinct(F.when(_is_repeat_spender(), F.xxhash64(
            x, binned_spend(F.col("bgnbd_monetary"), rel)))).alias(f"spend_{i}")
          for i, rel in enumerate(spend_bins)],
    ]
    estimate = features_df.agg(*counters).first()  # small: one row of counts
    limit = settings.max_histogram_rows
    days = {k: int(estimate[f"days_{k}"]) for k in day_bins}
    spend = {rel: int(estimate[f"spend_{i}"]) for i, rel in enumerate(spend_bins)}
    # The coarsest candidate when even that one is over the limit: the fit then takes longer, nothing fails.
    chosen_days = next((k for k in day_bins if days[k] <= limit), day_bins[-1])
    chosen_spend = next((rel for rel in spend_bins if spend[rel] <= limit), spend_bins[-1])
    return (Resolution(chosen_days, chosen_spend),
            {"bgnbd_rows_by_bin_days": days, "spend_rows_by_relative_width": spend, "max_rows": limit})


def bgnbd_histogram(features_df: DataFrame, resolution: Resolution) -> pd.DataFrame:
    """Buyers' (x, t_x, T) in days, binned to `resolution.bin_days`, with the number of customers at each
    triple."""
    histogram_df = features_df.where(_is_buyer()).groupBy(
        _frequency().alias("x"),
        binned(F.col("bgnbd_recency"), resolution.bin_days).alias("t_x"),
        binned(F.col("bgnbd_T"), resolution.bin_days).alias("T"),
    ).agg(F.count(F.lit(1)).alias(HISTOGRAM_WEIGHT))
    return _in_key_order(histogram_df.toPandas(), ["x", "t_x", "T"])  # small: bounded by clv.max_histogram_rows


def spend_histogram(features_df: DataFrame, resolution: Resolution) -> pd.DataFrame:
    """Repeat buyers' (x, mean spend per repeat purchase day), spend binned to `resolution.spend_bin_relative`,
    with the number of customers at each pair. Spend must be positive."""
    histogram_df = features_df.where(_is_repeat_spender()).groupBy(
        _frequency().alias("x"),
        binned_spend(F.col("bgnbd_monetary"), resolution.spend_bin_relative).alias("m"),
    ).agg(F.count(F.lit(1)).alias(HISTOGRAM_WEIGHT))
    return _in_key_order(histogram_df.toPandas(), ["x", "m"])  # small: bounded by clv.max_histogram_rows


def _in_key_order(histogram: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The histogram sorted by its keys: Spark returns groups in any order, and the sums of the log-likelihood
    (so the fit, to its last bits) depend on it."""
    return histogram.sort_values(keys, ignore_index=True)


# ---- predictions on the executors --------------------------------------------------------------------------------
def with_clv(features_df: DataFrame, params: ClvParams | None, settings: ClvSettings,
             model_version: int | None = None) -> DataFrame:
    """Adds CLV_COLUMNS, predicted on the executors in Arrow batches (null for prospects and for any value that
    is not a finite number); all null without a model (clv.enabled: false)."""
    if params is None:
        return features_df.select("*", *[F.lit(None).cast("double").alias(c) for c in CLV_COLUMNS],
                                  F.lit(None).cast("int").alias("clv_model_version"))
    schema = ", ".join(f"{name} double" for name in CLV_COLUMNS)

    @F.pandas_udf(schema)
    def predict(x: pd.Series, t_x: pd.Series, T: pd.Series, m: pd.Series) -> pd.DataFrame:
        return predict_clv(params, pd.DataFrame(dict(zip(INPUT_COLUMNS, (x, t_x, T, m), strict=True))), settings)

    inputs = [F.col(c).cast("double") for c in INPUT_COLUMNS]
    predicted_df = features_df.select("*", predict(*inputs).alias("_clv"))
    # Arrow brings NaN back as NaN, not null: the table holds null.
    return predicted_df.select(*features_df.columns, *[
        F.when(~F.isnan(F.col("_clv")[name]), F.col("_clv")[name]).alias(name) for name in CLV_COLUMNS],
        F.lit(model_version).cast("int").alias("clv_model_version"))


# The code MLflow logs for the CLV model (models from code).
CLV_MODEL_CODE = Path(__file__).with_name("clv_pyfunc.py")


def log_clv(params: ClvParams, settings: ClvSettings, example: pd.DataFrame) -> int:
    """Log the CLV model to the active run (models from code), register it under clv.model_name and return the
    new version."""
    config = {**params.as_config(), "horizon_days": settings.horizon_days,
              "annual_discount_rate": settings.annual_discount_rate}
    signature = infer_signature(example, predict_clv(params, example, settings),
                                params={"horizon_days": settings.horizon_days,
                                        "annual_discount_rate": settings.annual_discount_rate})
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(CLV_MODEL_CODE), model_config=config, signature=signature,
        input_example=example, registered_model_name=settings.model_name,
        pip_requirements=pinned("mlflow", "numpy", "pandas", "pydantic", "pyspark", "scipy"))
    return int(info.registered_model_version)


def clv_params(model: ScoringModel) -> ClvParams:
    """The fitted parameters of a registered CLV version, from the model config it was logged with (no code of
    the version runs, so versions logged by an earlier segscale load as well)."""
    info = mlflow.models.get_model_info(model.uri)
    return ClvParams.from_config(info.flavors["python_function"]["config"])




@dataclass(frozen=True)
class ResolutionRecord:
    """The `clv fit` stage until the fits succeed: the histograms' resolution and the rows of each candidate."""

    resolution: dict[str, Any]
    histogram_estimates: dict[str, Any]


@dataclass(frozen=True)
class ClvFitRecord(ResolutionRecord):
    """The `clv fit` stage: the resolution, both fits with their diagnostics, and the new version."""

    mlflow_run_id: str
    model: str
    model_version: int
    buyers: int
    repeat_buyers: int
    fit_seconds: float
    histogram_rows: dict[str, int]
    params: dict[str, dict[str, float]]
    standard_errors: dict[str, dict[str, float | None]]
    log_likelihood: dict[str, float]
    boundary: list[str]


@dataclass(frozen=True)
class ClvScorer:
    model: ScoringModel
    params: ClvParams


class ClvModel:
    kind = "clv"
    columns = (*CLV_COLUMNS, "clv_model_version")
    # Fitted on the snapshot's features.
    uses_features = True

    def enabled(self, settings: Settings) -> bool:
        return settings.clv.enabled

    def registered_name(self, settings: Settings) -> str:
        return settings.clv.model_name

    def train(self, data: TrainingData, settings: Settings, trainer: Trainer) -> int:
        """Fit BG/NBD and Gamma-Gamma on the whole base as of the snapshot, log and register segscale_clv in
        MLflow and make the new version champion (CLV has no labelled holdout to gate on); the new version.
        ModelSkipped when the base cannot support the models or a fit does not converge."""
        clv = settings.clv
        with trainer.stage("clv fit") as stage:
            # The resolution, the two histograms and the example read the same rows: computed once, unless the
            # run keeps the whole features already.
            inputs_df = data.features.select(*INPUT_COLUMNS)
            own = not data.features.is_cached
            if own:
                inputs_df = inputs_df.persist(StorageLevel.MEMORY_AND_DISK)
            try:
                resolution, estimates = choose_resolution(inputs_df, clv)
                histograms = bgnbd_histogram(inputs_df, resolution), spend_histogram(inputs_df, resolution)
                example = inputs_df.where(F.col("bgnbd_frequency") > 0).limit(5).toPandas()  # small: 5 rows
            finally:
                if own:
                    inputs_df.unpersist()
            stage.record = ResolutionRecord(dataclasses.asdict(resolution), estimates)
            start = time.perf_counter()
            bgnbd, spend = fit_bgnbd(histograms[0], clv), fit_gamma_gamma(histograms[1], clv)
            fit_seconds = round(time.perf_counter() - start, 3)
            for model, fit in (("BG/NBD", bgnbd), ("Gamma-Gamma", spend)):
                if fit.boundary:
                    trainer.warn(f"the {model} fit is a boundary solution: {'; '.join(fit.boundary)} "
                                 f"(parameters {_rounded(fit.params)}); it is published, see docs/models.md")
            params = ClvParams(bgnbd.params, spend.params, clv.time_unit_days, Laplace.of(bgnbd), Laplace.of(spend))
            client = registry.connect(settings.paths.warehouse, settings.churn.experiment)
            with mlflow.start_run(run_name=f"clv {trainer.run_id}") as ml_run:
                _log_fit(clv, resolution, estimates, bgnbd, spend, fit_seconds)
                mlflow.set_tags({**trainer.lineage_tags(),
                                 "boundary_solution": str(bool(bgnbd.boundary or spend.boundary)).lower()})
                version = log_clv(params, clv, example)
                registry.set_champion(client, clv.model_name, version,
                                      f"fitted on all {bgnbd.customers:,} buyers as of {data.snapshot_date}")
            stage.record = ClvFitRecord(
                **dataclasses.asdict(stage.record), mlflow_run_id=ml_run.info.run_id, model=clv.model_name,
                model_version=version,
                buyers=bgnbd.customers, repeat_buyers=spend.customers, fit_seconds=fit_seconds,
                histogram_rows={"bgnbd": bgnbd.histogram_rows, "gamma_gamma": spend.histogram_rows},
                params={"bgnbd": bgnbd.params, "gamma_gamma": spend.params},
                standard_errors={"bgnbd": bgnbd.standard_errors, "gamma_gamma": spend.standard_errors},
                log_likelihood={"bgnbd": bgnbd.log_likelihood, "gamma_gamma": spend.log_likelihood},
                boundary=[*bgnbd.boundary, *spend.boundary])
        return version

    def load(self, spark: SparkSession, model: ScoringModel) -> ClvScorer:
        return ClvScorer(model, clv_params(model))

    def predict(self, features_df: DataFrame, loaded: ClvScorer | None, settings: Settings) -> DataFrame:
        return with_clv(features_df, loaded.params if loaded else None, settings.clv,
                        loaded.model.version if loaded else None)


def _log_fit(clv: ClvSettings, resolution: Resolution, estimates: dict[str, Any], bgnbd: Fit, spend: Fit,
             fit_seconds: float) -> None:
    """Parameters, diagnostics and the whole fit (fit.json) of both models, to the active MLflow run."""
    mlflow.log_params({
        **{f"bgnbd.{k}": v for k, v in bgnbd.params.items()},
        **{f"gamma_gamma.{k}": v for k, v in spend.params.items()},
        "bin_days": resolution.bin_days, "spend_bin_relative": resolution.spend_bin_relative,
        **{k: getattr(clv, k) for k in ("max_histogram_rows", "time_unit_days", "max_iterations",
                                          "horizon_days", "annual_discount_rate")},
    })
    mlflow.log_metrics({
        "bgnbd_log_likelihood": bgnbd.log_likelihood, "gamma_gamma_log_likelihood": spend.log_likelihood,
        "buyers": bgnbd.customers, "repeat_buyers": spend.customers,
        "bgnbd_histogram_rows": bgnbd.histogram_rows, "spend_histogram_rows": spend.histogram_rows,
        "bgnbd_iterations": bgnbd.iterations, "gamma_gamma_iterations": spend.iterations,
        "fit_seconds": fit_seconds,
        **{f"{part}.{k}.standard_error": v for part, fit in (("bgnbd", bgnbd), ("gamma_gamma", spend))
           for k, v in fit.standard_errors.items() if v is not None},
    })
    mlflow.log_dict({"bgnbd": dataclasses.asdict(bgnbd), "gamma_gamma": dataclasses.asdict(spend),
                     "resolution": dataclasses.asdict(resolution), "histogram_estimates": estimates}, "fit.json")


def _rounded(params: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in params.items())
