"""Real inputs of any shape and size, through `segscale run` (the CLI's own entry point, in this process): every
case publishes a row for every customer of the snapshot and exits 0, with a warning for whatever it had to skip;
only an input that lacks a required column exits 2. Never exit 1, never a traceback, never a half-published run.

The inputs are drawn by `inputs.draw` (numpy, not segscale's generator), shipped with a library (CDNOW), or built
by hand; `check_published` asserts every table's documented invariants."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from frames import mlflow_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inputs import REQUIRED, Base, draw, write

from segscale.analyst.report import build_report
from segscale.cli.app import format_summary, main
from segscale.models.churn import RISK_BANDS
from segscale.models.churn_classifier import MODEL_FEATURES
from segscale.transforms.segments import LIFECYCLE_STAGES, VALUE_TIERS

# The cases train churn wherever the data allows, but none is about the model's quality (test_churn is): the cheap
# model profile (tests/frames.py) for every run.
pytestmark = pytest.mark.usefixtures("cheap_models")

SNAPSHOT = "2024-12-31"
SNAPSHOT_TABLES = ("quarantine", "customer_features", "customer_scores", "retention_plan", "retention_summary")


def required_only(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The contract's required columns of the required tables: no attributes, no interactions."""
    return {name: frame[REQUIRED[name]] for name, frame in tables.items() if name in REQUIRED}


def run(spark, root: Path, tables: dict[str, pd.DataFrame] | None, capsys, *, fmt: str = "csv",
        snapshot: str = SNAPSHOT, config: str | None = None, expect: int = 0) -> dict:
    """`segscale run` on `tables` written under root/in; the exit code must be `expect`, with no traceback. The
    summary JSON, with the error output under "stderr"."""
    if tables is not None:
        write(tables, root / "in", fmt)
    argv = ["run", "--input", str(root / "in"), "--warehouse", str(root / "wh"), "--snapshot-date", snapshot,
            "--summary-json", str(root / "summary.json")]
    if config:
        (root / "conf.yaml").write_text(config)
        argv += ["--config", str(root / "conf.yaml")]
    code = main(argv, spark=spark)
    out, err = capsys.readouterr()
    assert code == expect, err
    assert "Traceback" not in err
    summary = json.loads((root / "summary.json").read_text())
    if code == 0:
        assert format_summary(summary) in out
    return {**summary, "stderr": err}


def read(root: Path, name: str) -> pd.DataFrame:
    return DeltaTable(str(root / "wh" / name)).to_pandas()


def check_published(root: Path, summary: dict, customers: int, report: bool = False) -> pd.DataFrame:
    """Every table of the snapshot published whole, with its documented invariants, and with `report` the HTML
    report built, every tier in its table; customer_scores back."""
    assert summary["status"] == "succeeded"
    for name in SNAPSHOT_TABLES:
        assert DeltaTable.is_deltatable(str(root / "wh" / name)), name
    features, scores = read(root, "customer_features"), read(root, "customer_scores")
    for frame in (features, scores):
        assert len(frame) == customers and frame["customer_id"].is_unique
    assert set(scores["value_tier"]) <= set(VALUE_TIERS) and scores["value_tier"].notna().all()
    assert set(scores["lifecycle_stage"]) <= set(LIFECYCLE_STAGES) and scores["lifecycle_stage"].notna().all()
    for column in ("churn_probability", "p_alive"):
        known = scores[column].dropna()
        assert ((known >= 0) & (known <= 1)).all(), column
    assert (scores["clv"].dropna() >= 0).all() and (scores["expected_purchases"].dropna() >= 0).all()
    assert set(scores["churn_risk_band"].dropna()) <= set(RISK_BANDS)
    prospects = scores[scores["lifecycle_stage"] == "prospect"]
    assert prospects["churn_probability"].isna().all() and (prospects["value_tier"] == "regular").all()
    plan, plan_summary = read(root, "retention_plan"), read(root, "retention_summary")
    assert plan["customer_id"].is_unique and set(plan["customer_id"]) <= set(scores["customer_id"])
    assert plan.loc[plan["selected"], "cost"].sum() <= plan_summary["budget"].iloc[0] + 1e-6
    assert sorted(plan_summary["value_tier"]) == sorted(VALUE_TIERS)
    if plan.empty:
        assert plan_summary["note"].notna().all()
    runs = read(root, "runs")
    assert runs["status"].iloc[-1] == "succeeded" and list(runs["warnings"].iloc[-1]) == summary["warnings"]
    if report:
        html = build_report(str(root / "wh"), dt.date.fromisoformat(summary["snapshot_date"]))
        assert 'data-chart="tier-pyramid"' in html and 'data-chart="lifecycle-funnel"' in html
        assert all(f"<td>{tier} " in html for tier in VALUE_TIERS)  # empty tiers are shown, with no customers
        assert all(warning.split(":")[0] in html for warning in summary["warnings"])
    return scores


