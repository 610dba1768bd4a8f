"""The table catalog: the published tables are what it declares, the writers refuse frames that differ, and the
data dictionary is generated from it (the published tables are checked against it in integration/test_pipeline.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from deltalake import DeltaTable
from frames import ROOT

from segscale import catalog
from segscale.errors import InputError, SchemaMismatchError
from segscale.io.delta import CommitMetadata, Warehouse

DOCS = ROOT / "docs"


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
