"""One Spark session per test process (`make test` runs two): local[2], UTC, UI off, one shuffle partition except
for the golden run and the tests of its warehouse, which run with two (GOLDEN_SHUFFLE_PARTITIONS).

Every JVM the tests start (the sessions, the `segscale` processes, the cluster) collects with the serial GC and
evaluates Spark's expressions interpreted, without generating Java code for them (JAVA_TOOL_OPTIONS, below; Spark
reads `spark.*` system properties into every session's conf); all but the sessions of `make test`'s workers
compile with C1 only, and every process fits scikit-learn's models on one OpenMP thread. Runs of seconds on
tables of a few hundred rows never repay Janino's compilation of each query or OpenMP's threads, and a process
that lives for one run never repays C2's compilations; a worker's session, which runs dozens, does. None changes
a result (the golden test compares every published table row for row); `make demo` and the benchmarks run with
Spark's and scikit-learn's defaults.

The sessions carry the Delta jars that make's setup fetched (`segscale jars`) and the Delta extension, so both
backends write in them; the commands the tests run use delta-rs, the embedded default, unless a test sets
frames.BACKEND_VARIABLE to delta-spark.

One trained warehouse per session (`two_snapshots`, the golden run, default settings), read by every test that
only reads a published warehouse, and the same run written by delta-spark (`two_snapshots_on_delta_spark`), each
built on one worker; a test that writes works on its own copy (shutil.copytree of its root, the MLflow store
included). Tests that train a model without being about its quality use the cheap model profile
(frames.CHEAP_MODELS: 25 boosting iterations instead of 200, 2 calibration folds instead of 3), through the
`cheap_models` fixture or `frames.cheap_config`; docs/models.md, "Tests"."""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
import yaml
from frames import (
    BACKEND_VARIABLE,
    CHEAP_MODELS_ENV,
    D1,
    D2,
    GOLDEN_INPUT,
    free_port,
    settings_for,
    shuffle_partitions,
)
from pyspark.sql import SparkSession
from threadpoolctl import threadpool_limits

from segscale.cli import main
from segscale.config import DeltaSettings
from segscale.io.delta import Warehouse
from segscale.models import registry
from segscale.session import DATAFRAME_DEBUGGING, delta_spark_conf

# Inherited by every JVM started from here on (see the docstring above); the session's own JVM drops the C1-only
# flag (SHORT_LIVED_JVM) when it starts.
SHORT_LIVED_JVM = "-XX:TieredStopAtLevel=1"
os.environ["JAVA_TOOL_OPTIONS"] = (f"{SHORT_LIVED_JVM} -XX:+UseSerialGC -Dspark.sql.codegen.wholeStage=false "
                                   "-Dspark.sql.codegen.factoryMode=NO_CODEGEN")
os.environ["OMP_NUM_THREADS"] = "1"  # the processes the tests start: Spark's Python workers, `segscale`
# The test sessions carry the Delta jars and extension, so `delta.backend: auto` would pick delta-spark in them. The
# commands the tests run write through the embedded default, delta-rs, unless a test sets BACKEND_VARIABLE (it wins
# over config files) to delta-spark.
os.environ[BACKEND_VARIABLE] = "delta-rs"
threadpool_limits(1)  # this one, whose OpenMP runtime read the variable when frames imported scikit-learn


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
        golden = [name for name in GOLDEN_RUNS if name in used]
        if golden:
            item.add_marker(pytest.mark.xdist_group(golden[0]))
        elif any(d.scope == "module" for defs in used.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    return (yield)


@pytest.fixture(scope="session")
def spark() -> SparkSession:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # A worker of `make test` (pytest-xdist) runs the same queries over and over for minutes: C2's compilations
    # repay themselves after about a dozen pipeline runs (docs/decisions.md), so its JVM starts without the C1-only
    # flag. The one process of `make test-fast` lives a minute, which they do not repay.
    with pytest.MonkeyPatch.context() as patch:
        if "PYTEST_XDIST_WORKER" in os.environ:
            patch.setenv("JAVA_TOOL_OPTIONS", os.environ["JAVA_TOOL_OPTIONS"].replace(SHORT_LIVED_JVM, "").strip())
        session = _local_session()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _local_session() -> SparkSession:
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "1",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        DATAFRAME_DEBUGGING: "false",  # as the embedded session (segscale.session)
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    }
    # The Delta jars make's setup fetched, and the extension: the session writes through either backend.
    conf.update(delta_spark_conf(conf, cores=1))
    builder = SparkSession.builder.master("local[2]").appName("segscale-tests")
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


@pytest.fixture(scope="module")
def compiled_expressions(spark):
    """Spark generating code for its queries, as in production, for a module whose tests compute over thousands
    of rows: there the generated code repays its compilation (the one-pass training set test over all 3,000
    customers and four cutoffs: 71 s compiled, 160 s interpreted)."""
    keys = ("spark.sql.codegen.wholeStage", "spark.sql.codegen.factoryMode")
    before = {key: spark.conf.get(key) for key in keys}
    spark.conf.set("spark.sql.codegen.wholeStage", "true")
    spark.conf.set("spark.sql.codegen.factoryMode", "FALLBACK")
    yield
    for key, value in before.items():
        spark.conf.set(key, value)


