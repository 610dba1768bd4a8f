"""`segscale maintain` on copies of the golden warehouses (conftest.two_snapshots, written by delta-rs, and
two_snapshots_on_delta_spark), each maintained through its own backend: the retention rules delete exactly the
snapshots they should, in one commit per table; compaction and Z-order leave fewer files and the same rows; a
checkpoint is written; vacuum keeps what the newest completed runs recorded and no more; a table holding commits of
a run that did not complete is left alone."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable
from frames import BACKEND_VARIABLE, D1, D2

from segscale.catalog import CUSTOMER_SCORES, RETENTION_PLAN, RUNS
from segscale.cli import main
from segscale.io.delta import CommitMetadata, Warehouse
from segscale.pipeline.commands import SNAPSHOT_TABLES, expired_snapshots


@pytest.mark.parametrize(("keep_snapshots", "keep_days", "expired"), [
    (None, None, []),  # no rule: every snapshot stays
    (2, None, ["2024-01-01", "2024-03-31"]),
    (None, 92, ["2024-01-01"]),  # 2024-03-31 is 92 days before 2024-07-01: kept
    (None, 0, ["2024-01-01", "2024-03-31", "2024-06-30"]),
    (1, 1, ["2024-01-01", "2024-03-31"]),  # a snapshot goes once no rule keeps it
    (10, None, []),
])
def test_expired_snapshots_are_those_no_rule_keeps(keep_snapshots, keep_days, expired):
    snapshots = ["2024-06-30", "2024-01-01", "2024-07-01", "2024-03-31", "2024-07-01"]
    assert expired_snapshots(snapshots, keep_snapshots, keep_days) == expired


def own_copy(golden, tmp_path: Path, monkeypatch, backend: str, **maintenance) -> tuple[Path, Path]:
    """A copy of a golden warehouse with its MLflow store, maintained through `backend`: (warehouse, config)."""
    _, warehouse, *_ = golden
    shutil.copytree(Path(warehouse.root).parent, tmp_path, dirs_exist_ok=True)
    config = tmp_path / "maintain.yaml"
    config.write_text(yaml.safe_dump({"paths": {"warehouse": str(tmp_path / "wh")},
                                      "delta": {"vacuum_retention_hours": 0},
                                      "maintenance": {"target_file_mb": 0.02, **maintenance}}))
    monkeypatch.setenv(BACKEND_VARIABLE, backend)
    return tmp_path / "wh", config


def rows(root: Path, name: str, version: int | None = None) -> list[tuple]:
    table = DeltaTable(str(root / name), version=version).to_pyarrow_table()
    return sorted(zip(*(table[c].to_pylist() for c in table.column_names), strict=True), key=str)


def snapshots(root: Path, name: str, version: int | None = None) -> list[str]:
    return sorted({p["snapshot_date"] for p in DeltaTable(str(root / name), version=version).partitions()})


def files_on_disk(root: Path, name: str, snapshot: str) -> list[Path]:
    return list((root / name / f"snapshot_date={snapshot}").glob("*.parquet"))


def maintained(spark, config: Path, out: Path) -> dict:
    assert main(["maintain", "--config", str(config), "--summary-json", str(out)], spark=spark) == 0
    return json.loads(out.read_text())


def check_maintenance(spark, root: Path, config: Path, capsys, backend: str) -> None:
    """keep_snapshots 1 on the golden warehouse (D1, D2), vacuum keeping what the newest completed run recorded."""
    kept = {t.name: [r for r in rows(root, t.name) if str(D2) in map(str, r)] for t in SNAPSHOT_TABLES}
    with_d1 = {t.name for t in SNAPSHOT_TABLES if D1.isoformat() in snapshots(root, t.name)}
    assert len(with_d1) == len(SNAPSHOT_TABLES) - 1  # segment_migration starts at D2
    files_before = {t.name: len(DeltaTable(str(root / t.name)).file_uris()) for t in SNAPSHOT_TABLES}
    last_run = DeltaTable(str(root / "runs")).to_pyarrow_table()
    second_run = last_run.filter(pc.equal(last_run["snapshot_date"], D2))["run_id"][0].as_py()

    summary = maintained(spark, config, root.parent / "first.json")

    # retention: D1 left every snapshot table in one commit that names it; D2 reads as before
    for table in SNAPSHOT_TABLES:
        assert snapshots(root, table.name) == [D2.isoformat()], table.name
        assert rows(root, table.name) == kept[table.name], table.name
        deletes = [h for h in DeltaTable(str(root / table.name)).history() if h["operation"] == "DELETE"]
        assert [json.loads(h["userMetadata"])["extra"]["deleted_snapshots"] for h in deletes] == (
            [[D1.isoformat()]] if table.name in with_d1 else [])
    assert summary["stages"]["retention"]["deleted"]["customer_scores"] == [D1.isoformat()]
    # D1's measured outcome stays: it is what the learned uplift remembers of that plan.
    assert snapshots(root, "retention_outcomes") == [D1.isoformat()]
    # compaction: fewer files, the same rows (above)
    assert len(DeltaTable(str(root / "quarantine")).file_uris()) < files_before["quarantine"]
    # customer_scores Z-ordered by customer_id into files of about 20 kB: each file holds its own range of customers
    # (delta-spark splits by size; delta-rs by batches of 4,096 rows, sorted within: one file of the 800 here)
    scores = DeltaTable(str(root / CUSTOMER_SCORES.name))
    assert summary["stages"]["optimize"]["tables"]["customer_scores"]["clustered"] == [D2.isoformat()]
    ranges = sorted(zip(*(pa.table(scores.get_add_actions(flatten=True))[f"{bound}.customer_id"].to_pylist()
                          for bound in ("min", "max")), strict=True))
    assert all(high < low for (_, high), (low, _) in itertools.pairwise(ranges)), ranges
    if backend == "delta-spark":
        assert len(ranges) > 1
    else:
        ids = pq.read_table(scores.file_uris()[0], columns=["customer_id"])["customer_id"].to_pylist()
        assert len(ranges) == 1 and ids == sorted(ids)
    # a checkpoint of every table at its version then
    for name, version in summary["stages"]["checkpoint"]["versions"].items():
        assert json.loads((root / name / "_delta_log" / "_last_checkpoint").read_text())["version"] == version
    # the maintain run is recorded with the versions readers now see: without D1. The run before it keeps its view
    # (keep_runs 1): its files stay, and D1 still reads through it.
    runs = DeltaTable(str(root / RUNS.name)).to_pyarrow_table().to_pylist()
    record = max(runs, key=lambda r: r["finished_at"])
    assert (record["command"], record["snapshot_date"], record["status"]) == ("maintain", None, "succeeded")
    optimized = max(h["version"] for h in scores.history() if h["operation"] == "OPTIMIZE")
    assert json.loads(record["table_versions"])["customer_scores"] == optimized
    capsys.readouterr()
    assert main(["sql", "--warehouse", str(root), "--format", "json",
                 "select snapshot_date, count(*) as n from customer_scores group by 1"]) == 0
    assert [r["snapshot_date"] for r in json.loads(capsys.readouterr().out)] == [D2.isoformat()]
    assert main(["sql", "--warehouse", str(root), "--format", "json", "--run-id", second_run,
                 "select snapshot_date, count(*) as n from customer_scores group by 1 order by 1"]) == 0
    assert [r["snapshot_date"] for r in json.loads(capsys.readouterr().out)] == [D1.isoformat(), D2.isoformat()]
    assert files_on_disk(root, "customer_scores", D1.isoformat())

    # a second maintenance: nothing new to cluster; the newest completed run is now the first maintenance, so D1's
    # files (and the replaced ones) are vacuumed
    again = maintained(spark, config, root.parent / "second.json")
    assert again["stages"]["optimize"]["tables"]["customer_scores"]["clustered"] == []
    assert again["stages"]["retention"]["deleted"] == {}
    assert not files_on_disk(root, "customer_scores", D1.isoformat())
    assert again["stages"]["vacuum"]["deleted_files"]["customer_scores"] >= files_before["customer_scores"]
    for table in SNAPSHOT_TABLES:
        assert rows(root, table.name) == kept[table.name], table.name


def test_maintain_through_delta_rs(spark, two_snapshots, tmp_path, monkeypatch, capsys):
    root, config = own_copy(two_snapshots, tmp_path, monkeypatch, "delta-rs", keep_snapshots=1, keep_runs=1)
    check_maintenance(spark, root, config, capsys, "delta-rs")
    assert {h["engineInfo"].split(":")[0] for h in DeltaTable(str(root / "customer_scores")).history()
            if h["operation"] in ("DELETE", "OPTIMIZE")} == {"delta-rs"}


def test_maintain_through_delta_spark(spark, two_snapshots_on_delta_spark, tmp_path, monkeypatch, capsys):
    root, config = own_copy(two_snapshots_on_delta_spark, tmp_path, monkeypatch, "delta-spark", keep_snapshots=1,
                            keep_runs=1)
    check_maintenance(spark, root, config, capsys, "delta-spark")
    assert {h["engineInfo"].split("/")[0] for h in DeltaTable(str(root / "customer_scores")).history()
            if h["operation"] in ("DELETE", "OPTIMIZE")} == {"Apache-Spark"}


def test_a_table_with_commits_of_an_incomplete_run_is_neither_pruned_nor_rewritten(spark, two_snapshots, tmp_path,
                                                                                  monkeypatch):
    settings, _, *_ = two_snapshots
    root, config = own_copy(two_snapshots, tmp_path, monkeypatch, "delta-rs", keep_snapshots=1)
    # a run that wrote the plan of D2 again and died before recording itself
    warehouse = Warehouse(spark, str(root), settings.delta)
    plan = warehouse.read(RETENTION_PLAN).where(f"snapshot_date = '{D2}'")
    hidden = warehouse.write(RETENTION_PLAN, plan, partition={"snapshot_date": D2},
                             meta=CommitMetadata(run_id="killed-run", stage="plan", config_hash="x")).version

    summary = maintained(spark, config, tmp_path / "summary.json")

    assert "retention_plan" in summary["stages"]["retention"]["held"]
    assert any("retention_plan" in w and "killed-run" in w and str(hidden) in w for w in summary["warnings"])
    assert snapshots(root, "retention_plan") == [D1.isoformat(), D2.isoformat()]
    after = {h["operation"] for h in DeltaTable(str(root / "retention_plan")).history() if h["version"] > hidden}
    assert after <= {"VACUUM START", "VACUUM END"}
    assert "retention_plan" not in summary["stages"]["optimize"]["tables"]
    # what readers see of it stays the last completed run's version; the other tables were pruned
    versions = json.loads(max(DeltaTable(str(root / "runs")).to_pyarrow_table().to_pylist(),
                              key=lambda r: r["finished_at"])["table_versions"])
    assert versions["retention_plan"] < hidden
    assert snapshots(root, "customer_scores") == [D2.isoformat()]
