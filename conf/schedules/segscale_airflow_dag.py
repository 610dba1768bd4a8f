"""Airflow DAG: the segscale main job every day at 03:00 UTC for yesterday's snapshot, then table maintenance
(`segscale maintain`: retention, compaction, Z-order of the new snapshot, vacuum, checkpoints), with spark-submit.

Copy this file into the DAGs folder. It needs the Apache Spark provider (`apache-airflow-providers-apache-spark`)
and a Spark connection (`spark_default`, or set SEGSCALE_AIRFLOW_SPARK_CONN) whose host is the cluster's master. The
wheel built by `make wheel` and the repository's `jobs/` and `conf/` must be readable by the Airflow worker at
SEGSCALE_HOME. Each DAG run scores the day of its data interval (`{{ ds }}`); clearing a past run re-runs that
snapshot, and `catchup` stays off: backfill a range with `segscale backfill --from ... --to ...` instead.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

SEGSCALE_HOME = os.environ.get("SEGSCALE_HOME", "/opt/segscale")
WHEEL = f"{SEGSCALE_HOME}/dist/segscale-0.1.0-py3-none-any.whl"

with DAG(
    dag_id="segscale_daily",
    description="Score the whole customer base for yesterday and publish the Delta tables",
    schedule="0 3 * * *",
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # snapshots in order: migration compares each one with the one before
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=10)},
    tags=["segscale"],
) as dag:
    # conf/cluster.yaml writes through delta-spark: its jars (the pair pinned in pyproject.toml) and extension
    submit = {
        "conn_id": os.environ.get("SEGSCALE_AIRFLOW_SPARK_CONN", "spark_default"),
        "py_files": WHEEL,
        "packages": "io.delta:delta-spark_4.2_2.13:4.4.0",
        "conf": {"spark.python.sql.dataFrameDebugging.enabled": "false",  # see the README, "Running on a cluster"
                 "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
                 "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog"},
        "env_vars": {"MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", "")},
    }
    run_pipeline = SparkSubmitOperator(
        task_id="run_pipeline",
        application=f"{SEGSCALE_HOME}/jobs/run_pipeline.py",
        application_args=[
            "--config", f"{SEGSCALE_HOME}/conf/cluster.yaml",
            "--snapshot-date", "{{ ds }}",
            "--summary-json", "/tmp/segscale-summary-{{ ds }}.json",
        ],
        name="segscale-{{ ds }}",
        **submit,
    )
    # After the run, never beside it: maintenance rewrites the files a run writes.
    maintain = SparkSubmitOperator(
        task_id="maintain",
        application=f"{SEGSCALE_HOME}/jobs/maintain.py",
        application_args=["--config", f"{SEGSCALE_HOME}/conf/cluster.yaml",
                          "--summary-json", "/tmp/segscale-maintain-{{ ds }}.json"],
        name="segscale-maintain-{{ ds }}",
        **submit,
    )
    run_pipeline >> maintain
