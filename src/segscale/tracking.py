"""MLflow: where runs are tracked, how models are saved (skops, explicit trusted types), and the registry's
champion / challenger aliases with the promotion gate. Decisions: docs/models.md."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import skops.io
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from mlflow.models import infer_signature
from pyspark.sql import Column, SparkSession

from segscale.clv import ClvParams, predict_clv
from segscale.config import ClvSettings
from segscale.errors import DependencyError, InputError, SegscaleError, first_line

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
# The code MLflow logs for the CLV model (models from code).
CLV_MODEL_CODE = Path(__file__).with_name("clv_model.py")
# The only types outside skops' own safe set that segscale's models may contain. A model needing anything else
# is refused when it is saved (and skops refuses it when it is loaded), whatever its origin.
TRUSTED_TYPES = frozenset({
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
})


def tracking_uri(warehouse: str) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store beside the warehouse (its parent directory)."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{_beside(warehouse) / 'mlflow.db'}"


def _beside(warehouse: str) -> Path:
    if "://" in warehouse and not warehouse.startswith("file://"):
        raise InputError(f"warehouse {warehouse} is not a local directory, so there is no default MLflow store "
                         f"beside it: set MLFLOW_TRACKING_URI")
    return Path(warehouse.removeprefix("file://")).resolve().parent


@contextlib.contextmanager
def scoped() -> Iterator[None]:
    """Around one command: afterwards, MLflow's process-wide tracking and registry URIs are unset and the
    environment variables it exports them to (also from inside its own calls) are as they were. One warehouse's
    store must never pass for the user's MLFLOW_TRACKING_URI, or for the next warehouse's store in this process."""
    exported = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for name, value in exported.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect(warehouse: str, experiment: str) -> MlflowClient:
    """Point MLflow at the tracking store and make sure the experiment exists; DependencyError if unreachable.
    Call it inside `scoped()`."""
    uri = tracking_uri(warehouse)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            location = None
            if uri.startswith("sqlite:///"):  # embedded store: artifacts beside it, not in the working directory
                location = (_beside(warehouse) / "mlartifacts" / experiment).as_uri()
            client.create_experiment(experiment, artifact_location=location)
    except (MlflowException, OSError) as exc:
        raise DependencyError(f"MLflow tracking at {uri} is unreachable: {first_line(exc)}") from exc
    mlflow.set_experiment(experiment)
    return client


def trusted_types_for(model: object) -> list[str]:
    """The model's types that skops does not trust by default; all must be in TRUSTED_TYPES."""
    needed = set(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
    refused = needed - TRUSTED_TYPES
    if refused:
        raise SegscaleError(f"the model contains types segscale does not trust for loading: {sorted(refused)}; "
                            f"only {sorted(TRUSTED_TYPES)} are allowed (see docs/models.md)")
    return sorted(needed)


def log_classifier(model: object, name: str, example: pd.DataFrame) -> int:
    """Log `model` to the active run in skops format (pyfunc predicts probabilities), register it under `name`
    and return the new version."""
    signature = infer_signature(example, model.predict_proba(example))
    info = mlflow.sklearn.log_model(
        model, name="model", serialization_format="skops", skops_trusted_types=trusted_types_for(model),
        signature=signature, input_example=example, registered_model_name=name, pyfunc_predict_fn="predict_proba",
        pip_requirements=_pinned("mlflow", "numpy", "pandas", "scikit-learn", "scipy", "skops"))
    return int(info.registered_model_version)


def _pinned(*packages: str) -> list[str]:
    """The installed versions of `packages`, as the model's requirements. Named explicitly, so MLflow does not
    load the model in a subprocess to infer them (seconds per model)."""
    return [f"{package}=={importlib.metadata.version(package)}" for package in packages]


@dataclass(frozen=True)
class ScoringModel:
    """A registered version pinned for scoring: its URI names the version, so a moving alias cannot change it."""

    name: str
    version: int
    inputs: tuple[str, ...]  # the signature's input columns

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def scoring_model(client: MlflowClient, name: str, version: int | None = None) -> ScoringModel:
    """`version` of `name`, or its champion; InputError when the model, version or alias does not exist."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise InputError(f"no model {name} is registered at {client.tracking_uri}: run segscale train "
                         f"first") from None
    known = sorted(int(v.version) for v in _versions(client, name))
    if version is None:
        version = champion_version(client, name)
        if version is None:
            raise InputError(f"model {name} has no alias {CHAMPION} (registered versions: {known or 'none'}): run "
                             f"segscale train, or segscale promote --version N --reason ...")
    elif version not in known:
        raise InputError(f"model {name} has no version {version}; registered versions: {known or 'none'}")
    signature = mlflow.models.get_model_info(f"models:/{name}/{version}").signature
    if signature is None or not signature.inputs.has_input_names():
        raise InputError(f"model {name} version {version} has no signature naming its input columns, so segscale "
                         f"cannot tell which features it needs; retrain it with segscale train")
    return ScoringModel(name, version, tuple(signature.inputs.input_names()))


def churn_udf(spark: SparkSession, model: ScoringModel) -> Callable[[Column], Column]:
    """The model as a Spark UDF that predicts on the executors in Arrow batches: struct of the inputs in,
    [P(retained), P(churned)] out. The driver downloads the model once and ships it to the executors."""
    return mlflow.pyfunc.spark_udf(spark, model.uri, result_type="array<double>", env_manager="local")


class ClvModel(mlflow.pyfunc.PythonModel):
    """segscale_clv as an MLflow pyfunc: the four CLV inputs of customer_features in, CLV_COLUMNS out (NaN for
    prospects). Logged as code (segscale/clv_model.py) with the fitted parameters in the model config, so the
    artifact holds no pickle; `params` may override the horizon and discount rate it was logged with."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = context.model_config
        self.params = ClvParams.from_config(config)
        self.settings = ClvSettings(horizon_days=config["horizon_days"],
                                    annual_discount_rate=config["annual_discount_rate"],
                                    time_unit_days=self.params.time_unit_days)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        settings = self.settings.model_copy(update=params or {})
        return predict_clv(self.params, pd.DataFrame(model_input), settings)


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
        pip_requirements=_pinned("mlflow", "numpy", "pandas", "pydantic", "pyspark", "scipy"))
    return int(info.registered_model_version)


