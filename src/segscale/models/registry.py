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

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

from segscale.errors import DependencyError, InputError, first_line

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


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


def pinned(*packages: str) -> list[str]:
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


def set_champion(client: MlflowClient, name: str, version: int, reason: str) -> None:
    """Point champion at `version` and record why on the version (models without a gate, such as CLV)."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    for key, value in (("promotion_decision", "promoted"), ("promotion_reason", reason)):
        client.set_model_version_tag(name, str(version), key, value)


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


def require_inputs(model: ScoringModel, columns: Iterable[str]) -> None:
    """InputError naming every input of the model's signature that is not among `columns`."""
    missing = sorted(set(model.inputs) - set(columns))
    if missing:
        raise InputError(f"the features lack {missing}, which model {model.name} version {model.version} needs "
                         f"(its signature); score with a version trained on the current features")
