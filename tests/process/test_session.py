"""The session module: embedded defaults, and the cluster's session taken as it is under spark-submit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyspark

from segscale.config import Settings
from segscale.session import get_spark

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
