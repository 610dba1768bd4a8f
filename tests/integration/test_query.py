"""`segscale sql`: read-only DuckDB over the published Delta tables, time travel, snapshot filter, formats."""

from __future__ import annotations

import datetime as dt
import json
import time

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from segscale import catalog
from segscale.cli import main
from segscale.config import DeltaSettings
from segscale.io.delta import CommitMetadata, DeltaStore

D1, D2 = dt.date(2024, 9, 30), dt.date(2024, 12, 31)
SCORES = "customer_id string, snapshot_date date, value_tier string, clv double"


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """customer_scores with two snapshots (the second written twice) and a small runs table."""
    root = tmp_path_factory.mktemp("query") / "wh"
    store = DeltaStore(spark, DeltaSettings(backend="delta-rs"))  # partial tables: below the catalog's checks
    rows = {D1: [("a", D1, "high_value", 100.0), ("b", D1, "regular", 5.0)],
            D2: [("a", D2, "high_value", 120.0), ("b", D2, "potential", 40.0), ("c", D2, "regular", None)]}
    for day, day_rows in rows.items():
        store.write(f"{root}/{catalog.CUSTOMER_SCORES}", spark.createDataFrame(day_rows, SCORES),
                    mode="replace_partition", partition_by=["snapshot_date"], replace={"snapshot_date": day},
                    meta=CommitMetadata("r", "segment", "h", day.isoformat()))
    time.sleep(1.1)  # version 1 and version 2 are a second apart, for --as-of
    between = dt.datetime.now(dt.UTC)
    time.sleep(1.1)
    rescored = [("a", D2, "high_value", 130.0), ("b", D2, "potential", 45.0), ("c", D2, "regular", 1.0)]
    store.write(f"{root}/{catalog.CUSTOMER_SCORES}", spark.createDataFrame(rescored, SCORES),
                mode="replace_partition", partition_by=["snapshot_date"], replace={"snapshot_date": D2},
                meta=CommitMetadata("r2", "score", "h", D2.isoformat()))
    store.write(f"{root}/{catalog.RUNS}",
                spark.createDataFrame([("r", "run"), ("r2", "score")], "run_id string, command string"),
                mode="create", meta=CommitMetadata("r2", "record run", "h"))
    return root, between


def sql(root, query: str, *extra: str) -> int:
    return main(["sql", query, "--warehouse", str(root), *extra])


def test_every_table_is_visible_under_its_name_and_joins_work(warehouse, capsys):
    root, _ = warehouse
    query = ("SELECT s.snapshot_date, count(*) AS customers, sum(s.clv) AS clv FROM customer_scores s "
             "JOIN runs r ON r.run_id = 'r2' GROUP BY ALL ORDER BY 1")
    assert sql(root, query, "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"snapshot_date": "2024-09-30", "customers": 2, "clv": 105.0},
        {"snapshot_date": "2024-12-31", "customers": 3, "clv": 176.0}]


def test_the_terminal_table_is_aligned(warehouse, capsys):
    root, _ = warehouse
    assert sql(root, "SELECT customer_id, clv FROM customer_scores ORDER BY clv DESC NULLS LAST", "--snapshot",
               D1.isoformat()) == 0
    assert capsys.readouterr().out.splitlines() == [
        "customer_id  clv", "-----------  ---", "a            100", "b              5", "(2 rows)"]


