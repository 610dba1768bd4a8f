"""Churn scoring of every customer: `segscale run` (training when there is no champion) and `segscale score`,
with the errors that stop them before anything is written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from frames import CHEAP_MODELS_ENV, D1, D2, GOLDEN_INPUT, mlflow_store, run_command
from mlflow import MlflowClient
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from segscale import catalog
from segscale.cli import main
from segscale.config import DeltaSettings
from segscale.io.delta import Warehouse
from segscale.models import registry
from segscale.models.bgnbd import CLV_COLUMNS
from segscale.models.bgnbd import INPUT_COLUMNS as CLV_INPUTS
from segscale.models.churn import CHURN_COLUMNS, load_classifier, log_classifier
from segscale.models.churn_classifier import predict_churn

SNAPSHOT = D2.isoformat()  # the shared warehouse's latest snapshot
NAME = "segscale_churn"


def run(spark, root, *extra: str) -> dict:
    out = root / "summary.json"
    assert run_command(spark, GOLDEN_INPUT, root / "wh", SNAPSHOT, "--summary-json", str(out), *extra) == 0
    return json.loads(out.read_text())


def score(spark, root, *extra: str) -> int:
    return main(["score", "--warehouse", str(root / "wh"), "--snapshot-date", SNAPSHOT, *extra], spark=spark)


def client_of(root) -> MlflowClient:
    """The MLflow client of the embedded store beside root's warehouse, registry included."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def table_of(spark, root, name: str):
    """A table of root's warehouse, its snapshot_date partition column included."""
    return Warehouse(spark, str(root / "wh"), DeltaSettings(backend="delta-rs")).read(catalog.table(name))


def rows_of(root, name: str) -> pd.DataFrame:
    """A table's rows through delta-rs (also when the table has none)."""
    return DeltaTable(str(root / "wh" / name)).to_pandas()


def of_snapshot(table_df, day: str = SNAPSHOT):
    return table_df.where(F.col("snapshot_date") == F.lit(day))


def scores_of(spark, root, day: str = D1.isoformat()):
    """customer_scores of one snapshot (the first run's by default)."""
    return of_snapshot(table_of(spark, root, "customer_scores"), day)


def first_commit(root, name: str) -> dict:
    """The commit metadata of version 0 of a table: what the first run recorded."""
    (entry,) = [e for e in DeltaTable(str(root / "wh" / name)).history() if e["version"] == 0]
    return json.loads(entry["userMetadata"])


@pytest.fixture
def scored(two_snapshots):
    """The session's shared warehouse (conftest.two_snapshots): its first run, on D1, found no champion, so it
    trained version 1 of both models and scored with them; D2 scored with the same champions. (root, first
    summary); read it, never write to it (`own` is a copy to write to)."""
    settings, _, first, _ = two_snapshots
    return Path(settings.paths.warehouse).parent, first


@pytest.fixture
def own(scored, tmp_path) -> Path:
    """A copy of the shared root (warehouse and the MLflow store beside it) for a test that writes, so the shared
    warehouse stays as the golden run left it, whatever order the tests run in."""
    root, _ = scored
    shutil.copytree(root, tmp_path / "own")
    return tmp_path / "own"


