"""The main job end to end on generated data: validate → features → segment, over consecutive snapshots."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import duckdb
import pytest
from deltalake import DeltaTable
from frames import D1, D2, GOLDEN_INPUT, ROOT, contract_schema, settings_for
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from segscale import catalog
from segscale.analyst.sql import connect, run_query, visible_tables
from segscale.cli.app import format_summary, main
from segscale.config import Settings
from segscale.errors import InputError
from segscale.io.delta import Warehouse
from segscale.pipeline import STAGE_TAG, Run, generate_inputs, run_pipeline
from segscale.transforms.migration import segment_migration


def snapshot(warehouse: Warehouse, table: catalog.Table, day: dt.date):
    return warehouse.read(table).where(F.col("snapshot_date") == F.lit(day))


def test_every_table_is_published_per_snapshot(two_snapshots):
    _, warehouse, first, second = two_snapshots
    for table in (catalog.QUARANTINE, catalog.CUSTOMER_FEATURES, catalog.CUSTOMER_SCORES):
        assert warehouse.partition_values(table, "snapshot_date") == [D1.isoformat(), D2.isoformat()], table
    assert warehouse.partition_values(catalog.SEGMENT_MIGRATION, "snapshot_date") == [D2.isoformat()]
    assert first["stages"]["migration"]["previous_snapshot"] is None
    assert second["stages"]["migration"]["previous_snapshot"] == D1.isoformat()


def test_scores_cover_every_customer_once_with_consistent_columns(two_snapshots):
    _, warehouse, _, _ = two_snapshots
    scores = snapshot(warehouse, catalog.CUSTOMER_SCORES, D2)
    features = snapshot(warehouse, catalog.CUSTOMER_FEATURES, D2)
    assert scores.count() == features.count() == scores.select("customer_id").distinct().count()
    prospects = scores.where(F.col("lifecycle_stage") == "prospect")
    assert prospects.where(F.col("r_score").isNotNull() | (F.col("value_tier") != "regular")).count() == 0
    buyers = scores.where(F.col("lifecycle_stage") != "prospect")
    assert buyers.where(F.col("rfm_segment").isNull() | F.col("f_score").isNull()).count() == 0
    shares = {r.value_tier: r["count"] / buyers.count() for r in buyers.groupBy("value_tier").count().collect()}
    assert shares["high_value"] == pytest.approx(0.2, abs=0.02)
    assert shares["potential"] == pytest.approx(0.3, abs=0.02)


def test_scores_match_an_independent_duckdb_computation(two_snapshots):
    """Given the published features and the recorded cut points, DuckDB scores every buyer the same way."""
    _, warehouse, _, second = two_snapshots
    cuts = second["stages"]["segment"]["rfm_cut_points"]
    features = snapshot(warehouse, catalog.CUSTOMER_FEATURES, D2).select("customer_id", "recency_days", "frequency",
                                                                   "monetary").toArrow()
    scores = snapshot(warehouse, catalog.CUSTOMER_SCORES, D2).select("customer_id", "r_score", "f_score",
                                                               "m_score").toArrow()

    def bins(column: str, values: list[float]) -> str:
        return "1 + " + " + ".join(f"({column} > {v})::INT" for v in values) if values else "1"

    con = duckdb.connect()
    con.register("features", features)
    con.register("scores", scores)
    expected = con.sql(f"""
        SELECT customer_id,
               CASE WHEN recency_days IS NULL THEN NULL ELSE 6 - ({bins('recency_days', cuts['recency'])}) END,
               CASE WHEN recency_days IS NULL THEN NULL ELSE {bins('frequency', cuts['frequency'])} END,
               CASE WHEN recency_days IS NULL THEN NULL ELSE {bins('monetary', cuts['monetary'])} END
        FROM features ORDER BY customer_id""").fetchall()
    actual = con.sql("SELECT * FROM scores ORDER BY customer_id").fetchall()
    assert actual == expected
    # every score value is used: the scale did not collapse
    assert {row[2] for row in actual if row[2] is not None} == {1, 2, 3, 4, 5}


def test_summary_counts_tiers_by_stage_as_published(two_snapshots):
    _, warehouse, _, second = two_snapshots
    published = snapshot(warehouse, catalog.CUSTOMER_SCORES, D2).groupBy("value_tier", "lifecycle_stage").count()
    expected: dict[str, dict[str, int]] = {}
    for row in published.collect():
        expected.setdefault(row.value_tier, {})[row.lifecycle_stage] = row["count"]
    assert second["stages"]["segment"]["tiers_by_stage"] == expected


def test_migration_accounts_for_every_customer_of_both_snapshots(two_snapshots):
    _, warehouse, _, _ = two_snapshots
    migration = snapshot(warehouse, catalog.SEGMENT_MIGRATION, D2)
    ids_d1 = {r.customer_id for r in snapshot(warehouse, catalog.CUSTOMER_SCORES, D1).select("customer_id").collect()}
    ids_d2 = {r.customer_id for r in snapshot(warehouse, catalog.CUSTOMER_SCORES, D2).select("customer_id").collect()}
    assert migration.agg(F.sum("customers")).first()[0] == len(ids_d1 | ids_d2)
    arrived = migration.where(F.col("from_value_tier").isNull()).agg(F.sum("customers")).first()[0]
    assert arrived == len(ids_d2 - ids_d1)
    assert migration.where(F.col("previous_snapshot_date") != F.lit(D1)).count() == 0


def test_a_snapshot_run_between_two_published_ones_recomputes_the_next_one_s_migration(spark, two_snapshots,
                                                                                        tmp_path):
    """D1 and D2 are published, D2's migration from D1. A run of a date between them (a backfill filling a gap)
    publishes its own migration from D1 and D2's again, from the new snapshot; D2's other tables stay as they
    were."""
    settings, original, _, _ = two_snapshots
    shutil.copytree(Path(original.root.removeprefix("file://")).parent, tmp_path / "copy")
    # As if D2 had not measured D1's plan yet: a run before the plan's horizon has ended must not measure it.
    shutil.rmtree(tmp_path / "copy" / "wh" / "retention_outcomes")
    copy_settings = settings_for(settings.paths.input, tmp_path / "copy" / "wh", retention={"budget": 2000.0})
    warehouse = Warehouse(spark, str(tmp_path / "copy" / "wh"), settings.delta)
    between = dt.date(2024, 8, 15)
    summary = run_pipeline(spark, copy_settings, between)
    assert summary["stages"]["outcomes"]["measured"] == {}
    assert summary["stages"]["outcomes"]["waiting"] == [D1.isoformat()]  # 46 of its 90 days have passed
    assert not warehouse.exists(catalog.RETENTION_OUTCOMES)
    assert all(u["source"] == "configured" for u in summary["stages"]["outcomes"]["uplifts"].values())
    record = summary["stages"]["migration"]
    assert (record["previous_snapshot"], record["next_snapshot"]) == (D1.isoformat(), D2.isoformat())
    assert list(record["published"]) == ["segment_migration"]  # the run's own snapshot
    scores = {day: snapshot(warehouse, catalog.CUSTOMER_SCORES, day) for day in (D1, between, D2)}
    migration = warehouse.read(catalog.SEGMENT_MIGRATION)
    for before, after in ((D1, between), (between, D2)):
        fresh = segment_migration(scores[before], scores[after], before, after, summary["run_id"])
        assertDataFrameEqual(migration.where(F.col("snapshot_date") == F.lit(after)), fresh)
    assert record["next_published"]["rows"] == migration.where(F.col("snapshot_date") == F.lit(D2)).count()
    newest = warehouse.history(catalog.SEGMENT_MIGRATION, 1)[0]
    assert newest.version == record["next_published"]["version"]
    assert (newest.metadata["snapshot_date"], newest.metadata["run_id"]) == (D2.isoformat(), summary["run_id"])
    for table in (catalog.QUARANTINE, catalog.CUSTOMER_FEATURES, catalog.CUSTOMER_SCORES, catalog.RETENTION_PLAN,
                  catalog.RETENTION_SUMMARY):
        assertDataFrameEqual(snapshot(warehouse, table, D2), snapshot(original, table, D2), rtol=0, atol=0)
        assertDataFrameEqual(snapshot(warehouse, table, D1), snapshot(original, table, D1), rtol=0, atol=0)


def test_a_rerun_replaces_the_quarantine_of_its_snapshot_only(spark, tmp_path):
    """Validating D2 again on other input replaces D2's rejected rows; D1's stay as its run published them."""
    settings = settings_for(tmp_path / "in", tmp_path / "wh", validation={"max_bad_ratio": 1.0})
    when = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)

    def validate(day: dt.date, bad_transaction: tuple) -> str:
        spark.createDataFrame([("C1", dt.date(2023, 1, 1), "north", 1, "online", 1980, "F")],
                              contract_schema("customers")).write.mode("overwrite").parquet(str(tmp_path / "in" /
                                                                                                "customers"))
        spark.createDataFrame([("t1", "C1", when, 10.0, 1, "books", "online", "purchase"), bad_transaction],
                              contract_schema("transactions")).write.mode("overwrite").parquet(
            str(tmp_path / "in" / "transactions"))
        return run_pipeline(spark, settings, day, Run("validate", settings, day))["run_id"]

    negative = ("t2", "C1", when, -5.0, 1, "books", "online", "purchase")
    first, _ = validate(D1, negative), validate(D2, negative)
    rerun = validate(D2, ("t3", None, when, 7.0, 1, "toys", "store", "purchase"))
    quarantine = Warehouse(spark, str(tmp_path / "wh"), settings.delta).read(catalog.QUARANTINE).select(
        "snapshot_date", "source_table", "reason", F.get_json_object("record", "$.transaction_id").alias("id"),
        "run_id")
    expected = spark.createDataFrame([(D1, "transactions", "invalid_amount", "t2", first),
                                      (D2, "transactions", "null_customer_id", "t3", rerun)], quarantine.schema)
    assertDataFrameEqual(quarantine, expected)


def test_quarantine_and_summary_carry_counts_per_reason(two_snapshots):
    settings, warehouse, first, _ = two_snapshots
    tables = first["stages"]["validate"]["tables"]
    quarantine = snapshot(warehouse, catalog.QUARANTINE, D1)
    by_reason = {(r.source_table, r.reason): r["count"] for r in quarantine.groupBy("source_table", "reason")
                 .count().collect()}
    assert by_reason == {(t, reason): n for t, c in tables.items() for reason, n in c["bad"].items() if n}
    meta = json.loads(DeltaTable(warehouse.uri(catalog.QUARANTINE)).history(1)[0]["userMetadata"])
    assert meta["extra"]["quarantined"] == json.loads(json.dumps(tables))
    text = format_summary(first)
    assert "duplicate_transaction_id" in text and "RFM cut points" in text and "高价值" in text
    assert "fitted segscale_clv v1" in text and "predicted value, next 365 days (segscale_clv v1)" in text
    assert "retention plan:" in text and "dedicated_account_manager" in text


def test_rerunning_a_snapshot_three_times_yields_the_same_content(spark, two_snapshots, tmp_path):
    """The shared warehouse's D1 is the first run (it trained the champions); two reruns go to a copy of it."""
    settings, original, _, _ = two_snapshots
    # The warehouse and the MLflow store beside it.
    shutil.copytree(Path(original.root.removeprefix("file://")).parent, tmp_path / "copy")
    copy_settings = settings_for(settings.paths.input, tmp_path / "copy" / "wh", retention={"budget": 2000.0})
    warehouse = Warehouse(spark, str(tmp_path / "copy" / "wh"), settings.delta)
    tables = (catalog.QUARANTINE, catalog.CUSTOMER_FEATURES, catalog.CUSTOMER_SCORES, catalog.RETENTION_PLAN,
              catalog.RETENTION_SUMMARY, catalog.TIER_ECONOMICS)
    versions = {t: DeltaTable(warehouse.uri(t)).version() for t in tables}
    for rerun in (1, 2):  # with the champions the first run registered
        run_pipeline(spark, copy_settings, D1)
        for table in tables:
            published = snapshot(warehouse, table, D1).drop("run_id")
            assertDataFrameEqual(published, snapshot(original, table, D1).drop("run_id"), rtol=0, atol=0)  # bits
            assert DeltaTable(warehouse.uri(table)).version() == versions[table] + rerun
        scores = snapshot(warehouse, catalog.CUSTOMER_SCORES, D1)
        assert scores.count() == scores.select("customer_id").distinct().count()


