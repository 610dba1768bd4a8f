"""The golden run: the whole job on a fixed input for two snapshots (the first trains both models), and every
published table compared row for row with the copy stored in tests/golden/expected, once with the tables written
by delta-rs and once by delta-spark.

The run is the session's shared warehouse (conftest.two_snapshots); its input (tests/golden/input) is 800
generated customers with 1 % bad rows, shipped as CSV files so that neither a change of the generator nor a
refactor can move it. Values that differ on every run by design (run ids, times,
paths, the package version, the configuration's hash) are left out; everything else must match, doubles to a
relative 1e-9. When a change of published values is intended, rewrite the copy with
`.venv/bin/python -m pytest tests/integration/test_golden.py --refresh-golden` and review the diff of
tests/golden/expected as part of the change."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from frames import GOLDEN

TABLES = ("quarantine", "customer_features", "customer_attributes", "customer_scores", "segment_migration",
          "retention_plan", "retention_summary", "retention_outcomes", "tier_economics", "at_risk_queue",
          "model_monitoring", "runs")
# Different on every run by design. Of `runs`, the stable part of each row is kept (below).
VOLATILE = ("run_id", "plan_run_id")


def published(warehouse: Path, table: str) -> pd.DataFrame:
    """The table as the stored copy holds it: stable columns, through CSV, rows in order of every column."""
    frame = DeltaTable(str(warehouse / table)).to_pandas()
    if table == "runs":
        models = frame["summary_json"].map(lambda text: json.dumps(json.loads(text)["models"], sort_keys=True))
        frame = frame[["command", "snapshot_date", "status", "warnings"]].assign(models=models)
    frame = frame.drop(columns=[c for c in VOLATILE if c in frame.columns])
    for column in frame.columns:  # arrays and maps as JSON text, as CSV stores them
        if frame[column].map(lambda v: isinstance(v, (list, dict)) or hasattr(v, "tolist")).any():
            frame[column] = frame[column].map(lambda v: None if v is None else json.dumps(
                v.tolist() if hasattr(v, "tolist") else v, sort_keys=True))
    return in_order(pd.read_csv(io.StringIO(frame.to_csv(index=False))))


def in_order(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns), na_position="last", kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("table", TABLES)
def test_every_published_table_matches_the_golden_copy(two_snapshots, table, request):
    _, warehouse, _, _ = two_snapshots
    actual = published(Path(warehouse.root.removeprefix("file://")), table)
    expected_file = GOLDEN / "expected" / f"{table}.csv"
    if request.config.getoption("--refresh-golden"):
        expected_file.parent.mkdir(exist_ok=True)
        actual.to_csv(expected_file, index=False)
    assert_same(actual, expected_file)


@pytest.mark.parametrize("table", TABLES)
def test_delta_spark_publishes_the_same_golden_tables(two_snapshots_on_delta_spark, table):
    """The same run with every table written by delta-spark: the same rows, read back by delta-rs."""
    _, warehouse, _, _ = two_snapshots_on_delta_spark
    root = Path(warehouse.root.removeprefix("file://"))
    assert {entry.get("engineInfo", "").split("/")[0] for entry in DeltaTable(str(root / table)).history()} == {
        "Apache-Spark"}
    assert_same(published(root, table), GOLDEN / "expected" / f"{table}.csv")


def assert_same(actual: pd.DataFrame, expected_file: Path) -> None:
    expected = in_order(pd.read_csv(expected_file))
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected)
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-9, atol=1e-12)