def test_first_run_trains_a_champion_then_scores_every_customer(spark, scored):
    root, summary = scored
    assert list(summary["stages"]) == ["ingest", "validate", "training set", "train", "clv fit", "features",
                                       "segment", "migration", "monitor", "outcomes", "plan", "queue", "economics"]
    assert summary["stages"]["train"]["promotion"]["promoted"]
    assert summary["stages"]["segment"]["churn_model"] == {"name": NAME, "version": 1}
    scores = scores_of(spark, root)
    buyers = scores.where(F.col("lifecycle_stage") != "prospect")
    prospects = scores.where(F.col("lifecycle_stage") == "prospect")
    assert buyers.count() > 500 and prospects.count() > 50
    assert buyers.where(F.col("churn_probability").isNull() | ~F.col("churn_probability").between(0, 1)).count() == 0
    assert prospects.where(F.col("churn_probability").isNotNull() | F.col("churn_risk_band").isNotNull()).count() == 0
    assert scores.where((F.col("model_name") != NAME) | (F.col("model_version") != 1)).count() == 0
    # Churned customers are riskier than loyal ones on average.
    mean = {r.lifecycle_stage: r.p for r in scores.groupBy("lifecycle_stage").agg(
        F.avg("churn_probability").alias("p")).collect()}
    assert mean["churned"] > mean["loyal"]
    bands = summary["stages"]["segment"]["churn_risk_bands"]
    assert bands["unscored"] == prospects.count()
    assert sum(n for band, n in bands.items() if band != "unscored") == buyers.count()
    meta = first_commit(root, "customer_scores")
    assert meta["snapshot_date"] == D1.isoformat() and meta["model_version"] == f"models:/{NAME}/1"
    assert meta["extra"]["clv_model"] == "models:/segscale_clv/1"


def test_first_run_fits_and_registers_clv_and_values_every_buyer(spark, scored):
    root, summary = scored
    fitted = summary["stages"]["clv fit"]
    assert fitted["model_version"] == 1 and fitted["buyers"] > 500 and fitted["repeat_buyers"] > 250
    assert summary["stages"]["segment"]["clv_model"] == {"name": "segscale_clv", "version": 1}
    scores = scores_of(spark, root)
    buyers = scores.where(F.col("lifecycle_stage") != "prospect")
    assert buyers.where(F.coalesce(*[F.col(c).isNull() for c in CLV_COLUMNS])
                        | ~F.col("p_alive").between(0, 1) | (F.col("clv") < 0)
                        | (F.col("clv_model_version") != 1)).count() == 0
    prospects = scores.where(F.col("lifecycle_stage") == "prospect")
    assert prospects.where(F.coalesce(*[F.col(c) for c in CLV_COLUMNS]).isNotNull()).count() == 0
    # Tiers follow predicted value: every high_value buyer is worth more than every potential one.
    by_tier = {r.value_tier: r for r in buyers.groupBy("value_tier").agg(F.min("clv").alias("low"),
                                                                           F.max("clv").alias("high")).collect()}
    assert by_tier["high_value"].low >= by_tier["potential"].high >= by_tier["regular"].high
    # The registered pyfunc predicts what the executors published, from the four inputs.
    features = table_of(spark, root, "customer_features").where(F.col("snapshot_date") == F.lit(D1))
    rows = features.where(F.col("bgnbd_frequency").isNotNull()).orderBy("customer_id").limit(200).toPandas()
    with mlflow_store(root):
        predicted = mlflow.pyfunc.load_model("models:/segscale_clv/1").predict(rows[list(CLV_INPUTS)])
    published = (buyers.select("customer_id", *CLV_COLUMNS).toPandas().set_index("customer_id")
                 .loc[rows["customer_id"]])
    np.testing.assert_allclose(published.to_numpy(), predicted.to_numpy(), rtol=1e-12)
    client = client_of(root)
    assert int(client.get_model_version_by_alias("segscale_clv", "champion").version) == 1
    run = client.get_run(fitted["mlflow_run_id"])
    assert {"bgnbd.r", "gamma_gamma.p", "bin_days"} <= set(run.data.params)
    assert run.data.metrics["bgnbd_log_likelihood"] == pytest.approx(fitted["log_likelihood"]["bgnbd"])
    artifacts = Path(client.download_artifacts(fitted["mlflow_run_id"], "fit.json", str(root / "dl")))
    assert json.loads(artifacts.read_text())["bgnbd"]["converged"] is True


