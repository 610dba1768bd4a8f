"""One Spark session for the whole test run: local[2], UTC, few shuffle partitions, UI off."""

from __future__ import annotations

import os
import sys

import pytest
from frames import D1, D2, settings_for
from pyspark.sql import SparkSession

from segscale.config import DeltaSettings, Settings
from segscale.pipeline import generate_inputs, run_pipeline
from segscale.tables import Warehouse


@pytest.fixture(scope="session")
def spark() -> SparkSession:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("segscale-tests")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def delta_settings() -> DeltaSettings:
    return DeltaSettings(backend="delta-rs")


@pytest.fixture(scope="session")
def generated(spark, tmp_path_factory):
    """Generated inputs (2,500 customers, 1 % dirty rows) shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("gen")
    settings = Settings.model_validate({"generate": {"customers": 2500, "seed": 11, "dirty_rate": 0.01}})
    generate_inputs(spark, settings, str(out))
    return out


@pytest.fixture(scope="session")
def two_snapshots(spark, generated, tmp_path_factory):
    """A warehouse the whole pipeline published for D1 then D2 (churn and CLV trained on the first run, a retention
    budget that binds): (settings, warehouse, first summary, second summary). Read it; never write to it."""
    warehouse = tmp_path_factory.mktemp("pipeline") / "wh"  # its MLflow store sits beside it
    settings = settings_for(generated, warehouse, retention={"budget": 2000.0})
    first = run_pipeline(spark, settings, D1)
    second = run_pipeline(spark, settings, D2)
    return settings, Warehouse(spark, str(warehouse), settings.delta), first, second