def test_too_many_bad_rows_stop_the_run_before_anything_is_published(spark, tmp_path):
    inputs = tmp_path / "dirty"
    generate_inputs(spark, Settings.model_validate({"generate": {"customers": 800, "dirty_rate": 0.2}}), str(inputs))
    settings = settings_for(inputs, tmp_path / "wh")
    with pytest.raises(InputError, match=r"transactions: .* rows bad .*limit 5\.00%.*rules: "):
        run_pipeline(spark, settings, D1)
    published = {p.name for p in (tmp_path / "wh").iterdir()}
    assert published == {"runs"}  # only the record of the failed run
    run = DeltaTable(str(tmp_path / "wh" / "runs")).to_pyarrow_table().to_pylist()[0]
    assert run["status"] == "failed" and json.loads(run["summary_json"])["failed_stage"] == "validate"


def test_stage_commands_run_their_stages(spark, tmp_path, capsys, monkeypatch):
    for key, value in (("CHURN__ENABLED", "false"), ("CLV__ENABLED", "false"), ("TIERS__BASIS", "monetary")):
        monkeypatch.setenv(f"SEGSCALE_{key}", value)  # scoring by stage: tests/integration/test_score.py
    warehouse = tmp_path / "wh"
    common = ["--input", str(GOLDEN_INPUT), "--warehouse", str(warehouse), "--snapshot-date", D1.isoformat()]
    assert main(["segment", *common[2:]], spark=spark) == 2  # nothing to segment yet
    assert "customer_features has no snapshot 2024-06-30" in capsys.readouterr().err
    assert main(["validate", *common], spark=spark) == 0
    assert {p.name for p in warehouse.iterdir()} == {"quarantine", "runs"}
    assert main(["features", *common], spark=spark) == 0
    assert (warehouse / "customer_features").exists() and not (warehouse / "customer_scores").exists()
    assert main(["segment", *common[2:]], spark=spark) == 0
    assert (warehouse / "customer_scores").exists()
    out = capsys.readouterr().out
    assert "segscale segment succeeded" in out and "value tier" in out
    assert main(["plan", *common[2:]], spark=spark) == 2  # no churn or CLV to plan with
    assert "the retention plan needs churn probabilities and CLV" in capsys.readouterr().err
    assert not (warehouse / "retention_plan").exists()


