"""Helpers the tests share for building input frames (imported by the test modules beside it)."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from segscale.config import GenerateSettings, Settings
from segscale.contract import CONTRACT
from segscale.models import registry
from segscale.synthetic.generator import generate_frames

# The snapshots of the warehouse the pipeline publishes once per test session (conftest.two_snapshots), and its
# input: 800 generated customers with 1 % bad rows, shipped as CSV files (tests/test_golden.py).
D1, D2 = dt.date(2024, 6, 30), dt.date(2024, 9, 30)
GOLDEN_INPUT = Path(__file__).with_name("golden") / "input"


def settings_for(inputs: object, warehouse: object, **sections: object) -> Settings:
    """Settings for a pipeline run on the embedded backend, with `sections` overriding the defaults."""
    return Settings.model_validate({"paths": {"input": str(inputs), "warehouse": str(warehouse)},
                                    "delta": {"backend": "delta-rs"}, **sections})


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
