"""`segscale train` and `promote`: MLflow tracking, the registry's aliases, the promotion gate, skops trust."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import skops.io
import yaml
from deltalake import DeltaTable
from frames import cheap_config, free_port, mlflow_store
from mlflow import MlflowClient
from pyspark.sql import functions as F
from sklearn.ensemble import HistGradientBoostingClassifier

from segscale.cli import main
from segscale.config import Settings
from segscale.errors import SegscaleError
from segscale.models import churn as churn_model
from segscale.models import registry as mlflow_registry
from segscale.pipeline import generate_inputs

SNAPSHOT = "2024-12-31"
NAME = "segscale_churn"


@pytest.fixture(scope="module")
def inputs(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-inputs")
    generate_inputs(spark, Settings.model_validate({"generate": {"customers": 800, "seed": 8}}), str(out))
    return out


def train(spark, inputs, warehouse, *extra: str, config: Path | None = None) -> int:
    args = ["train", "--input", str(inputs), "--warehouse", str(warehouse), "--snapshot-date", SNAPSHOT]
    if config is not None:
        args += ["--config", str(config)]
    return main([*args, *extra], spark=spark)


@pytest.fixture(scope="module")
def registry(spark, inputs, tmp_path_factory):
    """Two trainings on one warehouse, in the cheap model profile: v1 (first), v2 (a much weaker model). Read it;
    a test that changes the registry works on `own_registry`."""
    root = tmp_path_factory.mktemp("registry")
    cheap = cheap_config(root / "cheap.yaml")
    weak = cheap_config(root / "weak.yaml", churn={"estimator_params": {"max_iter": 1, "max_depth": 1,
                                                                         "learning_rate": 0.01}})
    summaries = []
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for config in (cheap, weak):
            out = root / f"summary-{len(summaries)}.json"
            assert train(spark, inputs, root / "wh", "--summary-json", str(out), config=config) == 0
            summaries.append(json.loads(out.read_text()))
    return root, client_of(root), summaries


def client_of(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, uri)


@pytest.fixture
def own_registry(registry, tmp_path):
    """A copy of the registry's root (warehouse and MLflow store) for a test that moves aliases."""
    root, _, summaries = registry
    shutil.copytree(root, tmp_path / "own")
    return tmp_path / "own", client_of(tmp_path / "own"), summaries


def test_first_version_becomes_champion_and_every_version_is_challenger_first(registry):
    _, client, summaries = registry
    versions = [s["stages"]["train"]["model_version"] for s in summaries]
    assert versions == [1, 2]
    decisions = [s["stages"]["train"]["promotion"] for s in summaries]
    assert decisions[0]["promoted"] and decisions[0]["reason"] == "first version"
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 2
    assert client.get_model_version(NAME, "1").tags["promotion_decision"] == "promoted"


def test_gate_keeps_the_champion_against_a_worse_model_and_logs_both_numbers(registry):
    _, client, summaries = registry
    weak = summaries[1]["stages"]["train"]["promotion"]
    assert not weak["promoted"]
    assert weak["champion_version"] == 1
    assert weak["new_auc"] < weak["champion_auc"] - 0.005
    run = client.get_run(summaries[1]["stages"]["train"]["mlflow_run_id"])
    assert run.data.metrics["champion_holdout_roc_auc"] == pytest.approx(weak["champion_auc"])
    assert run.data.metrics["holdout_roc_auc"] == pytest.approx(weak["new_auc"])
    assert run.data.tags["promotion_decision"] == "kept champion"
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    assert client.get_model_version(NAME, "2").tags["promotion_decision"] == "kept champion"


@pytest.mark.parametrize(("new_auc", "promoted"), [(0.7951, True), (0.7949, False)])
def test_gate_moves_the_champion_unless_the_new_version_is_worse_by_more_than_the_tolerance(tmp_path, new_auc,
                                                                                           promoted):
    """Champion v1 scores 0.80 on the new version's holdout; tolerance 0.005."""
    client = client_of(tmp_path)
    client.create_registered_model(NAME)
    for _ in range(2):
        client.create_model_version(NAME, source=(tmp_path / "model").as_uri())
    client.set_registered_model_alias(NAME, "champion", "1")
    asked = []
    decision = mlflow_registry.gate(client, NAME, 2, new_auc, 0.005, lambda v: asked.append(v) or 0.80)
    assert asked == [1] and decision.promoted is promoted and decision.champion_auc == 0.80
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == (2 if promoted else 1)
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 2
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion_decision"] == ("promoted" if promoted else "kept champion")
    assert ("not worse than" in tags["promotion_reason"]) is promoted


