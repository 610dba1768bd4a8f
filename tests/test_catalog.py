"""The table catalog: the published tables are what it declares, the writers refuse frames that differ, and the
data dictionary is generated from it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import types as T

from segscale import catalog
from segscale.analyst.sql import connect, published_tables
from segscale.errors import InputError, SchemaMismatchError
from segscale.io.delta import CommitMetadata, Warehouse

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_checked_in_dictionary_is_the_one_the_catalog_generates():
    assert (DOCS / catalog.DICTIONARY_FILE).read_text(encoding="utf-8") == catalog.dictionary(), \
        "docs/data-dictionary.md is stale: run `make docs`"


def test_update_rewrites_the_dictionary_in_a_docs_directory(tmp_path, capsys):
    assert catalog.main(["--update", str(tmp_path)]) == 0
    assert (tmp_path / catalog.DICTIONARY_FILE).read_text(encoding="utf-8") == catalog.dictionary()
    with pytest.raises(SystemExit) as exit_:
        catalog.main(["--update", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and "no such directory" in capsys.readouterr().err


def test_every_column_is_in_the_dictionary_once_with_its_type():
    text = catalog.dictionary()
    for table in catalog.TABLES:
        section = text.split(f"## `{table}`\n", 1)[1].split("\n## ", 1)[0]
        for column in table.columns:
            rows = [line for line in section.splitlines()
                    if line.startswith("| `") and f"`{column.name}`" in line.split(" | ")[0]]
            assert len(rows) == 1, f"{table}.{column.name}"
            assert column.type in rows[0].split(" | ")[1], f"{table}.{column.name}"


def test_a_frame_that_differs_from_its_declaration_is_refused_naming_the_table_and_columns(spark, tmp_path,
                                                                                       delta_settings):
    warehouse = Warehouse(spark, str(tmp_path / "wh"), delta_settings)
    day = dt.date(2024, 1, 31)
    good = spark.createDataFrame([("monetary", 1, 0.5, 1.0, 2.0, day)],
                                 "value_tier string, scored_customers long, share_of_budget double, spend double, "
                                 "budget double, snapshot_date date")
    frame = good.selectExpr("*", "CAST(1 AS INT) AS candidates", "'x' AS surplus")
    meta = CommitMetadata("r", "plan", "h", day.isoformat())
    with pytest.raises(SchemaMismatchError) as error:
        warehouse.write(catalog.RETENTION_SUMMARY, frame, meta=meta, partition={"snapshot_date": day})
    message = str(error.value)
    assert "retention_summary" in message and "missing treatment" in message
    assert "undeclared surplus (string)" in message and "candidates is int, declared bigint" in message
    assert not warehouse.exists(catalog.RETENTION_SUMMARY)


def test_a_declared_frame_is_written_in_declared_column_order_and_mode(spark, tmp_path, delta_settings):
    warehouse = Warehouse(spark, str(tmp_path / "wh"), delta_settings)
    day = dt.date(2024, 1, 31)
    row = {c.name: None for c in catalog.SEGMENT_MIGRATION.columns} | {"snapshot_date": day, "customers": 3,
                                                                        "run_id": "r"}
    frame = spark.createDataFrame([row], catalog.SEGMENT_MIGRATION.spark_schema)
    shuffled = frame.select(*reversed(frame.columns))
    warehouse.write(catalog.SEGMENT_MIGRATION, shuffled, meta=CommitMetadata("r", "migration", "h"),
                    partition={"snapshot_date": day})
    table = DeltaTable(warehouse.uri(catalog.SEGMENT_MIGRATION))
    assert [f.name for f in table.schema().fields] == catalog.SEGMENT_MIGRATION.column_names
    assert table.metadata().partition_columns == ["snapshot_date"]
    with pytest.raises(ValueError, match="replace_partition"):
        warehouse.write(catalog.SEGMENT_MIGRATION, frame, meta=CommitMetadata("r", "migration", "h"))


def test_an_unknown_table_name_is_an_input_error_listing_the_catalog():
    with pytest.raises(InputError, match="'customer_score' is not a segscale table; the catalog has quarantine"):
        catalog.table("customer_score")
    assert catalog.table("runs") is catalog.RUNS


def test_published_tables_have_the_declared_schema_partitioning_nulls_and_keys(two_snapshots):
    settings, _, _, _ = two_snapshots
    published = published_tables(settings.paths.warehouse)
    assert set(published) == set(catalog.BY_NAME)
    con = connect(published)
    try:
        for name, uri in published.items():
            table, delta = catalog.table(name), DeltaTable(uri)
            stored = T.StructType.fromJson(json.loads(delta.schema().to_json()))
            assert stored.fieldNames() == table.column_names, name
            assert table.mismatches(stored) == [], name
            assert delta.metadata().partition_columns == list(table.partition_by), name
            never_null = [c.name for c in table.columns if not c.nullable]
            if never_null:
                nulls = con.execute(f"SELECT {', '.join(f'count(*) - count({c})' for c in never_null)} "
                                    f"FROM {name}").fetchone()  # small: one row of counts
                assert dict(zip(never_null, nulls, strict=True)) == dict.fromkeys(never_null, 0), name
            if table.key:
                keys = ", ".join(table.key)
                duplicates = con.execute(f"SELECT count(*) FROM (SELECT {keys} FROM {name} GROUP BY ALL "
                                         f"HAVING count(*) > 1)").fetchone()[0]  # small: one count
                assert duplicates == 0, f"{name}: duplicate keys ({keys})"
    finally:
        con.close()