@pytest.fixture(scope="session", autouse=True)
def migrated_mlflow_schema(tmp_path_factory):
    """A new embedded MLflow store in this process starts as a copy of one that MLflow's own schema migrations
    built once per test process: migrating a new SQLite store takes about a second, and the tests make about
    thirty. The copy is what the migrations produced; the processes the tests start (the CLI, the cluster's
    driver) migrate their own stores."""
    from mlflow.store.db import utils as db_utils
    from mlflow.store.model_registry import sqlalchemy_store as registry_store

    migrate = db_utils._initialize_tables

    @functools.cache
    def template() -> Path:  # built when a test first needs a store: most unit tests never do
        path = tmp_path_factory.mktemp("mlflow-schema") / "mlflow.db"
        engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        migrate(engine)
        engine.dispose()
        return path

    def from_template(engine: sqlalchemy.Engine) -> None:
        if engine.dialect.name != "sqlite":
            migrate(engine)
            return
        connection = engine.raw_connection()
        try:
            with sqlite3.connect(template()) as source:
                source.backup(connection.driver_connection)
        finally:
            connection.close()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(db_utils, "_initialize_tables", from_template)
        patch.setattr(registry_store, "_initialize_tables", from_template)
        yield


@pytest.fixture(autouse=True)
def embedded_store(monkeypatch):
    """Every test uses the embedded MLflow store beside its warehouse unless it sets MLFLOW_TRACKING_URI, and
    leaves no process-wide MLflow URI to the next test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with registry.scoped():
        yield


@pytest.fixture
def unreachable_mlflow(monkeypatch) -> str:
    """MLFLOW_TRACKING_URI at a port nothing listens on, with MLflow's retries off: its URI."""
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    return uri


@pytest.fixture
def cheap_models(monkeypatch) -> None:
    """The cheap model profile (frames.CHEAP_MODELS) for every command the test runs, as SEGSCALE_* variables."""
    for name, value in CHEAP_MODELS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def delta_settings() -> DeltaSettings:
    return DeltaSettings(backend="delta-rs")


# Tables of a few hundred rows never need a second shuffle partition, and a warm run costs 15 % less CPU without one
# (docs/decisions.md). The golden run and every test of its warehouse keep two, so each stage also runs on more
# than one partition, its tables are compared with the stored copies and the cluster's, and reruns reproduce them.
GOLDEN_SHUFFLE_PARTITIONS = 2


@pytest.fixture(autouse=True)
def golden_partitioning(request) -> Iterator[None]:
    """A test of a golden warehouse runs with the golden run's shuffle partitions."""
    if not set(GOLDEN_RUNS) & set(request.fixturenames):
        yield
        return
    with shuffle_partitions(request.getfixturevalue("spark"), GOLDEN_SHUFFLE_PARTITIONS):
        yield


@pytest.fixture(scope="session")
def two_snapshots(spark, tmp_path_factory):
    """The golden run, published once per test session: `segscale run` on the shipped input (tests/golden/input,
    800 customers, 1 % bad rows) for D1 then D2, churn and CLV trained on the first run, a retention budget that
    binds: (settings, warehouse, first summary, second summary). Read it; never write to it."""
    return _golden_run(spark, tmp_path_factory.mktemp("pipeline"), "delta-rs")


@pytest.fixture(scope="session")
def two_snapshots_on_delta_spark(spark, tmp_path_factory):
    """The golden run again, every table written by delta-spark (models trained and tracked as in the first):
    the same four values. Read it; never write to it."""
    return _golden_run(spark, tmp_path_factory.mktemp("pipeline-delta-spark"), "delta-spark")


# The golden runs, each built once per session on one worker with the tests that read it.
GOLDEN_RUNS = ("two_snapshots", "two_snapshots_on_delta_spark")


def _golden_run(spark, root: Path, backend: str):
    # the MLflow store sits beside the warehouse, under root
    settings = settings_for(GOLDEN_INPUT, root / "wh", retention={"budget": 2000.0}, delta={"backend": backend})
    config = root / "golden.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", include={"paths", "delta", "retention"})))
    summaries = []
    with shuffle_partitions(spark, GOLDEN_SHUFFLE_PARTITIONS), pytest.MonkeyPatch.context() as patch:
        patch.setenv(BACKEND_VARIABLE, backend)
        for snapshot in (D1, D2):
            out = root / f"summary-{snapshot}.json"
            assert main(["run", "--config", str(config), "--snapshot-date", snapshot.isoformat(), "--summary-json",
                         str(out)], spark=spark) == 0
            summaries.append(json.loads(out.read_text()))
    return settings, Warehouse(spark, str(root / "wh"), settings.delta), *summaries
