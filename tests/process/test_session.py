"""The session module: embedded defaults, the cluster's session taken as it is under spark-submit, and the Delta jars
of `segscale jars`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest
from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession

from segscale.config import Settings
from segscale.errors import ConfigError
from segscale.session import (
    DELTA_CATALOG,
    DELTA_EXTENSION,
    delta_jars,
    delta_package,
    delta_spark_conf,
    fetch_delta_jars,
    get_spark,
)

PROBE = """
import json, os, sys
from segscale.config import Settings
from segscale.session import get_spark
settings = Settings.model_validate({"spark": {"master": "local[3]", "shuffle_partitions": 7,
                                              "conf": {"spark.segscale.marker": "embedded"}}})
spark = get_spark(settings)
conf = spark.sparkContext.getConf()
print("RESULT" + json.dumps({
    "master": spark.sparkContext.master,
    "tz": spark.conf.get("spark.sql.session.timeZone"),
    "aqe": spark.conf.get("spark.sql.adaptive.enabled"),
    "arrow": spark.conf.get("spark.sql.execution.arrow.pyspark.enabled"),
    "shuffle": spark.conf.get("spark.sql.shuffle.partitions"),
    "call_sites": spark.conf.get("spark.python.sql.dataFrameDebugging.enabled"),
    "marker": spark.conf.get("spark.segscale.marker", "unset"),
    "pyspark_python": os.environ.get("PYSPARK_PYTHON"),
    "python": sys.executable,
}))
spark.stop()
"""


def _result(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_an_active_session_is_reused(spark):
    assert get_spark(Settings()) is spark


def test_embedded_session_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = _result(result.stdout)
    assert seen == {"master": "local[3]", "tz": "UTC", "aqe": "true", "arrow": "true", "shuffle": "7",
                    "call_sites": "false", "marker": "embedded", "pyspark_python": sys.executable,
                    "python": sys.executable}


def test_under_spark_submit_the_clusters_session_is_taken_as_it_is(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    result = subprocess.run(
        [str(spark_submit), "--master", "local[1]", "--conf", "spark.sql.shuffle.partitions=3",
         "--conf", "spark.sql.session.timeZone=UTC", str(script)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    seen = _result(result.stdout)
    # the platform's master and settings win over segscale's embedded ones
    assert seen["master"] == "local[1]"
    assert seen["shuffle"] == "3"
    assert seen["marker"] == "unset"


# ---- the Delta jars ------------------------------------------------------------------------------------------
def test_the_delta_package_is_the_one_delta_spark_asks_for():
    asked = configure_spark_with_delta_pip(SparkSession.builder)._options["spark.jars.packages"]
    assert delta_package() == asked == "io.delta:delta-spark_4.2_2.13:4.4.0"  # the pair pinned in pyproject.toml


def test_once_fetched_the_jars_come_from_the_cache_without_a_download(spark):
    # A fetch would start a Spark session of its own, which fetch_delta_jars refuses while this one runs.
    jars = fetch_delta_jars()
    assert jars == delta_jars() and all(Path(jar).is_file() for jar in jars)
    assert any(Path(jar).name == "io.delta_delta-spark_4.2_2.13-4.4.0.jar" for jar in jars)


def test_a_delta_spark_session_gets_the_jars_the_extension_and_a_small_log_replay():
    conf = delta_spark_conf({"spark.sql.extensions": "com.example.Ext", "spark.jars": "/opt/mine.jar"}, cores=4)
    assert conf["spark.sql.extensions"] == f"com.example.Ext,{DELTA_EXTENSION}"
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    assert conf["spark.jars"].split(",") == ["/opt/mine.jar", *delta_jars()]
    assert conf["spark.databricks.delta.snapshotPartitions"] == "4"
    # jars the config brings itself, and a log replay it sizes itself, are left alone
    own = delta_spark_conf({"spark.jars.packages": "io.delta:delta-spark_4.2_2.13:4.4.0",
                            "spark.databricks.delta.snapshotPartitions": "16"}, cores=4)
    assert "spark.jars" not in own and "spark.databricks.delta.snapshotPartitions" not in own


def test_without_the_jars_a_delta_spark_session_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=r"needs the Delta jars \(io\.delta:delta-spark_4\.2_2\.13:4\.4\.0\).*"
                                          r"Run `segscale jars` once"):
        delta_spark_conf({}, cores=2)


def test_fetching_without_maven_central_fails_saying_what_ivy_could_not_reach(tmp_path):
    dead = "127.0.0.1 -Dhttps.proxyPort=9 -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=9"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "JAVA_TOOL_OPTIONS": f"-Dhttps.proxyHost={dead}"}
    result = subprocess.run([str(Path(sys.executable).parent / "segscale"), "jars"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert "could not fetch the Delta jars io.delta:delta-spark_4.2_2.13:4.4.0 from Maven Central" in result.stderr
    assert "Server access error at url https://repo1.maven.org/maven2/io/delta/" in result.stderr
    assert not list(tmp_path.rglob("*.txt"))  # no manifest: the next `segscale jars` tries again
