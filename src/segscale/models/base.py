"""The interface between the pipeline and its models (see `segscale.models`)."""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from pyspark.sql import DataFrame, SparkSession

from segscale.config import Settings
from segscale.models.registry import ScoringModel
from segscale.transforms.validate import Validated


@dataclass(frozen=True)
class TrainingData:
    """What a model may train on: the snapshot's validated inputs and its features (computed once by the run),
    and, for generated inputs, the generator's ground truth."""

    snapshot_date: dt.date
    validated: Validated
    features: DataFrame
    truth: DataFrame | None = None


class StageRecorder(Protocol):
    """What a timed stage gives the code running in it: a place for its typed record (a dataclass)."""

    record: Any


class Trainer(Protocol):
    """What the pipeline lends a model while it trains: timed stages, warnings, and lineage for MLflow."""

    run_id: str

    def stage(self, name: str) -> AbstractContextManager[StageRecorder]: ...

    def warn(self, message: str) -> None: ...

    def lineage_tags(self) -> dict[str, str]: ...


class Model(Protocol):
    """One model of the pipeline. `kind` names it in config-free places (the summary's `models`, CLI flags);
    `columns` are what `predict` adds to customer_scores."""

    kind: str
    columns: tuple[str, ...]
    uses_features: bool  # whether `train` reads the snapshot's features (the run then keeps them for both)

    def enabled(self, settings: Settings) -> bool: ...

    def registered_name(self, settings: Settings) -> str: ...

    def train(self, data: TrainingData, settings: Settings, trainer: Trainer) -> int:
        """Fit, evaluate, log and register a new version; the version. ModelSkipped when the data cannot support
        the model."""
        ...

    def load(self, spark: SparkSession, model: ScoringModel) -> Any:
        """What `predict` needs to score with `model` on the executors, prepared once on the driver."""
        ...

    def predict(self, features_df: DataFrame, loaded: Any | None, settings: Settings) -> DataFrame:
        """`features_df` with the model's `columns` added (all null when `loaded` is None)."""
        ...

