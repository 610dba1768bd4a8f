"""Every command on a warehouse delta-spark wrote (conftest.two_snapshots_on_delta_spark, the golden run with
`delta.backend: delta-spark`): `score` and `backfill` write through delta-spark, `vacuum`, `sql`, `report` and
`history` read and clean what it wrote. `run` is the golden test's (test_golden.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable
from frames import BACKEND_VARIABLE, D2

from segscale.cli import main

SNAPSHOT = D2.isoformat()


@pytest.fixture
def own(two_snapshots_on_delta_spark, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the delta-spark warehouse with its MLflow store, its commands on delta-spark: (root, config)."""
    _, warehouse, *_ = two_snapshots_on_delta_spark
    source = Path(warehouse.root).parent
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    config = tmp_path / "golden.yaml"
    config.write_text(config.read_text().replace(str(source), str(tmp_path)))
    monkeypatch.setenv(BACKEND_VARIABLE, "delta-spark")
    return tmp_path, config


def scores(root: Path) -> list[tuple]:
    table = DeltaTable(str(root / "wh" / "customer_scores")).to_pyarrow_table()
    columns = [c for c in table.column_names if c != "run_id"]
    return sorted(zip(*(table[c].to_pylist() for c in columns), strict=True), key=str)


def test_score_backfill_and_vacuum_write_and_clean_through_delta_spark(spark, own, capsys, monkeypatch):
    root, config = own
    before = scores(root)
    assert main(["score", "--config", str(config), "--snapshot-date", SNAPSHOT], spark=spark) == 0
    newest = DeltaTable(str(root / "wh" / "customer_scores")).history(1)[0]
    assert newest["engineInfo"].startswith("Apache-Spark") and json.loads(newest["userMetadata"])["stage"] == "score"
    assert scores(root) == before  # the same champion scores the same customers

    # a score came after D2's run, so backfill runs D2 again, through delta-spark
    out = root / "backfill.json"
    assert main(["backfill", "--config", str(config), "--from", SNAPSHOT, "--to", SNAPSHOT, "--summary-json",
                 str(out)], spark=spark) == 0
    assert [(s["snapshot_date"], s["status"]) for s in json.loads(out.read_text())["snapshots"]] == [
        (SNAPSHOT, "published")]
    assert scores(root) == before

    # the score and the rerun replaced D2's two files twice: vacuum deletes those four (and Spark's checksum files,
    # which no Delta version lists), and the table reads the same. (Without maintenance.keep_runs 0, vacuum would
    # keep them for the runs that recorded them: test_maintain.py.)
    monkeypatch.setenv("SEGSCALE_MAINTENANCE__KEEP_RUNS", "0")
    table = DeltaTable(str(root / "wh" / "customer_scores"))
    current = {Path(uri).relative_to(root / "wh" / "customer_scores").as_posix() for uri in table.file_uris()}
    capsys.readouterr()
    assert main(["vacuum", "customer_scores", "--config", str(config), "--retention-hours", "0"], spark=spark) == 0
    deleted = {line.strip() for line in capsys.readouterr().out.splitlines()[1:]}
    assert {Path(d).suffix for d in deleted} == {".parquet", ".crc"}
    replaced = {d for d in deleted if d.endswith(".parquet")}
    assert len(replaced) == 4 and not replaced & current
    assert scores(root) == before


def test_sql_report_and_history_read_what_delta_spark_wrote(two_snapshots_on_delta_spark, tmp_path, capsys):
    settings, warehouse, _, second = two_snapshots_on_delta_spark
    root = warehouse.root
    assert main(["sql", "--warehouse", root, "--format", "json", "select value_tier, count(*) as n from "
                 "customer_scores where snapshot_date = DATE '2024-09-30' group by 1"]) == 0
    tiers = {row["value_tier"]: row["n"] for row in json.loads(capsys.readouterr().out)}
    assert set(tiers) == {"high_value", "potential", "regular"} and sum(tiers.values()) == (
        second["stages"]["segment"]["published"]["customer_scores"]["rows"])
    assert main(["report", "--warehouse", root, "--out", str(tmp_path / "report.html")]) == 0
    assert "2024-09-30" in (tmp_path / "report.html").read_text()
    capsys.readouterr()
    assert main(["history", "customer_scores", "--warehouse", root]) == 0
    assert second["run_id"] in capsys.readouterr().out