# ---- the matrix ---------------------------------------------------------------------------------------------------
def test_required_columns_only_without_interactions_or_attributes(spark, tmp_path, capsys):
    tables = required_only(draw(Base(customers=400, seed=3)))
    summary = run(spark, tmp_path, tables, capsys)
    scores = check_published(tmp_path, summary, customers=400, report=True)
    features = read(tmp_path, "customer_features")
    assert features["interactions_365d"].isna().all()  # no interactions table: unknown, not 0
    # Trained on what the data has: no interaction feature, and the summary and MLflow say which.
    assert summary["models"]["churn"]["status"] == "trained"
    churn = summary["stages"]["train"]
    assert "interactions_365d" in churn["features_dropped"] and "recency_days" in churn["features"]
    assert set(churn["features"]) | set(churn["features_dropped"]) == set(MODEL_FEATURES)
    run_params = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        churn["mlflow_run_id"]).data.params
    assert run_params["features"] == ",".join(churn["features"])
    assert scores["churn_probability"].notna().sum() > 0


def test_a_transaction_log_alone_derives_its_customers(spark, tmp_path, capsys):
    tables = draw(Base(customers=120, seed=4))
    transactions = tables["transactions"]
    summary = run(spark, tmp_path, {"transactions": transactions}, capsys, fmt="parquet")
    buyers = transactions["customer_id"].nunique()
    check_published(tmp_path, summary, customers=buyers)
    assert list(summary["stages"]["validate"]["tables"]) == ["transactions"]
    features = read(tmp_path, "customer_features").set_index("customer_id")
    first = pd.to_datetime(transactions.groupby("customer_id")["ts"].min()).dt.tz_convert(None).dt.normalize()
    tenure = (pd.Timestamp(SNAPSHOT) - first).dt.days
    assert (features.loc[tenure.index, "tenure_days"] == tenure).all()  # signup = first transaction day


@pytest.mark.parametrize(("customers", "fmt"), [(1, "csv"), (10, "parquet"), (100, "delta")])
def test_tiny_bases_with_every_column_and_interactions(spark, tmp_path, capsys, customers, fmt):
    summary = run(spark, tmp_path, draw(Base(customers=customers, buyers_share=1.0, seed=6)), capsys, fmt=fmt)
    check_published(tmp_path, summary, customers=customers, report=True)
    if customers <= 10:  # too few buyers on either side of the split
        assert summary["models"]["churn"]["status"] == "skipped"
    if summary["models"]["clv"]["status"] == "skipped":  # said, and the tiers fall back to spend so far
        assert summary["stages"]["segment"]["tier_thresholds"]["basis"] == "monetary"
        assert any("value tiers follow monetary" in w for w in summary["warnings"])
    assert customers > 1 or summary["models"]["clv"]["status"] == "skipped"


def test_a_thousand_customers_in_one_category_and_one_channel_train_both_models(spark, tmp_path, capsys):
    tables = draw(Base(customers=1000, seed=14))
    tables["transactions"] = tables["transactions"].assign(category="all", channel="store")
    summary = run(spark, tmp_path, tables, capsys)
    scores = check_published(tmp_path, summary, customers=1000)
    assert {o["status"] for o in summary["models"].values()} == {"trained"}
    assert scores["clv"].notna().sum() > 500 and not read(tmp_path, "retention_plan").empty
    # Features the same for every training row are left out of the model, and said.
    dropped = summary["stages"]["train"]["features_dropped"]
    assert dropped["distinct_categories"] == "the same value (1) in every training row"
    assert dropped["online_share"] == "the same value (0) in every training row"


def test_every_buyer_a_one_time_buyer(spark, tmp_path, capsys):
    summary = run(spark, tmp_path, draw(Base(customers=200, max_purchases=1, return_share=0.0, seed=8)), capsys)
    scores = check_published(tmp_path, summary, customers=200, report=True)
    clv = summary["models"]["clv"]
    assert clv["status"] == "skipped" and "has 0 of" in clv["skipped"]
    assert scores["clv"].isna().all() and set(scores["lifecycle_stage"]) <= {"prospect", "new", "at_risk", "churned"}
    assert "no clv model" in read(tmp_path, "retention_summary")["note"].iloc[0]


def test_only_prospects(spark, tmp_path, capsys):
    tables = required_only(draw(Base(customers=50, seed=9)))
    tables["transactions"] = tables["transactions"].iloc[:0]
    summary = run(spark, tmp_path, tables, capsys)
    scores = check_published(tmp_path, summary, customers=50, report=True)
    assert (scores["lifecycle_stage"] == "prospect").all() and (scores["value_tier"] == "regular").all()


