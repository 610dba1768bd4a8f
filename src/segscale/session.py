"""Build or adopt the Spark session: the one place that decides how Spark is configured."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from segscale.config import Settings

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
DATAFRAME_DEBUGGING = "spark.python.sql.dataFrameDebugging.enabled"
# When the config leaves spark.shuffle_partitions open, an embedded session gets one shuffle partition per this
# many bytes of input on disk, or 4 per core when that is more. The inputs of 6M generated customers (1.6 GB) get
# 49: 48 instead of 8 took their first run from 21.7 to 17.3 times DuckDB's query and the training set's spill
# from 7.5 GB to none on two cores. 1M (0.26 GB) gets 9, about the 8 it had (docs/benchmarks.md).
INPUT_BYTES_PER_PARTITION = 32 * 1024 * 1024


def under_spark_submit() -> bool:
    """True when spark-submit started this process (its JVM gateway is already running)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(settings: Settings) -> SparkSession:
    """Return the active session, the cluster's session under spark-submit, or a new embedded one."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if under_spark_submit():
        # The platform owns master, resources and cluster settings: take its session as it is.
        log.info("running under spark-submit: using the cluster's session unchanged")
        return SparkSession.builder.getOrCreate()
    return _embedded_session(settings)


def _embedded_session(settings: Settings) -> SparkSession:
    # Python workers must run the driver's interpreter, or its packages are "not found" on them.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # An embedded session serves only this machine: bind to loopback unless told otherwise.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    spark_cfg = settings.spark
    shuffle_partitions = spark_cfg.shuffle_partitions or default_shuffle_partitions(settings.paths.input,
                                                                                    os.cpu_count() or 2)
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.driver.memory": spark_cfg.driver_memory,
        "spark.ui.showConsoleProgress": "true",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        # PySpark records the Python call site of every DataFrame function it is handed (a walk up the stack and
        # four round trips to the JVM each) for its error messages; segscale builds thousands of expressions a
        # run, and the recording doubled the driver's time spent building them (docs/decisions.md). A static
        # setting: clusters pass it to spark-submit.
        DATAFRAME_DEBUGGING: "false",
    }
    if settings.delta.backend == "delta-spark":
        # The jars must already be on the classpath (spark.jars / spark.jars.packages in spark.conf).
        conf["spark.sql.extensions"] = DELTA_EXTENSION
        conf["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    conf.update(spark_cfg.conf)
    builder = SparkSession.builder.master(spark_cfg.master).appName(spark_cfg.app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_cfg.log_level)
    if spark_cfg.log_level in ("WARN", "ERROR"):
        _quiet_task_failure_logs(spark)
    log.info("embedded Spark %s on %s, %d shuffle partitions", spark.version, spark_cfg.master,
             shuffle_partitions)
    return spark


def default_shuffle_partitions(input_path: str | None, cores: int) -> int:
    """4 per core, or one per INPUT_BYTES_PER_PARTITION of the files under a local input directory when that is
    more (an input on other storage counts as small: the embedded session cannot list it before it starts)."""
    path = (input_path or "").removeprefix("file://")
    local = Path(path) if path and "://" not in path else None
    size = sum(f.stat().st_size for f in local.rglob("*") if f.is_file()) if local and local.is_dir() else 0
    return max(4 * cores, math.ceil(size / INPUT_BYTES_PER_PARTITION))


def has_delta_extension(spark: SparkSession) -> bool:
    return DELTA_EXTENSION in (spark.conf.get("spark.sql.extensions", "") or "")


def _quiet_task_failure_logs(spark: SparkSession) -> None:
    """Silence the loggers that print every failed task's Python traceback: segscale reports the cause itself
    (set spark.log_level: INFO to see them)."""
    jvm = spark.sparkContext._jvm
    configurator = jvm.org.apache.logging.log4j.core.config.Configurator
    off = jvm.org.apache.logging.log4j.Level.OFF
    for name in ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager"):
        configurator.setLevel(name, off)