def test_training_run_logs_params_lineage_metrics_artifacts_and_a_skops_model(registry, tmp_path):
    root, client, summaries = registry
    trained = summaries[0]["stages"]["train"]
    run = client.get_run(trained["mlflow_run_id"])
    assert run.data.params["estimator"] == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert run.data.params["holdout_cutoff"] == "2024-10-02"
    assert run.data.tags["segscale.config_hash"] == summaries[0]["config_hash"]
    assert run.data.tags["lineage.transactions.delta_version"] == "0"
    metrics = run.data.metrics
    assert metrics["holdout_roc_auc"] > metrics["baseline_recency_roc_auc"]
    assert metrics["holdout_roc_auc"] > metrics["baseline_frequency_recency_rule_roc_auc"]
    assert 0.5 < metrics["holdout_roc_auc_vs_truth"] <= 1
    assert {"holdout_pr_auc", "holdout_brier", "holdout_log_loss", "holdout_top_decile_lift",
            "holdout_top_decile_capture"} <= metrics.keys()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "evaluation.json" in artifacts
    charts = {a.path for a in client.list_artifacts(run.info.run_id, "charts")}
    assert charts == {"charts/calibration.png", "charts/lift.png", "charts/importance.png"}
    for name in charts:
        png = Path(client.download_artifacts(run.info.run_id, name, str(tmp_path)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    evaluation = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation.json",
                                                           str(tmp_path))).read_text())
    assert len(evaluation["calibration"]) > 3 and evaluation["beats_baselines"]
    with mlflow_store(root):
        info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    assert info.signature is not None and "recency_days" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None
    flavor = info.flavors["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert flavor["skops_trusted_types"] == sorted(churn_model.TRUSTED_TYPES)
    assert (root / "mlartifacts").is_dir()  # the embedded store keeps artifacts beside it


def test_promote_by_hand_records_why(own_registry, capsys):
    root, client, _ = own_registry
    assert main(["promote", "--warehouse", str(root / "wh"), "--version", "2", "--reason", "rollback drill"]) == 0
    assert "champion is now version 2 (was 1)" in capsys.readouterr().out
    version = client.get_model_version(NAME, "2")
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2
    assert version.tags["promotion_reason"] == "rollback drill"
    assert version.tags["previous_champion"] == "1"
    assert main(["promote", "--warehouse", str(root / "wh"), "--version", "9", "--reason", "x"]) == 2
    assert "has no version 9; registered versions: [1, 2]" in capsys.readouterr().err
    assert main(["promote", "--warehouse", str(root / "wh"), "--version", "1", "--reason", " "]) == 2
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2
    # The CLV model: each training fitted a version and made it champion; roll back to the first.
    assert int(client.get_model_version_by_alias("segscale_clv", "champion").version) == 2
    assert main(["promote", "--model", "clv", "--warehouse", str(root / "wh"), "--version", "1", "--reason",
                 "compare"]) == 0
    assert int(client.get_model_version_by_alias("segscale_clv", "champion").version) == 1
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2


def test_the_clv_model_is_logged_as_code_with_its_parameters_in_the_config(registry, tmp_path):
    """No pickle in the artifact: the pyfunc is segscale's own code, the fit lives in the model config."""
    root, client, summaries = registry
    fitted = summaries[0]["stages"]["clv fit"]
    with mlflow_store(root):
        info = mlflow.models.get_model_info("models:/segscale_clv/1")
        local = Path(mlflow.artifacts.download_artifacts("models:/segscale_clv/1", dst_path=str(tmp_path / "clv")))
    pyfunc = info.flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert pyfunc["model_code_path"].endswith("clv_pyfunc.py")
    assert pyfunc["config"]["bgnbd"] == pytest.approx(fitted["params"]["bgnbd"])
    assert info.signature.inputs.input_names() == ["bgnbd_frequency", "bgnbd_recency", "bgnbd_T", "bgnbd_monetary"]
    assert not [f.name for f in local.rglob("*") if f.suffix in (".pkl", ".pickle")]
    assert client.get_model_version("segscale_clv", "2").tags["promotion_decision"] == "promoted"


def test_each_warehouse_uses_its_own_embedded_store_and_a_command_leaves_no_uri_behind(tmp_path, monkeypatch):
    for name in ("a", "b"):
        with mlflow_registry.scoped():
            mlflow_registry.connect(str(tmp_path / name / "wh"), "segscale")
            assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / name / 'mlflow.db'}"
            mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")  # MLflow's own calls export it too
        # Neither store passes for the user's setting, so the next warehouse still gets the store beside it.
        assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
        assert mlflow_registry.tracking_uri(str(tmp_path / "c" / "wh")) == f"sqlite:///{tmp_path / 'c' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", user := f"sqlite:///{tmp_path / 'user.db'}")
    with mlflow_registry.scoped():
        mlflow_registry.connect(str(tmp_path / "a" / "wh"), "segscale")
        assert mlflow.get_tracking_uri() == user
    assert os.environ["MLFLOW_TRACKING_URI"] == user and mlflow.get_tracking_uri() == user