def test_the_plan_spends_within_budget_and_its_summary_adds_up(spark, own, monkeypatch):
    """A budget too small for every candidate: the plan is the top of the ranking that fits it."""
    root = own
    monkeypatch.setenv("SEGSCALE_RETENTION__BUDGET", "300")
    out = root / "plan.json"
    assert main(["plan", "--warehouse", str(root / "wh"), "--snapshot-date", SNAPSHOT, "--summary-json", str(out)],
                spark=spark) == 0
    retention = json.loads(out.read_text())["stages"]["plan"]["retention"]
    plan = of_snapshot(table_of(spark, root, "retention_plan")).toPandas().sort_values("priority_rank")
    assert plan["priority_rank"].tolist() == list(range(1, len(plan) + 1))
    chosen = plan[plan["selected"]]
    in_plan = plan["treatment_group"] != "not selected"
    assert 0 < len(chosen) < in_plan.sum() < len(plan) and in_plan.iloc[: in_plan.sum()].all()
    assert (chosen["treatment_group"] == "treated").all()
    assert chosen["cost"].sum() == pytest.approx(retention["spend"]) and retention["spend"] <= 300
    assert plan["cumulative_cost"].iloc[in_plan.sum()] > 300  # the next customer would break the budget
    ratio = plan["expected_saved_value"] / plan["cost"]
    assert (ratio.diff().dropna() <= 1e-12).all()  # ranked by saved value per unit cost
    np.testing.assert_allclose(plan["value_at_risk"], plan["churn_probability"] * plan["clv"], rtol=1e-12)
    assert (plan["expected_saved_value"] > 0).all()
    summary = of_snapshot(table_of(spark, root, "retention_summary")).toPandas().set_index("value_tier")
    totals = chosen.groupby("value_tier").agg(n=("customer_id", "size"), spend=("cost", "sum"),
                                              saved=("expected_saved_value", "sum"))
    for tier, row in summary.iterrows():
        expected = totals.loc[tier] if tier in totals.index else pd.Series({"n": 0, "spend": 0.0, "saved": 0.0})
        assert row["customers_targeted"] == expected["n"]
        assert row["customers_controlled"] == ((plan["value_tier"] == tier) & (plan["treatment_group"] == "control")
                                               ).sum()
        assert row["spend"] == pytest.approx(expected["spend"])
        # Each customer's saved value is summed exactly to 1/10,000 of the currency, so the totals may differ
        # from a float sum by half a unit per customer.
        assert row["expected_saved_value"] == pytest.approx(expected["saved"], abs=0.5e-4 * expected["n"] + 1e-9)
        assert row["share_of_budget"] == pytest.approx(expected["spend"] / 300)
        assert row["candidates"] == (plan["value_tier"] == tier).sum() <= row["scored_customers"]
        assert row["roi"] == pytest.approx(row["expected_saved_value"] / max(row["spend"], 1.0))
    assert set(summary.index) == {"high_value", "potential", "regular"}


def test_the_queue_holds_the_most_valuable_at_risk_customers_with_their_plan_and_reasons(spark, own, monkeypatch):
    """at_risk_queue: the top queue.max_customers at-risk customers of the high-value and potential tiers by value
    at risk, plus a customer requested by id, each with the plan's group and treatment and up to three reasons."""
    root = own
    scores = of_snapshot(table_of(spark, root, "customer_scores")).toPandas()
    scores["value_at_risk"] = scores["churn_probability"] * scores["clv"]
    at_risk = scores[scores["value_tier"].isin(["high_value", "potential"]) & (scores["churn_probability"] >= 0.5)]
    at_risk = at_risk.sort_values(["value_at_risk", "customer_id"], ascending=[False, True])
    requested = scores[(scores["value_tier"] == "regular") & (scores["churn_probability"] < 0.5)]["customer_id"].min()
    monkeypatch.setenv("SEGSCALE_QUEUE__MAX_CUSTOMERS", "25")
    monkeypatch.setenv("SEGSCALE_QUEUE__CUSTOMERS", json.dumps([requested]))
    out = root / "plan.json"
    assert main(["plan", "--warehouse", str(root / "wh"), "--snapshot-date", SNAPSHOT, "--summary-json", str(out)],
                spark=spark) == 0
    record = json.loads(out.read_text())["stages"]["queue"]
    assert (record["at_risk"], record["left_out"], record["customers"]) == (len(at_risk), len(at_risk) - 25, 26)
    queue = of_snapshot(table_of(spark, root, "at_risk_queue")).toPandas().set_index("customer_id")
    assert set(queue.index[~queue["on_request"]]) == set(at_risk["customer_id"].head(25))
    assert queue.loc[requested, "on_request"] and queue["on_request"].sum() == 1
    plan = of_snapshot(table_of(spark, root, "retention_plan")).toPandas().set_index("customer_id")
    groups = plan["treatment_group"].reindex(queue.index)
    assert queue["treatment_group"].fillna("-").tolist() == groups.fillna("-").tolist()
    treated = groups == "treated"
    assert (queue.loc[treated, "planned_treatment"] == plan["treatment"].reindex(queue.index)[treated]).all()
    assert queue.loc[~treated, "planned_treatment"].isna().all()
    with mlflow_store(root):
        features = set(load_classifier(NAME, int(queue["churn_model_version"].iloc[0])).feature_names_in_)
    for customer, row in queue.iterrows():
        names, amounts = list(row["reason_features"]), list(row["reason_contributions"])
        assert set(names) <= features and len(names) <= 3 and amounts == sorted(amounts, reverse=True)
        assert all(a > 0 for a in amounts)
        phrases = [row[f"reason_{k}"] for k in (1, 2, 3)]
        assert [p is not None for p in phrases] == [k < len(names) for k in range(3)], customer
    assert queue.loc[~queue["on_request"], "reason_1"].notna().all()  # at risk: something pushes the risk up
    np.testing.assert_allclose(queue["value_at_risk"], queue["churn_probability"] * queue["clv"], rtol=1e-12)