def test_a_snapshot_query_reads_only_that_snapshot(warehouse, tmp_path, capsys):
    """With the D1 partition's data files unreadable, a query on D2 still answers: D1 is never opened."""
    root, _ = warehouse
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(root, broken)
    for data_file in (broken / "customer_scores" / f"snapshot_date={D1}").glob("*.parquet"):
        data_file.write_bytes(b"not parquet")
    assert sql(broken, "SELECT count(*) AS n FROM customer_scores", "--snapshot", D2.isoformat(),
               "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines() == ['"n"', "3"]
    assert sql(broken, "SELECT count(*) AS n FROM customer_scores WHERE clv > 0") == 2  # reads D1: fails
    assert "query: SELECT count(*)" in capsys.readouterr().err


def test_time_travel_by_version_and_by_time(warehouse, capsys):
    root, between = warehouse
    query = "SELECT sum(clv) AS clv FROM customer_scores WHERE snapshot_date = DATE '2024-12-31'"
    for extra, expected in (((), 176.0), (("--version", "1"), 160.0), (("--as-of", between.isoformat()), 160.0)):
        assert sql(root, query, *extra, "--format", "json") == 0
        assert json.loads(capsys.readouterr().out) == [{"clv": expected}], extra
    assert sql(root, query, "--version", "9") == 2
    assert "cannot open version 9" in capsys.readouterr().err


@pytest.mark.parametrize("statement", [
    "CREATE TABLE x AS SELECT 1",
    "INSERT INTO customer_scores VALUES ('z', DATE '2024-12-31', 'regular', 1.0)",
    "COPY (SELECT 1) TO '{out}'",
    "ATTACH '{out}' AS other",
    "INSTALL httpfs",
    "SELECT 1; DROP TABLE customer_scores",
])
def test_statements_that_would_write_are_refused(warehouse, tmp_path, capsys, statement):
    root, _ = warehouse
    version = DeltaTable(str(root / "customer_scores")).version()
    out = tmp_path / "written"
    assert sql(root, statement.format(out=out)) == 2
    err = capsys.readouterr().err
    assert "read-only" in err or "one statement at a time" in err
    assert "Traceback" not in err
    assert not out.exists() and DeltaTable(str(root / "customer_scores")).version() == version


def test_files_outside_the_warehouse_cannot_be_read(warehouse, tmp_path, capsys):
    root, _ = warehouse
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    assert sql(root, f"SELECT * FROM read_csv('{secret}')") == 2
    assert "file system operations are disabled" in capsys.readouterr().err


def test_a_sql_error_prints_duckdb_message_and_the_query(warehouse, capsys):
    root, _ = warehouse
    assert sql(root, "SELECT nonsense FROM customer_scores") == 2
    err = capsys.readouterr().err
    assert 'Referenced column "nonsense" not found' in err and "query: SELECT nonsense FROM customer_scores" in err
    assert "Traceback" not in err
    assert sql(root, "SELECT * FROM retention_plan") == 2
    assert "published tables: customer_scores, runs" in capsys.readouterr().err


def test_parquet_output_needs_a_file(warehouse, tmp_path, capsys):
    root, _ = warehouse
    assert sql(root, "SELECT * FROM customer_scores", "--format", "parquet") == 2
    assert "--format parquet needs --out FILE" in capsys.readouterr().err
    out = tmp_path / "scores.parquet"
    assert sql(root, "SELECT * FROM customer_scores", "--format", "parquet", "--out", str(out)) == 0
    assert pq.read_table(out).num_rows == 5


def test_readers_see_the_tables_as_the_newest_completed_run_left_them_or_an_older_one(two_snapshots, capsys):
    settings, _, first, second = two_snapshots
    root = settings.paths.warehouse
    finished = {r["run_id"]: r["finished_at"] for r in DeltaTable(f"{root}/runs").to_pyarrow_table().to_pylist()}
    query = ("SELECT DISTINCT s.snapshot_date, p.run_id FROM customer_scores s JOIN retention_plan p "
             "USING (snapshot_date) ORDER BY 1")

    def seen(*extra: str) -> list[tuple]:
        assert sql(root, query, "--format", "json", *extra) == 0, capsys.readouterr().err
        return [(r["snapshot_date"], r["run_id"]) for r in json.loads(capsys.readouterr().out)]

    both = [("2024-06-30", first["run_id"]), ("2024-09-30", second["run_id"])]
    assert seen() == both
    assert seen("--run-id", first["run_id"]) == both[:1]
    assert seen("--as-of", finished[first["run_id"]].isoformat()) == both[:1]
    assert seen("--as-of", finished[second["run_id"]].isoformat()) == both
    assert sql(root, query, "--run-id", "nosuch") == 2
    assert f"no succeeded run 'nosuch' with recorded table versions in {root}" in capsys.readouterr().err
    assert sql(root, query, "--as-of", "2000-01-01") == 2
    assert "no run had completed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        sql(root, query, "--run-id", first["run_id"], "--as-of", "2000-01-01")
    assert usage.value.code == 2 and "--run-id: not allowed with argument --as-of" in capsys.readouterr().err
