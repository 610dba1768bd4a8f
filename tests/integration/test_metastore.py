"""The analyst side by name: `segscale catalog` registers every published table in a metastore, and
customer_attributes carries what the input says about each customer, so "high-value customers at risk by region"
is one query and the report breaks tiers and the plan down by region."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from deltalake import DeltaTable
from frames import BACKEND_VARIABLE, D2, GOLDEN_INPUT

from segscale.catalog import CUSTOMER_SCORES, TABLES
from segscale.cli import main
from segscale.errors import InputError
from segscale.io.delta import Warehouse


def test_register_adds_keeps_and_moves_the_published_tables_and_refuses_a_managed_one(spark, two_snapshots,
                                                                                      tmp_path):
    settings, warehouse, *_ = two_snapshots
    database = f"segscale_{tmp_path.name.replace('-', '_')}"
    published = [t.name for t in TABLES if warehouse.exists(t)]
    try:
        assert warehouse.register(database) == dict.fromkeys(published, "registered")
        assert spark.table(f"{database}.customer_scores").count() == \
            DeltaTable(warehouse.uri(CUSTOMER_SCORES)).to_pyarrow_table().num_rows
        assert warehouse.register(database) == dict.fromkeys(published, "kept")
        # the same tables published elsewhere: re-registered there, the first warehouse untouched
        shutil.copytree(warehouse.root, tmp_path / "wh")
        elsewhere = Warehouse(spark, str(tmp_path / "wh"), settings.delta)
        assert elsewhere.register(database) == dict.fromkeys(published, "moved")
        location = spark.sql(f"DESCRIBE TABLE EXTENDED {database}.runs").where("col_name = 'Location'").first()
        assert location.data_type.removeprefix("file:") == str(tmp_path / "wh" / "runs")
        assert all(warehouse.exists(t) for t in TABLES if t.name in published)
    finally:
        spark.sql(f"DROP DATABASE IF EXISTS {database} CASCADE")

    other = f"{database}_managed"
    spark.sql(f"CREATE DATABASE {other} LOCATION '{tmp_path / 'managed'}'")
    try:
        spark.sql(f"CREATE TABLE {other}.runs (x INT) USING parquet")
        with pytest.raises(InputError, match=f"{other}.runs is a managed table"):
            warehouse.register(other)
        assert spark.table(f"{other}.runs").columns == ["x"]  # not dropped
    finally:
        spark.sql(f"DROP DATABASE IF EXISTS {other} CASCADE")


def test_catalog_then_spark_sql_reads_the_tables_by_name_from_another_process(two_snapshots, tmp_path):
    """`segscale catalog` with its own embedded session and Derby metastore, then `spark-sql` (the command it
    prints) in a second process: the metastore persists, and the tables read by name."""
    _, warehouse, *_ = two_snapshots
    env = {k: v for k, v in os.environ.items() if k != BACKEND_VARIABLE}
    env["SEGSCALE_METASTORE__PATH"] = str(tmp_path / "metastore")  # not beside the shared warehouse
    bin_dir = Path(sys.executable).parent
    registered = subprocess.run([bin_dir / "segscale", "catalog", "--warehouse", warehouse.root], env=env,
                                cwd=tmp_path, capture_output=True, text=True)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.count(" registered") == sum(warehouse.exists(t) for t in TABLES)
    # nothing of the Hive metastore's chatter about each Delta table (no Hive SerDe) or its own settings
    assert not [name for name in ("HiveExternalCatalog", "HiveConf", "SessionState")
                if f"WARN {name}" in registered.stderr], registered.stderr[-3000:]
    command = shlex.split(registered.stdout.strip().splitlines()[-1])
    assert command[0] == "spark-sql" and command[-2] == "-e"
    query = "SELECT snapshot_date, count(*) FROM segscale.customer_scores GROUP BY 1 ORDER BY 1"
    read = subprocess.run([bin_dir / "spark-sql", *command[1:-1], query], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert read.returncode == 0, read.stderr[-2000:]
    counts = pd.DataFrame(DeltaTable(f"{warehouse.root}/customer_scores").to_pyarrow_table()
                          .group_by("snapshot_date").aggregate([("customer_id", "count")]).to_pylist())
    assert read.stdout.split() == [str(v) for _, r in counts.sort_values("snapshot_date").iterrows()
                                   for v in (r["snapshot_date"], r["customer_id_count"])]


def test_customer_attributes_are_the_input_s_and_make_region_one_query(two_snapshots, capsys):
    _, warehouse, *_ = two_snapshots
    attributes = DeltaTable(f"{warehouse.root}/customer_attributes").to_pandas()
    attributes = attributes[attributes["snapshot_date"].astype(str) == D2.isoformat()]
    customers = pd.read_csv(GOLDEN_INPUT / "customers" / "part-0.csv", dtype=str)
    features = DeltaTable(f"{warehouse.root}/customer_features").to_pandas()
    population = set(features.loc[features["snapshot_date"].astype(str) == D2.isoformat(), "customer_id"])
    assert set(attributes["customer_id"]) == population
    expected = customers.drop_duplicates("customer_id").set_index("customer_id").loc[sorted(population)]
    got = attributes.set_index("customer_id").loc[sorted(population)]
    assert list(got["region"].fillna("")) == list(expected["region"].fillna(""))
    assert list(got["channel"].fillna("")) == list(expected["channel"].fillna(""))
    assert list(got["signup_cohort"]) == [str(d)[:7] for d in got["signup_date"]]

    # high-value customers at risk by region: one query, as an independent count from the two tables
    assert main(["sql", "--warehouse", warehouse.root, "--format", "json", "--snapshot", D2.isoformat(), """
        SELECT a.region, count(*) AS n FROM customer_scores s JOIN customer_attributes a USING (customer_id)
        WHERE s.value_tier = 'high_value' AND s.lifecycle_stage = 'at_risk' GROUP BY ALL ORDER BY 1"""]) == 0
    by_query = pd.read_json(capsys.readouterr().out)
    scores = DeltaTable(f"{warehouse.root}/customer_scores").to_pandas()
    scores = scores[(scores["snapshot_date"].astype(str) == D2.isoformat()) & (scores["value_tier"] == "high_value")
                    & (scores["lifecycle_stage"] == "at_risk")]
    independent = scores.merge(attributes, on="customer_id").groupby("region").size()
    assert dict(zip(by_query["region"], by_query["n"], strict=True)) == independent.to_dict()


def test_the_report_breaks_tiers_and_the_plan_down_by_region(two_snapshots, tmp_path):
    _, warehouse, *_ = two_snapshots
    out = tmp_path / "report.html"
    assert main(["report", "--warehouse", warehouse.root, "--out", str(out)]) == 0
    page = out.read_text()
    assert 'data-chart="region-tiers"' in page and 'data-missing="regions"' not in page
    con = duckdb.connect()
    con.register("plan", DeltaTable(f"{warehouse.root}/retention_plan").to_pyarrow_table())
    con.register("attributes", DeltaTable(f"{warehouse.root}/customer_attributes").to_pyarrow_table())
    targeted = con.sql(f"""
        SELECT a.region, count(*) AS n FROM plan p JOIN attributes a USING (customer_id, snapshot_date)
        WHERE p.selected AND p.snapshot_date = DATE '{D2}' GROUP BY ALL""").fetchall()
    assert targeted
    section = page[page.index('data-chart="region-tiers"'):]
    for region, n in targeted:
        assert f"<td>{region}</td>" in section and f"<td>{n:,}</td>" in section