def clean_transactions(root) -> pd.DataFrame:
    """The golden input's transactions without the rows D2's validation quarantined (a duplicate's kept copy
    stays), read with pandas."""
    transactions = pd.read_csv(GOLDEN_INPUT / "transactions" / "part-0.csv", dtype=str)
    quarantine = rows_of(root, "quarantine")
    bad = quarantine[(quarantine["source_table"] == "transactions") & (quarantine["snapshot_date"] == D2)
                     & ~quarantine["reason"].str.startswith("duplicate")]
    bad_ids = {json.loads(record).get("transaction_id") for record in bad["record"]}
    clean = transactions[~transactions["transaction_id"].isin(bad_ids)].drop_duplicates("transaction_id").copy()
    clean["ts"] = pd.to_datetime(clean["ts"], utc=True, format="ISO8601")
    clean["amount"] = clean["amount"].astype(float)
    return clean


def test_the_matured_backtest_equals_an_independent_computation(scored):
    """D2 is a churn horizon after D1: its run backtested D1's published churn scores and CLV predictions against
    what the input says happened, which pandas and scikit-learn compute here from the files."""
    root, _ = scored
    monitoring = rows_of(root, "model_monitoring")
    backtests = monitoring[(monitoring["snapshot_date"] == D2) & (monitoring["kind"] == "backtest")]
    assert set(backtests["reference_date"]) == {D1}
    churn = backtests[backtests["model"] == "churn"].set_index("metric")["value"]
    scores = rows_of(root, "customer_scores")
    scores = scores[(scores["snapshot_date"] == D1) & scores["churn_probability"].notna()]
    transactions = clean_transactions(root)
    start = pd.Timestamp(D1, tz="UTC") + pd.Timedelta(days=1)
    window = transactions[(transactions["ts"] >= start) & (transactions["ts"] < start + pd.Timedelta(days=90))
                          & (transactions["transaction_type"] == "purchase")]
    churned = (~scores["customer_id"].isin(window["customer_id"])).astype(int).to_numpy()
    p = scores["churn_probability"].to_numpy()
    assert churn["roc_auc"] == pytest.approx(roc_auc_score(churned, p), abs=1e-12)
    assert churn["pr_auc"] == pytest.approx(average_precision_score(churned, p), abs=1e-12)
    assert churn["brier"] == pytest.approx(brier_score_loss(churned, p), abs=1e-12)
    assert churn["churn_rate"] == pytest.approx(churned.mean(), abs=1e-12)
    assert (backtests[backtests["model"] == "churn"]["customers"] == len(scores)).all()
    # CLV: what D1's buyers did from D1 to D2, per tier.
    clv = backtests[backtests["model"] == "clv"].set_index(["subject", "metric"])["value"]
    later = transactions[(transactions["ts"] >= start) & (transactions["ts"] < pd.Timestamp(D2, tz="UTC")
                                                          + pd.Timedelta(days=1))
                         & (transactions["transaction_type"] == "purchase")]
    features = rows_of(root, "customer_features")
    buyers = features[(features["snapshot_date"] == D1) & features["bgnbd_frequency"].notna()]["customer_id"]
    tiers = rows_of(root, "customer_scores")
    tiers = tiers[tiers["snapshot_date"] == D1].set_index("customer_id")["value_tier"]
    done = later[later["customer_id"].isin(buyers)].assign(day=lambda f: f["ts"].dt.date)
    done = done.assign(value_tier=done["customer_id"].map(tiers))
    for tier, group in [*done.groupby("value_tier"), ("all", done)]:
        assert clv[(tier, "realized_purchases")] == group[["customer_id", "day"]].drop_duplicates().shape[0]
        assert clv[(tier, "realized_spend")] == pytest.approx(group["amount"].sum(), rel=1e-12)
        assert clv[(tier, "purchases_error")] == pytest.approx(
            clv[(tier, "realized_purchases")] / clv[(tier, "expected_purchases")] - 1, rel=1e-12)
    decisions = monitoring[(monitoring["snapshot_date"] == D2) & (monitoring["kind"] == "decision")]
    assert sorted(decisions["model"]) == ["churn", "clv"] and (decisions["model_version"] == 1).all()