def clv_params(model: ScoringModel) -> ClvParams:
    """The fitted parameters of a registered CLV version, read through its pyfunc wrapper."""
    return mlflow.pyfunc.load_model(model.uri).unwrap_python_model().params


def set_champion(client: MlflowClient, name: str, version: int, reason: str) -> None:
    """Point champion at `version` and record why on the version (models without a gate, such as CLV)."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    for key, value in (("promotion_decision", "promoted"), ("promotion_reason", reason)):
        client.set_model_version_tag(name, str(version), key, value)


def load_classifier(name: str, version: int) -> object:
    """A registered scikit-learn model; skops refuses any type the version was not saved as trusting."""
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


@dataclass(frozen=True)
class Promotion:
    """What the gate decided for a new version, with both ROC-AUCs on the new version's holdout."""

    version: int
    promoted: bool
    reason: str
    new_auc: float
    champion_version: int | None = None
    champion_auc: float | None = None


def champion_version(client: MlflowClient, name: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def gate(client: MlflowClient, name: str, version: int, new_auc: float, tolerance: float,
         champion_auc_on_holdout: Callable[[int], float]) -> Promotion:
    """Give the new version alias challenger; move champion to it unless its holdout ROC-AUC is worse than the
    current champion's on the same holdout by more than `tolerance`. The first version becomes champion."""
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    current = champion_version(client, name)
    if current is None:
        decision = Promotion(version, True, "first version", new_auc)
    else:
        champion_auc = champion_auc_on_holdout(current)
        promoted = new_auc >= champion_auc - tolerance
        verdict = "not worse than" if promoted else "worse than"
        reason = (f"holdout ROC-AUC {new_auc:.4f} is {verdict} champion v{current}'s {champion_auc:.4f} "
                  f"within tolerance {tolerance}")
        decision = Promotion(version, promoted, reason, new_auc, current, champion_auc)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    for key, value in (("promotion_decision", "promoted" if decision.promoted else "kept champion"),
                       ("promotion_reason", decision.reason)):
        client.set_model_version_tag(name, str(version), key, value)
    log.info("model %s v%d: %s (%s)", name, version, "champion" if decision.promoted else "challenger",
             decision.reason)
    return decision


def promote(client: MlflowClient, name: str, version: int, reason: str) -> int | None:
    """Move champion to `version` by hand and record why on the version; returns the previous champion."""
    if not reason.strip():
        raise InputError("promote needs --reason: the registry records why the champion changed")
    try:
        client.get_model_version(name, str(version))
    except (MlflowException, RestException):
        known = sorted(int(v.version) for v in _versions(client, name))
        raise InputError(f"model {name} has no version {version}; registered versions: {known or 'none'}") from None
    previous = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for key, value in (("promotion_decision", "promoted by hand"), ("promotion_reason", reason),
                       ("promoted_at", when), ("previous_champion", str(previous))):
        client.set_model_version_tag(name, str(version), key, value)
    return previous


def _versions(client: MlflowClient, name: str) -> Iterable:
    try:
        return client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
