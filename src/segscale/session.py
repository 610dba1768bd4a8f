"""Build or adopt the Spark session: the one place that decides how Spark is configured."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pyspark
from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession

from segscale.config import Settings
from segscale.errors import ConfigError

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
DATAFRAME_DEBUGGING = "spark.python.sql.dataFrameDebugging.enabled"
SNAPSHOT_PARTITIONS = "spark.databricks.delta.snapshotPartitions"
IVY_FAILURES = re.compile(r"unresolved dependency|access error|not found|UNRESOLVED|FAILED", re.IGNORECASE)
# When the config leaves spark.shuffle_partitions open, an embedded session gets one shuffle partition per this
# many bytes of input on disk, or 4 per core when that is more. The inputs of 6M generated customers (1.6 GB) get
# 49: 48 instead of 8 took their first run from 21.7 to 17.3 times DuckDB's query and the training set's spill
# from 7.5 GB to none on two cores. 1M (0.26 GB) gets 9, about the 8 it had (docs/benchmarks.md).
INPUT_BYTES_PER_PARTITION = 32 * 1024 * 1024


def under_spark_submit() -> bool:
    """True when spark-submit started this process (its JVM gateway is already running)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(settings: Settings, *, metastore: bool = False) -> SparkSession:
    """Return the active session, the cluster's session under spark-submit, or a new embedded one; with
    `metastore`, an embedded one is attached to the Derby metastore of `metastore_conf` and can read Delta tables
    by name."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if under_spark_submit():
        # The platform owns master, resources and cluster settings: take its session as it is.
        log.info("running under spark-submit: using the cluster's session unchanged")
        return SparkSession.builder.getOrCreate()
    return _embedded_session(settings, metastore)


def _embedded_session(settings: Settings, metastore: bool = False) -> SparkSession:
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
    conf.update(spark_cfg.conf)
    if metastore:
        conf.update(metastore_conf(settings, conf))
    if settings.delta.backend == "delta-spark" or metastore:
        conf.update(delta_spark_conf(conf, os.cpu_count() or 2))
    builder = SparkSession.builder.master(spark_cfg.master).appName(spark_cfg.app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_cfg.log_level)
    if spark_cfg.log_level in ("WARN", "ERROR"):
        _silence(spark, TASK_FAILURE_LOGGERS + (METASTORE_LOGGERS if metastore else ()))
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


# ---- the Delta jars ------------------------------------------------------------------------------------------
def delta_package() -> str:
    """The Maven coordinates of the Delta jars built for the installed pyspark and delta-spark (pinned together in
    pyproject.toml), named as delta-spark's `configure_spark_with_delta_pip` names them (Delta 4 artifacts carry
    the Spark minor version)."""
    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


def jars_cache() -> Path:
    """Where `segscale jars` keeps what it fetched: Ivy's cache and one manifest per package, under the user's
    cache directory (shared by every checkout, like Maven's ~/.m2)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segscale" / "jars"


def _manifest() -> Path:
    return jars_cache() / f"{delta_package().replace(':', '_')}.txt"


def delta_jars() -> list[str]:
    """The local paths of the Delta jars and their dependencies, fetched by `segscale jars` (the setup of `make`);
    a ConfigError saying how to fetch them when they are missing. Nothing is downloaded here."""
    manifest = _manifest()
    jars = manifest.read_text().split() if manifest.is_file() else []
    missing = [jar for jar in jars if not Path(jar).is_file()]
    if not jars or missing:
        raise ConfigError(
            f"delta.backend: delta-spark needs the Delta jars ({delta_package()}), and "
            f"{'some of them are missing from' if missing else 'they have not been fetched into'} {jars_cache()}. "
            f"Run `segscale jars` once (make's setup does) with access to Maven Central, or put the jars on the "
            f"classpath yourself through spark.conf (spark.jars or spark.jars.packages)")
    return jars


def fetch_delta_jars() -> list[str]:
    """Fetch the Delta jars into `jars_cache()` unless they are there already (then nothing is downloaded): Spark
    resolves the package and its dependencies from Maven Central with Ivy, as `--packages` does on a cluster. Runs
    a short-lived Spark session of its own, so no other may be running in this process."""
    try:
        return delta_jars()
    except ConfigError:
        pass
    if SparkSession.getActiveSession() is not None:
        raise RuntimeError("fetch_delta_jars starts its own Spark session: call it before any other")
    cache = jars_cache()
    cache.mkdir(parents=True, exist_ok=True)
    builder = (SparkSession.builder.master("local[1]").appName("segscale-jars")
               .config("spark.jars.ivy", str(cache / "ivy")).config("spark.ui.enabled", "false"))
    # Ivy reports every module and download on the JVM's stderr: into a log file, shown when the fetch fails.
    resolution_log = cache / "fetch.log"
    with resolution_log.open("wb") as out:
        stderr = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            spark = configure_spark_with_delta_pip(builder).getOrCreate()
        except Exception as exc:
            failure: Exception | None = exc
        else:
            failure = None
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
    if failure is not None:
        lines = resolution_log.read_text(errors="replace").splitlines()
        causes = [line.strip() for line in lines if IVY_FAILURES.search(line)] or lines[-5:]
        raise ConfigError(f"could not fetch the Delta jars {delta_package()} from Maven Central. Ivy said:\n  "
                          + "\n  ".join(dict.fromkeys(causes[-6:]))
                          + f"\nIts whole log: {resolution_log}") from failure
    try:
        packages = spark.conf.get("spark.jars.packages")
        if packages != delta_package():
            raise ConfigError(f"delta-spark asked for {packages}, segscale expected {delta_package()}")
        jars = [uri.removeprefix("file://") for uri in spark.conf.get("spark.jars").split(",") if uri]
    finally:
        spark.stop()
    manifest = _manifest()
    manifest.with_suffix(".tmp").write_text("\n".join(jars) + "\n")
    manifest.with_suffix(".tmp").replace(manifest)  # a manifest is whole or absent
    log.info("fetched %d Delta jars for %s into %s", len(jars), delta_package(), cache)
    return jars


def delta_spark_conf(conf: dict[str, str], cores: int) -> dict[str, str]:
    """What a local session adds to `conf` to write Delta through delta-spark: the jars (unless `conf` brings them),
    the Delta SQL extension and catalog, and, unless `conf` sets it, a replay of a table's log on one partition per
    core. Delta's default of 50 partitions suits logs of thousands of commits; segscale's have a few per run, and
    fifty tasks per table read took the golden run's routine snapshot from 74 to 127 s (docs/decisions.md)."""
    out = {"spark.sql.extensions": ",".join(filter(None, [conf.get("spark.sql.extensions"), DELTA_EXTENSION])),
           "spark.sql.catalog.spark_catalog": DELTA_CATALOG}
    if SNAPSHOT_PARTITIONS not in conf:
        out[SNAPSHOT_PARTITIONS] = str(cores)
    brought = "io.delta" in conf.get("spark.jars.packages", "") or "delta-spark" in conf.get("spark.jars", "")
    if not brought:
        out["spark.jars"] = ",".join(filter(None, [conf.get("spark.jars"), *delta_jars()]))
    return out


def metastore_dir(settings: Settings) -> Path:
    """The embedded Derby metastore's directory: `metastore.path`, or `metastore` beside a local warehouse."""
    if settings.metastore.path:
        return Path(settings.metastore.path.removeprefix("file://")).resolve()
    warehouse = settings.paths.warehouse
    if "://" in warehouse and not warehouse.startswith("file://"):
        raise ConfigError(f"warehouse {warehouse} is not a local directory, so there is no default metastore beside "
                          f"it: set metastore.path, or run under spark-submit with the cluster's metastore")
    return Path(warehouse.removeprefix("file://")).resolve().parent / "metastore"


def metastore_conf(settings: Settings, conf: dict[str, str] | None = None) -> dict[str, str]:
    """What a local session (or `spark-sql`) adds to `conf` to share the embedded metastore: Spark's Hive catalog
    on a Derby database in `metastore_dir` (one process at a time: Derby's embedded driver locks it)."""
    directory = metastore_dir(settings)
    java_options = (conf or {}).get("spark.driver.extraJavaOptions", "")
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={directory / 'metastore_db'};"
                                                       f"create=true",
        "spark.sql.warehouse.dir": str(directory / "spark-warehouse"),
        # Derby's log goes beside its database, not into the working directory.
        "spark.driver.extraJavaOptions": f"{java_options} -Dderby.system.home={directory}".strip(),
    }