def test_injected_drift_is_detected_and_the_policy_retrains_at_the_next_run(spark, own, monkeypatch):
    """D2 again with every amount five times larger: the spend features drift past monitoring.max_psi and the
    counts do not; with retrain_on feature_drift the decision is to retrain, and the next run trains."""
    root = own
    for name, value in CHEAP_MODELS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SEGSCALE_INPUT__COLUMNS", json.dumps({"transactions": {"amount": "amount * 5"}}))
    monkeypatch.setenv("SEGSCALE_MONITORING__RETRAIN_ON", json.dumps(["feature_drift"]))
    summary = run(spark, root)
    assert summary["models"]["churn"]["status"] == "champion"  # the decision acts at the next run
    monitoring = rows_of(root, "model_monitoring")
    drift = monitoring[(monitoring["snapshot_date"] == D2) & (monitoring["kind"] == "drift")].set_index("subject")
    for spend in ("monetary", "spend_365d", "avg_order_value"):
        assert drift.loc[spend, "alert"] and drift.loc[spend, "value"] > 1, spend
    for count in ("purchases_365d", "frequency"):
        assert not drift.loc[count, "alert"], count
    assert summary["stages"]["monitor"]["retrain"]["churn"]
    assert "monetary psi" in summary["stages"]["monitor"]["reasons"]["churn"]
    out = root / "later.json"
    assert run_command(spark, GOLDEN_INPUT, root / "wh", "2024-10-15", "--summary-json", str(out)) == 0
    later = json.loads(out.read_text())
    assert later["models"]["churn"]["status"] in ("trained", "champion") and "train" in later["stages"]
    assert any("monitoring policy" in w for w in later["warnings"])


def test_executors_score_exactly_what_the_model_predicts(spark, scored):
    root, _ = scored
    features = table_of(spark, root, "customer_features").where(F.col("snapshot_date") == F.lit(D1))
    buyers = features.where(F.col("recency_days").isNotNull()).toPandas()  # small test snapshot
    with mlflow_store(root):
        model = load_classifier(NAME, 1)
    expected = pd.Series(predict_churn(model, buyers), index=buyers["customer_id"])
    published = (scores_of(spark, root).where(F.col("churn_probability").isNotNull())
                 .select("customer_id", "churn_probability").toPandas().set_index("customer_id")["churn_probability"])
    assert len(published) == len(expected)
    np.testing.assert_allclose(published.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=1e-12)