class HandWrittenClassifier(HistGradientBoostingClassifier):
    """A type that is not on segscale's trusted list."""


def test_model_with_an_untrusted_type_is_refused_when_saved_and_when_loaded(tmp_path):
    example = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    untrusted = HandWrittenClassifier(max_iter=2).fit(example, [0, 1, 0, 1])
    trusted = HistGradientBoostingClassifier(max_iter=2).fit(example, [0, 1, 0, 1])
    with mlflow_store(tmp_path) as client:
        mlflow_registry.connect(str(tmp_path / "wh"), "trusted types")  # the store's own experiment and artifacts
        with mlflow.start_run():
            with pytest.raises(SegscaleError, match=r"does not trust for loading: \[.*HandWrittenClassifier'\]"):
                churn_model.log_classifier(untrusted, "refused", example)
            assert client.search_registered_models() == []  # nothing registered
            # A model of trusted types only is logged, with segscale's list recorded for its loading.
            assert churn_model.log_classifier(trusted, "accepted", example) == 1
    # An artifact whose saved trust list misses a type it contains: skops refuses to load it.
    path = tmp_path / "model"
    mlflow.sklearn.save_model(trusted, str(path), serialization_format="skops", pip_requirements=["scikit-learn"],
                              skops_trusted_types=sorted(churn_model.TRUSTED_TYPES))
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    assert mlmodel["flavors"]["sklearn"]["skops_trusted_types"] == sorted(churn_model.TRUSTED_TYPES)
    mlmodel["flavors"]["sklearn"]["skops_trusted_types"] = []
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(skops.io.exceptions.UntrustedTypesFoundException):
        mlflow.sklearn.load_model(str(path))


def test_too_little_history_exits_2_naming_the_cause(spark, inputs, tmp_path, capsys):
    code = main(["train", "--input", str(inputs), "--warehouse", str(tmp_path / "wh"), "--snapshot-date",
                 "2022-03-01"], spark=spark)
    assert code == 2
    err = capsys.readouterr().err
    assert "churn model skipped: " in err and "churn.min_rows_per_class = 20 churned and 20 retained" in err


def test_unreachable_tracking_server_exits_3(spark, inputs, tmp_path, capsys, unreachable_mlflow):
    assert main(["promote", "--warehouse", str(tmp_path / "wh"), "--version", "1", "--reason", "x"]) == 3
    assert f"MLflow tracking at {unreachable_mlflow} is unreachable" in capsys.readouterr().err


@pytest.fixture
def tracking_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        # Without MLflow's job runner (six consumer processes for its GenAI jobs, about 20 CPU-seconds to start),
        # which tracking and the model registry do not use.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start within 90 s")
        yield f"http://127.0.0.1:{port}", tmp_path / "server-artifacts"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_train_register_and_score_through_a_real_tracking_server(spark, inputs, tmp_path, tracking_server,
                                                                  monkeypatch, cheap_models):
    uri, artifacts = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "summary.json"
    # No champion on the server yet: `run` trains, registers and gates version 1, then scores with it.
    assert main(["run", "--input", str(inputs), "--warehouse", str(tmp_path / "wh"), "--snapshot-date", SNAPSHOT,
                 "--summary-json", str(out)], spark=spark) == 0
    stages = json.loads(out.read_text())["stages"]
    assert stages["train"]["tracking_uri"] == uri and stages["train"]["model_version"] == 1
    assert stages["segment"]["churn_model"] == {"name": NAME, "version": 1}
    client = MlflowClient(uri, uri)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    assert any(artifacts.rglob("MLmodel"))  # the server stored the model's artifacts
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the embedded store
    scores = spark.read.parquet(*DeltaTable(str(tmp_path / "wh" / "customer_scores")).file_uris())
    buyers = scores.where(F.col("recency_days").isNotNull())
    assert buyers.where(F.col("churn_probability").between(0, 1) & (F.col("model_version") == 1)).count() \
        == buyers.count() > 0
