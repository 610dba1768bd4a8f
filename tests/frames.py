"""Helpers the tests share for building input frames (imported by the test modules beside it)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from segscale.cli import main
from segscale.config import GenerateSettings, Settings
from segscale.contract import CONTRACT
from segscale.models import registry
from segscale.synthetic.generator import generate_frames

# The snapshots of the warehouse the pipeline publishes once per test session (conftest.two_snapshots), and its
# input: 800 generated customers with 1 % bad rows, shipped as CSV files (tests/integration/test_golden.py).
D1, D2 = dt.date(2024, 6, 30), dt.date(2024, 9, 30)
TESTS = Path(__file__).resolve().parent  # tests/: the shared modules, golden/, faulty.py
ROOT = TESTS.parent  # the checkout
GOLDEN = TESTS / "golden"
GOLDEN_INPUT = GOLDEN / "input"
# The two Delta writers (docs/tables.md); the test sessions carry delta-spark's jars, so either can write. The
# commands a test runs write through the one this variable names (conftest sets delta-rs; it wins over config files).
BACKENDS = ("delta-rs", "delta-spark")
BACKEND_VARIABLE = "SEGSCALE_DELTA__BACKEND"


# The cheap model profile, for tests that train a model without being about how good it is: a churn classifier of
# 25 boosting iterations (the default is 200) calibrated on 2 folds (default 3), with the same features, cutoffs,
# calibration method and gate. Declared once here; a test takes it as config sections (`settings_for(...,
# **CHEAP_MODELS)`), as SEGSCALE_* variables (`CHEAP_MODELS_ENV`, the `cheap_models` fixture of conftest) or as a
# config file (`cheap_config`). The golden run (conftest.two_snapshots) and the tests of model quality
# (test_churn's fitted model, test_clv) keep the default settings. docs/models.md, "Tests".
CHEAP_MODELS: dict[str, dict] = {
    "churn": {"estimator_params": {"max_iter": 25, "learning_rate": 0.2, "class_weight": "balanced",
                                   "random_state": 7},
              "calibration_folds": 2},
}


def _variables(sections: dict, prefix: str = "SEGSCALE_") -> dict[str, str]:
    """Config sections as SEGSCALE_<SECTION>__<KEY> variables (a mapping below a key as one JSON value)."""
    return {f"{prefix}{section.upper()}__{key.upper()}": json.dumps(value)
            for section, keys in sections.items() for key, value in keys.items()}


CHEAP_MODELS_ENV = _variables(CHEAP_MODELS)


def cheap_config(path: Path, **sections: dict) -> Path:
    """A config file at `path` with the cheap model profile, each of `sections` merged over it key by key."""
    merged = {name: dict(keys) for name, keys in CHEAP_MODELS.items()}
    for name, keys in sections.items():
        merged.setdefault(name, {}).update(keys)
    path.write_text(yaml.safe_dump(merged))
    return path


def settings_for(inputs: object, warehouse: object, **sections: object) -> Settings:
    """Settings for a pipeline run on the embedded backend, with `sections` overriding the defaults."""
    return Settings.model_validate({"paths": {"input": str(inputs), "warehouse": str(warehouse)},
                                    "delta": {"backend": "delta-rs"}, **sections})


def run_command(spark: SparkSession, inputs: object, warehouse: object, snapshot: object, *extra: str) -> int:
    """`segscale run` through the CLI's own entry point in this process: its exit code."""
    return main(["run", "--input", str(inputs), "--warehouse", str(warehouse), "--snapshot-date", str(snapshot),
                 *extra], spark=spark)


def ts(text: str) -> dt.datetime:
    """An ISO-8601 text as a UTC datetime."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def contract_schema(name: str) -> T.StructType:
    """The input contract's columns and types for one input table."""
    return T.StructType([T.StructField(c.name, c.data_type) for c in CONTRACT[name]])


@contextlib.contextmanager
def generated_inputs(spark: SparkSession, customers: int, seed: int) -> Iterator[dict[str, DataFrame]]:
    """Generated customers, transactions and interactions, cached while the block runs."""
    frames = {name: frame_df.cache() for name, frame_df in
              generate_frames(spark, GenerateSettings(customers=customers, seed=seed)).items()
              if name in ("customers", "transactions", "interactions")}
    try:
        yield frames
    finally:
        for frame_df in frames.values():
            frame_df.unpersist()


@contextlib.contextmanager
def mlflow_store(root: object) -> Iterator[MlflowClient]:
    """MLflow's process-wide URIs on the embedded store beside the warehouses under `root` while the block runs
    (segscale's commands leave them unset), for MLflow calls that take only a `models:/` URI."""
    uri = f"sqlite:///{root}/mlflow.db"
    with registry.scoped():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield MlflowClient(uri, uri)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on once this returns."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def shuffle_partitions(spark: SparkSession, partitions: int) -> Iterator[None]:
    """`spark.sql.shuffle.partitions` set to `partitions` while the block runs (the test sessions have one)."""
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    try:
        yield
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