def test_score_rescores_with_a_chosen_version_and_keeps_every_other_column(spark, own, cheap_models, monkeypatch):
    root = own
    # Train version 2 on the same inputs with `train` (cheap profile), score with it, then with version 1 again.
    out = root / "train.json"
    assert main(["train", "--input", str(GOLDEN_INPUT), "--warehouse", str(root / "wh"), "--snapshot-date", SNAPSHOT,
                 "--summary-json", str(out)], spark=spark) == 0
    trained = json.loads(out.read_text())["stages"]
    assert trained["train"]["model_version"] == 2 and trained["clv fit"]["model_version"] == 2
    assert score(spark, root, "--model-version", "2") == 0
    assert scores_of(spark, root, SNAPSHOT).where(F.col("model_version") != 2).count() == 0
    before = scores_of(spark, root, SNAPSHOT).drop("run_id", *CHURN_COLUMNS)
    before = spark.createDataFrame(before.collect(), before.schema)
    plan_version = DeltaTable(str(root / "wh" / "retention_plan")).version()
    assert score(spark, root, "--model-version", "1") == 0
    assert DeltaTable(str(root / "wh" / "retention_plan")).version() == plan_version + 1  # re-planned
    after = scores_of(spark, root, SNAPSHOT)
    assert after.where(F.col("model_version") != 1).count() == 0
    assertDataFrameEqual(after.drop("run_id", *CHURN_COLUMNS), before)
    commits = [json.loads(c["userMetadata"]) for c in DeltaTable(str(root / "wh" / "customer_scores")).history()]
    segmented = next(c for c in commits if c["stage"] == "segment" and c["snapshot_date"] == SNAPSHOT)
    assert commits[0]["stage"] == commits[1]["stage"] == "score"
    # every score commit names the cut points, thresholds and CLV model of the rows it keeps, as a run's does
    assert commits[0]["extra"] == commits[1]["extra"] == segmented["extra"]
    assert set(segmented["extra"]) >= {"rfm_cut_points", "tier_thresholds", "clv_model"}
    assert commits[0]["model_version"] == "models:/segscale_churn/1"
    # with clv.enabled false, too, the plan follows the new churn scores (with the CLV the snapshot published)
    monkeypatch.setenv("SEGSCALE_CLV__ENABLED", "false")
    monkeypatch.setenv("SEGSCALE_TIERS__BASIS", "monetary")
    assert score(spark, root, "--model-version", "2") == 0
    plan = DeltaTable(str(root / "wh" / "retention_plan"))
    assert plan.version() == plan_version + 2 and json.loads(plan.history(1)[0]["userMetadata"])["stage"] == "plan"
    assert of_snapshot(table_of(spark, root, "retention_plan")).count() > 0


def test_run_with_a_champion_scores_without_training(spark, own):
    root = own
    summary = run(spark, root)
    assert "train" not in summary["stages"]
    champion = int(client_of(root).get_model_version_by_alias(NAME, "champion").version)
    assert summary["stages"]["segment"]["churn_model"]["version"] == champion


def register(uri: str, columns: list[str], champion: bool) -> None:
    """A model version in the store at `uri` whose signature needs `columns`."""
    example = pd.DataFrame({c: [0.0, 1.0, 2.0, 3.0] for c in columns})
    model = LogisticRegression().fit(example, [0, 1, 0, 1])
    with registry.scoped():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"  # not the working directory
        MlflowClient(uri, uri).create_experiment("hand-registered", artifact_location=artifacts.as_uri())
        mlflow.set_experiment("hand-registered")
        with mlflow.start_run():
            version = log_classifier(model, NAME, example)
    if champion:
        MlflowClient(uri, uri).set_registered_model_alias(NAME, "champion", str(version))


