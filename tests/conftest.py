"""One Spark session per test process (`make test` runs two): local[2], UTC, few shuffle partitions, UI off."""

from __future__ import annotations

import os
import sys

import pytest
from frames import D1, D2, settings_for
from pyspark.sql import SparkSession

from segscale import tracking
from segscale.config import DeltaSettings, Settings
from segscale.pipeline import generate_inputs, run_pipeline
from segscale.tables import Warehouse


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--refresh-golden", action="store_true",
                     help="rewrite tests/golden/expected from this run (when a change of published values is meant)")


@pytest.hookimpl(wrapper=True)  # around pytest-xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]):
    """`make test` runs two pytest-xdist workers, each with its own Spark session (--dist loadgroup). Tests that
    share an expensive fixture stay on one worker, so it is built once: the tests of the warehouse the pipeline
    publishes once per session (`two_snapshots`), and a module's tests when it has module fixtures. The others
    go wherever a worker is free."""
    for item in items:
        used = item._fixtureinfo.name2fixturedefs  # pytest's own record of each fixture's definition and scope
        if "two_snapshots" in used:
            item.add_marker(pytest.mark.xdist_group("two_snapshots"))
        elif any(d.scope == "module" for defs in used.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    return (yield)


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


@pytest.fixture(autouse=True)
def embedded_store(monkeypatch):
    """Every test uses the embedded MLflow store beside its warehouse unless it sets MLFLOW_TRACKING_URI, and
    leaves no process-wide MLflow URI to the next test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with tracking.scoped():
        yield


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
