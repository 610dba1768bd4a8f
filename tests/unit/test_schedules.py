"""The schedule definitions in conf/schedules/ call the job the way the code accepts: the entry point and the
config file exist, the wheel is the one `make wheel` builds, and every argument parses with the job's parser."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import sys
import types
from pathlib import Path

import pytest
import yaml
from frames import ROOT

from segscale import __version__
from segscale.cli.app import parse
from segscale.config import load_settings
from segscale.session import DELTA_CATALOG, DELTA_EXTENSION, delta_package

SCHEDULES = ROOT / "conf" / "schedules"
WHEEL = f"segscale-{__version__}-py3-none-any.whl"  # what `make wheel` writes to dist/


# The spark-submit entry points and the command each runs (`segscale COMMAND ARGS`).
JOBS = {"run_pipeline.py": "run", "maintain.py": "maintain"}


def parses_as_the_job(arguments: list[str], job: str = "run_pipeline.py") -> None:
    """jobs/JOB runs `segscale COMMAND ARGS`; the CLI exits on an argument it does not accept."""
    source = (ROOT / "jobs" / job).read_text()
    assert f'main(["{JOBS[job]}", *sys.argv[1:]])' in source
    try:
        parse([JOBS[job], *arguments])
    except SystemExit as exc:
        raise AssertionError(f"the job does not accept {arguments}") from exc


def flag_value(arguments: list[str], flag: str) -> str:
    return arguments[arguments.index(flag) + 1]


def load_airflow_dag(path: Path, home: Path) -> list[dict]:
    """The DAG's operators, as the keyword arguments they were built with. With Airflow installed the module is
    imported for real; otherwise with stand-ins for the two Airflow names it uses, so the file still runs."""
    operators: list[dict] = []
    stubs = {}
    if importlib.util.find_spec("airflow") is None:
        class DAG:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        class SparkSubmitOperator:
            def __init__(self, **kwargs):
                self.kwargs = {**kwargs, "downstream": []}
                operators.append(self.kwargs)

            def __rshift__(self, other):
                self.kwargs["downstream"].append(other.kwargs["task_id"])
                return other

        airflow = types.ModuleType("airflow")
        airflow.DAG = DAG
        spark_submit = types.ModuleType("airflow.providers.apache.spark.operators.spark_submit")
        spark_submit.SparkSubmitOperator = SparkSubmitOperator
        stubs = {"airflow": airflow, "airflow.providers": types.ModuleType("p"),
                 "airflow.providers.apache": types.ModuleType("a"),
                 "airflow.providers.apache.spark": types.ModuleType("s"),
                 "airflow.providers.apache.spark.operators": types.ModuleType("o"),
                 "airflow.providers.apache.spark.operators.spark_submit": spark_submit}
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SEGSCALE_HOME", str(home))
            spec = importlib.util.spec_from_file_location("segscale_schedule_dag", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    if not stubs:  # real Airflow: read the operators off the DAG
        operators = [{"task_id": t.task_id, "application": t.application, "py_files": t._py_files,
                      "application_args": t.application_args, "packages": t._packages, "conf": t.conf,
                      "downstream": sorted(t.downstream_task_ids)} for t in module.dag.tasks]
    else:
        assert module.dag.kwargs["max_active_runs"] == 1
    return operators


def test_the_airflow_dag_submits_the_pipeline_then_maintenance_with_arguments_they_accept():
    operators = {task["task_id"]: task for task in load_airflow_dag(SCHEDULES / "segscale_airflow_dag.py", ROOT)}
    assert sorted(operators) == ["maintain", "run_pipeline"]
    assert operators["run_pipeline"]["downstream"] == ["maintain"]  # maintenance after the run, never beside it
    for task in operators.values():
        job = Path(task["application"])
        assert job.parent == ROOT / "jobs" and job.exists()
        assert Path(task["py_files"]) == ROOT / "dist" / WHEEL
        arguments = [re.sub(r"\{\{\s*ds\s*\}\}", "2024-12-31", a) for a in task["application_args"]]  # Airflow's ds
        parses_as_the_job(arguments, job.name)
        assert Path(flag_value(arguments, "--config")).is_file()
        # conf/cluster.yaml writes through delta-spark: the session gets the pinned jars and the Delta extension
        assert load_settings(flag_value(arguments, "--config"), environ={}).delta.backend == "delta-spark"
        assert task["packages"] == delta_package()
        assert task["conf"]["spark.sql.extensions"] == DELTA_EXTENSION
        assert task["conf"]["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    assert flag_value(operators["run_pipeline"]["application_args"], "--snapshot-date") == "{{ ds }}"


def test_the_databricks_bundle_runs_the_pipeline_then_maintenance_with_arguments_they_accept():
    bundle_dir = SCHEDULES / "databricks"
    bundle = yaml.safe_load((bundle_dir / "databricks.yml").read_text())
    synced = [(bundle_dir / p).resolve() for p in bundle["sync"]["paths"]]
    sync_root = Path(os.path.commonpath(synced)) if len(synced) > 1 else synced[0].parent
    assert sync_root == ROOT  # so ${workspace.file_path} is the repository root
    jobs = bundle["resources"]["jobs"]
    assert jobs and all(job["max_concurrent_runs"] == 1 for job in jobs.values())
    for job in jobs.values():
        assert job["schedule"]["timezone_id"] == "UTC"
        tasks = {task["task_key"]: task for task in job["tasks"]}
        assert sorted(tasks) == ["maintain", "run_pipeline"]
        assert tasks["maintain"]["depends_on"] == [{"task_key": "run_pipeline"}]
        for task in tasks.values():
            python_file = (bundle_dir / task["spark_python_task"]["python_file"]).resolve()
            assert python_file.parent == ROOT / "jobs" and python_file.exists()
            assert any(python_file.is_relative_to(p) for p in synced)
            parameters = task["spark_python_task"]["parameters"]
            arguments = [a.replace("${workspace.file_path}", str(ROOT)) for a in parameters]
            parses_as_the_job(arguments, python_file.name)
            assert Path(flag_value(arguments, "--config")).is_file()
            wheels = [(bundle_dir / lib["whl"]).resolve() for lib in task["libraries"]]
            assert [w.parent for w in wheels] == [ROOT / "dist"] and fnmatch.fnmatch(WHEEL, wheels[0].name)


def test_the_check_catches_an_argument_the_job_does_not_accept():
    with pytest.raises(AssertionError, match="does not accept"):
        parses_as_the_job(["--config", "conf/cluster.yaml", "--snapshot-day", "2024-12-31"])