@pytest.mark.parametrize(("setup", "args", "message"), [
    (None, [], f"no model {NAME} is registered at sqlite:///.*: run segscale train first"),
    (["recency_days"], [], f"model {NAME} has no alias champion \\(registered versions: \\[1\\]\\)"),
    (["recency_days"], ["--model-version", "5"], f"model {NAME} has no version 5; registered versions: \\[1\\]"),
    (["recency_days", "loyalty_points"], ["--model-version", "1"], r"the features lack \['loyalty_points'\]"),
])
def test_score_errors_name_the_cause_and_write_nothing(spark, own, tmp_path, monkeypatch, capsys, setup, args,
                                                       message):
    root = own  # a failed command is recorded in the runs table
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    if setup is not None:
        register(uri, setup, champion=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    version = DeltaTable(str(root / "wh" / "customer_scores")).version()
    assert score(spark, root, *args) == 2
    assert re.search(message, capsys.readouterr().err)
    assert DeltaTable(str(root / "wh" / "customer_scores")).version() == version


def test_run_stops_before_publishing_when_mlflow_is_unreachable(spark, own, tmp_path, capsys, unreachable_mlflow):
    root = own  # a failed command is recorded in the runs table
    code = run_command(spark, GOLDEN_INPUT, tmp_path / "wh", SNAPSHOT)
    assert code == 3
    assert "is unreachable" in capsys.readouterr().err
    assert {p.name for p in (tmp_path / "wh").iterdir()} == {"runs"}  # only the record of the failed run
    assert score(spark, root) == 3


def test_without_models_the_scores_carry_null_model_columns(spark, tmp_path, monkeypatch):
    for key, value in (("CHURN__ENABLED", "false"), ("CLV__ENABLED", "false"), ("TIERS__BASIS", "monetary")):
        monkeypatch.setenv(f"SEGSCALE_{key}", value)
    code = run_command(spark, GOLDEN_INPUT, tmp_path / "wh", SNAPSHOT)
    assert code == 0
    scores = spark.read.parquet(*DeltaTable(str(tmp_path / "wh" / "customer_scores")).file_uris())
    model_columns = [*CHURN_COLUMNS, *CLV_COLUMNS, "clv_model_version"]
    assert scores.where(F.coalesce(*[F.col(c).cast("string") for c in model_columns]).isNotNull()).count() == 0
    assert not (tmp_path / "mlflow.db").exists()
    # An empty plan replaces whatever an earlier run planned for the snapshot, and says why it is empty.
    assert rows_of(tmp_path, "retention_plan").empty
    notes = set(rows_of(tmp_path, "retention_summary")["note"])
    assert notes == {"churn.enabled is false and clv.enabled is false"}
    assert main(["run", "--train", "--input", str(GOLDEN_INPUT), "--warehouse", str(tmp_path / "wh")], spark=spark) == 2


@pytest.mark.parametrize("disabled", ["churn", "clv"])
def test_a_rerun_with_a_model_disabled_leaves_no_earlier_plan_of_the_snapshot(spark, own, monkeypatch, disabled):
    """D2 was planned with both models; rerun with one of them disabled, its plan is empty and its summary says
    why, and D1's plan is untouched."""
    root = own
    before = {name: rows_of(root, name) for name in ("retention_plan", "retention_summary")}
    assert (before["retention_plan"]["snapshot_date"].astype(str) == SNAPSHOT).sum() > 0
    monkeypatch.setenv(f"SEGSCALE_{disabled.upper()}__ENABLED", "false")
    if disabled == "clv":
        monkeypatch.setenv("SEGSCALE_TIERS__BASIS", "monetary")
    assert run(spark, root)["stages"]["plan"]["retention"]["note"] == f"{disabled}.enabled is false"
    for name, earlier in before.items():
        now = rows_of(root, name)
        rerun = now["snapshot_date"].astype(str) == SNAPSHOT
        kept = (now[~rerun].sort_values(list(now.columns[:2])).reset_index(drop=True),
                earlier[earlier["snapshot_date"].astype(str) != SNAPSHOT].sort_values(list(now.columns[:2]))
                .reset_index(drop=True))
        pd.testing.assert_frame_equal(*kept)  # D1's rows, as the first run published them
        if name == "retention_plan":
            assert not rerun.any()
        else:
            summary = now[rerun].set_index("value_tier")
            assert sorted(summary.index) == ["high_value", "potential", "regular"]
            assert set(summary["note"]) == {f"{disabled}.enabled is false"}
            assert (summary[["candidates", "customers_targeted", "spend", "roi"]] == 0).all().all()


def test_history_names_the_model_that_scored_each_commit(scored, capsys):
    root, _ = scored
    assert main(["history", "customer_scores", "--warehouse", str(root / "wh")]) == 0
    header, *lines = [line for line in capsys.readouterr().out.splitlines() if line.strip(" ─")]  # not the rule
    assert header.endswith("models")
    # One commit per snapshot of the shared warehouse, each naming the churn and CLV versions that scored it.
    assert len(lines) == 2 and [D2.isoformat() in lines[0], D1.isoformat() in lines[1]] == [True, True]
    assert all(line.endswith(f"models:/{NAME}/1 models:/segscale_clv/1") for line in lines)


def test_a_model_the_data_cannot_support_is_skipped_and_everything_else_is_published(spark, tmp_path, capsys):
    """Two months of history cannot label churn 90 days ahead: the run publishes without a churn model and says
    why, everywhere a user looks; --strict turns the same run into exit 4."""
    early = ["run", "--input", str(GOLDEN_INPUT), "--warehouse", str(tmp_path / "wh"), "--snapshot-date",
             "2022-03-01", "--summary-json", str(tmp_path / "summary.json")]
    assert main(early, spark=spark) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    churn = summary["models"]["churn"]
    assert churn["status"] == "skipped" and churn["version"] is None
    assert "min_rows_per_class = 20" in churn["skipped"] and "the holdout cutoff 2021-12-01" in churn["skipped"]
    assert any(w.startswith("churn model skipped:") for w in summary["warnings"])
    assert "warnings (" in out and "training skipped:" in out
    for name in ("quarantine", "customer_features", "customer_scores", "retention_plan", "retention_summary"):
        assert (tmp_path / "wh" / name).exists(), name
    scores = table_of(spark, tmp_path, "customer_scores")
    assert scores.count() == table_of(spark, tmp_path, "customer_features").count() > 0
    assert scores.where(F.coalesce(*[F.col(c).cast("string") for c in CHURN_COLUMNS]).isNotNull()).count() == 0
    assert rows_of(tmp_path, "retention_plan").empty
    assert set(rows_of(tmp_path, "retention_summary")["note"]) == {
        f"no churn model ({churn['skipped']})"}
    runs = DeltaTable(str(tmp_path / "wh" / "runs")).to_pyarrow_table().to_pylist()
    assert runs[-1]["status"] == "succeeded" and runs[-1]["warnings"] == summary["warnings"]
    # --strict: the same tables are published, and the exit code tells the scheduler a model is missing.
    assert main([*early, "--strict"], spark=spark) == 4
    assert "was published without a model the data could not support (--strict): churn:" in capsys.readouterr().err
    assert DeltaTable(str(tmp_path / "wh" / "customer_scores")).version() == 1


def test_a_skipped_training_scores_with_the_champion_of_an_earlier_run(spark, own, tmp_path, monkeypatch):
    root = own
    for key, value in (("CLV__ENABLED", "false"), ("TIERS__BASIS", "monetary")):  # churn alone tries to train
        monkeypatch.setenv(f"SEGSCALE_{key}", value)
    champion = int(client_of(root).get_model_version_by_alias(NAME, "champion").version)
    code = run_command(spark, GOLDEN_INPUT, root / "wh", "2022-03-01", "--train", "--summary-json",
                       str(tmp_path / "s.json"))
    assert code == 0
    churn = json.loads((tmp_path / "s.json").read_text())["models"]["churn"]
    assert churn["status"] == "earlier champion" and churn["version"] == champion and churn["skipped"]
    scores = rows_of(root, "customer_scores")
    scored = scores[(scores["snapshot_date"].astype(str) == "2022-03-01") & scores["churn_probability"].notna()]
    assert not scored.empty
    assert set(zip(scored["model_name"], scored["model_version"], strict=True)) == {(NAME, champion)}