def test_only_returns(spark, tmp_path, capsys):
    tables = draw(Base(customers=60, return_share=1.0, seed=10))
    summary = run(spark, tmp_path, tables, capsys)
    scores = check_published(tmp_path, summary, customers=60)
    assert (scores["lifecycle_stage"] == "prospect").all()  # a return is not a purchase


def test_one_day_of_history(spark, tmp_path, capsys):
    customers = [f"c{i}" for i in range(80)]
    tables = {
        "customers": pd.DataFrame({"customer_id": customers, "signup_date": SNAPSHOT}),
        "transactions": pd.DataFrame([(f"t{k}", customers[k % 60], f"{SNAPSHOT}T{k % 24:02d}:00:00Z",
                                       10.0 + k, "purchase") for k in range(100)], columns=REQUIRED["transactions"]),
    }
    summary = run(spark, tmp_path, tables, capsys)
    scores = check_published(tmp_path, summary, customers=80)
    assert set(scores["lifecycle_stage"]) <= {"prospect", "new", "repeat", "loyal"}
    assert {o["status"] for o in summary["models"].values()} == {"skipped"}


def test_history_shorter_than_the_churn_horizon(spark, tmp_path, capsys):
    tables = draw(Base(customers=300, start=dt.date(2024, 11, 1), mean_days_between=10, seed=12))
    summary = run(spark, tmp_path, tables, capsys)
    check_published(tmp_path, summary, customers=300)
    churn = summary["models"]["churn"]
    assert churn["status"] == "skipped" and "the holdout cutoff 2024-10-02: 0 churned and 0 retained" in \
        churn["skipped"]


@pytest.mark.parametrize(("snapshot", "customers"), [("2022-06-30", 0), ("2026-06-30", 200)])
def test_snapshot_before_the_first_and_after_the_last_transaction(spark, tmp_path, capsys, snapshot, customers):
    summary = run(spark, tmp_path, draw(Base(customers=200, seed=13)), capsys, snapshot=snapshot)
    check_published(tmp_path, summary, customers=customers)  # before: nobody has signed up yet


def test_the_cdnow_sample_with_the_default_config(spark, tmp_path, capsys, cdnow_inputs):
    summary = run(spark, tmp_path, None, capsys, snapshot="1997-09-30", config=None)
    check_published(tmp_path, summary, customers=2357)
    fitted = summary["stages"]["clv fit"]
    assert fitted["resolution"] == {"bin_days": 1, "spend_bin_relative": 0.0}  # exact while cheap
    # Fader, Hardie & Lee (2005), Fader & Hardie (2013)
    assert {k: round(v, 3) for k, v in fitted["params"]["bgnbd"].items()} == {"r": 0.243, "alpha": 4.414,
                                                                              "a": 0.793, "b": 2.426}
    assert {k: round(v, 2) for k, v in fitted["params"]["gamma_gamma"].items()} == {"p": 6.25, "q": 3.74,
                                                                                    "gamma": 15.44}
    # Customer 1 (x = 2, t_x = 30.43, T = 38.86 weeks): 1.226 expected purchases over the next 39 weeks.
    features = read(tmp_path, "customer_features").set_index("customer_id")
    with mlflow_store(tmp_path):
        model = mlflow.pyfunc.load_model(f"models:/segscale_clv/{fitted['model_version']}")
    one = model.predict(features.loc[["1"], ["bgnbd_frequency", "bgnbd_recency", "bgnbd_T", "bgnbd_monetary"]],
                        params={"horizon_days": 273})
    assert round(float(one["expected_purchases"].iloc[0]), 3) == 1.226


@pytest.fixture
def cdnow_inputs(tmp_path):
    from test_clv import cdnow_file

    raw = pd.read_csv(cdnow_file("CDNOW_sample.txt"), sep=r"\s+", header=None,
                      names=["master_id", "sample", "date", "quantity", "amount"], dtype={"date": str})
    day = pd.to_datetime(raw["date"], format="%Y%m%d")
    transactions = pd.DataFrame({
        "transaction_id": [f"t{i}" for i in range(len(raw))], "customer_id": raw["sample"].astype(str),
        "ts": day.dt.strftime("%Y-%m-%dT12:00:00Z"), "amount": raw["amount"], "transaction_type": "purchase"})
    first = transactions.groupby("customer_id")["ts"].min().str[:10]
    write({"customers": pd.DataFrame({"customer_id": first.index, "signup_date": first.to_numpy()}),
           "transactions": transactions}, tmp_path / "in")