def test_run_is_recorded_with_its_stages(spark, tmp_path):
    settings = settings_for(GOLDEN_INPUT, tmp_path / "wh", churn={"enabled": False})
    summary = run_pipeline(spark, settings, D1, Run("run", settings, D1))
    assert list(summary["stages"]) == ["ingest", "validate", "clv fit", "features", "segment", "migration",
                                       "monitor", "outcomes", "plan", "queue", "economics"]
    assert summary["models"] == {"churn": {"status": "disabled", "version": None, "skipped": None},
                                 "clv": {"status": "trained", "version": 1, "skipped": None}}
    assert summary["stages"]["plan"]["retention"]["note"] == "churn.enabled is false"
    assert summary["warnings"] == []  # what the config asked for is no warning


def test_every_example_query_in_the_docs_runs_on_a_published_warehouse(spark, two_snapshots):
    settings, _, _, _ = two_snapshots
    text = (ROOT / "docs" / "querying.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, flags=re.DOTALL)
    assert len(queries) == 21
    for query in queries:
        result = run_query(settings.paths.warehouse, query)
        assert result.num_rows > 0, query
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 3  # the versions of the last completed run, Polars, Spark
    for python in blocks:
        exec(python.replace('"warehouse', f'"{settings.paths.warehouse}').replace(  # noqa: S102 (the doc's code)
            "2024, 12, 31", f"{D2.year}, {D2.month}, {D2.day}").replace("2024-12-31", D2.isoformat()),
             {"spark": spark})


def test_a_stage_tags_and_describes_the_spark_jobs_it_runs(spark):
    """The tag lets the Spark UI (and the benchmark's REST reader) attribute shuffle and spill to a stage."""
    context = spark.sparkContext
    run = Run("run", Settings(), D1)
    with run.stage("features"):
        assert STAGE_TAG + "features" in context.getJobTags()
        with run.stage("segment"):
            assert {STAGE_TAG + "features", STAGE_TAG + "segment"} <= context.getJobTags()
            assert context.getLocalProperty("spark.job.description") == f"segscale run {D1}: segment"
        assert context.getLocalProperty("spark.job.description") == f"segscale run {D1}: features"
    assert not {t for t in context.getJobTags() if t.startswith(STAGE_TAG)}
    assert context.getLocalProperty("spark.job.description") is None


def test_published_tables_have_the_declared_schema_partitioning_nulls_and_keys(two_snapshots):
    settings, _, _, _ = two_snapshots
    published = visible_tables(settings.paths.warehouse)
    # Every table but uplift_models, off by default (retention.uplift_model; test_loop.py checks it).
    assert set(published) == set(catalog.BY_NAME) - {catalog.UPLIFT_MODELS.name}
    con = connect(published)
    try:
        for name, delta in published.items():
            table = catalog.table(name)
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
