"""The pipeline under spark-submit on a real Spark standalone cluster (a master and two workers on 127.0.0.1,
started from the pyspark distribution): executors are separate JVMs with their own Python workers, so the
executor-side Delta writes and model loading run where they run in production. The published tables must equal
those of the local-mode run on the same input, whichever backend writes them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyspark
import pytest
import yaml
from deltalake import DeltaTable
from frames import BACKENDS, D2, ROOT, free_port

from segscale import catalog
from segscale.session import DATAFRAME_DEBUGGING, delta_spark_conf

SPARK_HOME = Path(pyspark.__file__).parent
# The tables of D2's own partition. Not retention_outcomes, whose D2 rows are D1's plan measured (partition D1):
# the rerun of D2 finds that plan measured already. Not uplift_models, off by default (retention.uplift_model).
SNAPSHOT_TABLES = tuple(t.name for t in catalog.TABLES if "snapshot_date" in t.partition_by
                        and t not in (catalog.RETENTION_OUTCOMES, catalog.UPLIFT_MODELS))
# The golden run's partitioning (conftest.GOLDEN_SHUFFLE_PARTITIONS), so both runs split the data the same way.
SPARK_CONF = {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2",
              "spark.sql.session.timeZone": "UTC", "spark.sql.execution.arrow.pyspark.enabled": "true",
              "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
              "spark.executor.extraJavaOptions": "-Duser.timezone=UTC", "spark.ui.enabled": "false",
              DATAFRAME_DEBUGGING: "false"}  # as the README recommends


def cluster_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
        return json.load(response)


def wait_for(condition, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if condition():
                return
        time.sleep(0.5)
    raise TimeoutError(f"the standalone cluster did not come up: {what} within {timeout:.0f} s")


@contextlib.contextmanager
def standalone_cluster(work: Path, workers: int = 2) -> Iterator[tuple[str, int]]:
    """A master and `workers` workers (1 core, 1.5 GB each) on 127.0.0.1; everything is stopped on the way out,
    also when the test fails."""
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, ui_port = free_port(), free_port()
    started: list[subprocess.Popen] = []
    logs = work / "logs"
    logs.mkdir(parents=True)

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            started.append(subprocess.Popen([spark_class, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True))

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
              "--webui-port", str(ui_port))
        wait_for(lambda: cluster_state(ui_port)["status"] == "ALIVE", "master ALIVE")
        for n in range(workers):
            start(f"worker{n}", "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                  "--host", "127.0.0.1", "--cores", "1", "--memory", "1536m", "--webui-port", str(free_port()),
                  "--work-dir", str(work / f"worker{n}"))
        wait_for(lambda: cluster_state(ui_port)["aliveworkers"] == workers, f"{workers} workers registered")
        yield f"spark://127.0.0.1:{port}", ui_port
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `make wheel` builds, as the cluster gets it."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(ROOT)],
                   check=True, timeout=300)
    (built,) = out.glob("segscale-*.whl")
    return built


def table_at(root: Path, name: str) -> pa.Table:
    """A table's rows for snapshot D2, without the run id, in a fixed order."""
    table = DeltaTable(str(root / name)).to_pyarrow_table()
    table = table.filter(pc.equal(table["snapshot_date"], pa.scalar(D2, pa.date32())))
    table = table.drop_columns([c for c in ("run_id",) if c in table.column_names])
    keys = [(c, "ascending") for c in table.column_names
            if not (pa.types.is_floating(table.schema.field(c).type) or pa.types.is_list(table.schema.field(c).type))]
    return table.sort_by(keys)


def assert_same_rows(local: pa.Table, cluster: pa.Table, name: str) -> None:
    assert cluster.num_rows == local.num_rows > 0 or name == catalog.QUARANTINE.name, name
    assert cluster.schema == local.schema, name
    for column in local.column_names:
        a, b = local[column].to_pylist(), cluster[column].to_pylist()
        if pa.types.is_floating(local.schema.field(column).type):
            assert [v is None for v in b] == [v is None for v in a], f"{name}.{column}: nulls differ"
            assert [v for v in b if v is not None] == pytest.approx([v for v in a if v is not None], rel=1e-9,
                                                                    abs=1e-9, nan_ok=True), f"{name}.{column}"
        else:
            assert b == a, f"{name}.{column}"


@pytest.mark.slow
def test_spark_submit_on_a_standalone_cluster_publishes_what_local_mode_does(two_snapshots, wheel, tmp_path):
    settings, _, _, second = two_snapshots
    local = Path(settings.paths.warehouse)
    # The cluster re-runs D2 once per backend, each into its own copy of the local warehouse: the same D1 before it
    # and the same champion models (the local run's MLflow store), so every D2 table must come out the same. The
    # delta-spark run replaces D2 in tables delta-rs wrote.
    runs = {}
    with standalone_cluster(tmp_path / "spark") as (master, ui_port):
        for backend in BACKENDS:
            copy = tmp_path / backend / "wh"
            shutil.copytree(local, copy)
            runs[backend] = submit(master, wheel, tmp_path / backend, settings, copy, backend)
        state = cluster_state(ui_port)
    # It ran on the cluster: one application per run, with executors on each worker (their own work directories).
    assert len(state["completedapps"] + state["activeapps"]) == len(BACKENDS), state
    for n in range(2):
        assert len(list((tmp_path / "spark" / f"worker{n}").glob("app-*/*/stderr"))) == len(BACKENDS), \
            f"not every application ran an executor on worker{n}"
    for backend, run in runs.items():
        assert run["status"] == "succeeded", backend
        assert "train" not in run["stages"] and "clv fit" not in run["stages"]  # scored with the local champions
        copy = tmp_path / backend / "wh"
        for name in SNAPSHOT_TABLES:
            assert_same_rows(table_at(local, name), table_at(copy, name), f"{backend}: {name}")
        scores = DeltaTable(str(copy / "customer_scores")).history(1)[0]
        assert json.loads(scores["userMetadata"])["run_id"] == run["run_id"] != second["run_id"]
        assert scores["engineInfo"].startswith("Apache-Spark" if backend == "delta-spark" else "delta-rs")


def submit(master: str, wheel: Path, work: Path, settings, warehouse: Path, backend: str) -> dict:
    """`spark-submit` of jobs/run_pipeline.py for D2 into `warehouse` with `backend`: the run's summary. The
    delta-spark run gets the Delta jars and extension as a cluster does (docs/tables.md)."""
    config = work / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "paths": {"input": settings.paths.input, "warehouse": str(warehouse)},
        "delta": {"backend": backend}, "retention": {"budget": settings.retention.budget}}))
    summary = work / "summary.json"
    spark_conf = {**SPARK_CONF, "spark.pyspark.python": sys.executable}
    if backend == "delta-spark":
        spark_conf.update(delta_spark_conf({}, cores=1))
    conf = [arg for key, value in spark_conf.items() for arg in ("--conf", f"{key}={value}")]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_", "SEGSCALE_"))},
           "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{Path(settings.paths.warehouse).parent / 'mlflow.db'}"}
    result = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", master, "--deploy-mode", "client",
         "--executor-memory", "1g", "--total-executor-cores", "2", *conf, "--py-files", str(wheel),
         str(ROOT / "jobs" / "run_pipeline.py"), "--config", str(config), "--snapshot-date", D2.isoformat(),
         "--summary-json", str(summary)],
        capture_output=True, text=True, env=env, cwd=work, timeout=900)
    assert result.returncode == 0, f"{backend}: {result.stderr[-5000:]}"
    return json.loads(summary.read_text())