def spark_sql_command(settings: Settings) -> list[str]:
    """`spark-sql` with what it needs to read the tables `segscale catalog` registered in the embedded metastore
    by name: the Delta jars and extension, and the metastore."""
    conf = {**metastore_conf(settings), "spark.sql.extensions": DELTA_EXTENSION,
            "spark.sql.catalog.spark_catalog": DELTA_CATALOG, "spark.sql.session.timeZone": "UTC"}
    return ["spark-sql", "--jars", ",".join(delta_jars()),
            *[arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")]]


def has_delta_extension(spark: SparkSession) -> bool:
    return DELTA_EXTENSION in (spark.conf.get("spark.sql.extensions", "") or "")


# Loggers that print every failed task's Python traceback: segscale reports the cause itself.
TASK_FAILURE_LOGGERS = ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager")
# What the embedded Hive metastore says of every Delta table registered (it has no Hive SerDe, which is expected:
# Hive itself never reads a Delta table) and of its own Hive settings, none of it something to act on.
METASTORE_LOGGERS = ("org.apache.spark.sql.hive.HiveExternalCatalog", "org.apache.hadoop.hive.ql.session.SessionState",
                     "org.apache.hadoop.hive.conf.HiveConf")


def _silence(spark: SparkSession, loggers: tuple[str, ...]) -> None:
    """Turn `loggers` off (set spark.log_level: INFO to see them)."""
    jvm = spark.sparkContext._jvm
    configurator = jvm.org.apache.logging.log4j.core.config.Configurator
    off = jvm.org.apache.logging.log4j.Level.OFF
    for name in loggers:
        configurator.setLevel(name, off)