# ---- an invoice-line export with its own column names ---------------------------------------------------------
INVOICE_CONFIG = """
input:
  columns:
    transactions:
      transaction_id: "concat_ws('/', InvoiceNo, StockCode)"
      customer_id: "cast(cast(CustomerID AS bigint) AS string)"
      ts: "try_to_timestamp(InvoiceDate, 'M/d/yyyy H:mm')"
      amount: "abs(Quantity * UnitPrice)"
      quantity: "abs(Quantity)"
      category: StockCode
      transaction_type: "CASE WHEN Quantity < 0 THEN 'return' ELSE 'purchase' END"
"""


def invoice_lines(base: Base) -> pd.DataFrame:
    """The lines of an online shop's invoices: returns are negative quantities on invoices starting with C."""
    transactions = draw(base)["transactions"]
    rng = np.random.default_rng(base.seed)
    is_return = transactions["transaction_type"] == "return"
    quantity = transactions["quantity"].where(~is_return, -transactions["quantity"])
    return pd.DataFrame({
        "InvoiceNo": np.where(is_return, "C", "") + transactions["transaction_id"].str[1:],
        "StockCode": rng.choice(["85123A", "71053", "84406B"], size=len(transactions)),
        "Description": "item", "Quantity": quantity,
        "InvoiceDate": pd.to_datetime(transactions["ts"]).dt.strftime("%m/%d/%Y %H:%M"),
        "UnitPrice": (transactions["amount"] / transactions["quantity"]).round(2),
        "CustomerID": transactions["customer_id"].str[1:].astype(int).astype(float), "Country": "United Kingdom"})


def test_a_mapped_invoice_line_export(spark, tmp_path, capsys):
    lines = invoice_lines(Base(customers=300, seed=15))
    summary = run(spark, tmp_path, {"transactions": lines}, capsys, config=INVOICE_CONFIG)
    check_published(tmp_path, summary, customers=lines["CustomerID"].nunique())
    assert sum(summary["stages"]["validate"]["tables"]["transactions"]["bad"].values()) == 0
    features = read(tmp_path, "customer_features").set_index("customer_id")
    returns = lines[lines["Quantity"] < 0].groupby("CustomerID").size()
    returned = features.loc[[str(int(c)) for c in returns.index], "return_rate"]
    assert len(returns) and (returned.isna() | (returned > 0)).all()  # null: returns only, no purchase


def test_a_mapping_to_a_column_the_input_lacks_names_table_column_and_file(spark, tmp_path, capsys):
    lines = invoice_lines(Base(customers=20, seed=16)).drop(columns="UnitPrice")
    summary = run(spark, tmp_path, {"transactions": lines}, capsys, config=INVOICE_CONFIG, expect=2)
    assert summary["status"] == "failed"
    assert "input.columns.transactions.amount = 'abs(Quantity * UnitPrice)'" in summary["stderr"]
    assert "UnitPrice" in summary["stderr"] and str(tmp_path / "in" / "transactions") in summary["stderr"]
    assert {p.name for p in (tmp_path / "wh").iterdir()} == {"runs"}  # only the record of the failed run


# ---- small random inputs within the contract ------------------------------------------------------------------
@st.composite
def small_inputs(draw_from) -> dict[str, pd.DataFrame]:
    """Up to 12 customers and 40 transactions on days around the snapshot, any mix of purchases and returns."""
    customers = draw_from(st.integers(1, 12))
    days = st.integers(-500, 0)
    signups = [draw_from(days) for _ in range(customers)]
    rows = draw_from(st.lists(st.tuples(st.integers(0, customers - 1), days,
                                        st.floats(0, 500, allow_nan=False).map(lambda a: round(a, 2)),
                                        st.sampled_from(["purchase", "purchase", "return"])), max_size=40))
    end = dt.date.fromisoformat(SNAPSHOT)
    return {
        "customers": pd.DataFrame({"customer_id": [f"c{i}" for i in range(customers)],
                                   "signup_date": [(end + dt.timedelta(days=d)).isoformat() for d in signups]}),
        "transactions": pd.DataFrame(
            [(f"t{k}", f"c{c}", f"{end + dt.timedelta(days=d)}T10:00:00Z", amount, kind)
             for k, (c, d, amount, kind) in enumerate(rows)],
            columns=REQUIRED["transactions"]),
    }


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tables=small_inputs())
def test_any_small_input_within_the_contract_publishes_every_customer(spark, tmp_path_factory, capsys, tables):
    root = tmp_path_factory.mktemp("random")
    summary = run(spark, root, tables, capsys)
    signed_up = (pd.to_datetime(tables["customers"]["signup_date"]) <= pd.Timestamp(SNAPSHOT)).sum()
    check_published(root, summary, customers=int(signed_up))
