"""The Delta table layer: modes, metadata, time travel, schema enforcement, failures, conflicts, readers."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import polars
import pytest
from deltalake import DeltaTable
from frames import BACKENDS
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from segscale.config import DeltaSettings
from segscale.errors import ConfigError, SchemaMismatchError, TableNotFoundError, WriteConflictError, WriteFailedError
from segscale.io.delta import CommitMetadata, DeltaStore, rs_writer

SCHEMA = T.StructType([
    T.StructField("customer_id", T.StringType()),
    T.StructField("snapshot_date", T.DateType()),
    T.StructField("frequency", T.LongType()),
    T.StructField("monetary", T.DoubleType()),
    T.StructField("last_ts", T.TimestampType()),
])
D1, D2 = dt.date(2024, 1, 31), dt.date(2024, 2, 29)
TS = dt.datetime(2024, 1, 5, 10, 30, 0, 123456, tzinfo=dt.UTC)


def rows(snapshot: dt.date, n: int = 3, scale: float = 1.0) -> list[tuple]:
    out = [(f"C{i:03d}", snapshot, i, i * 10.5 * scale, TS + dt.timedelta(days=i)) for i in range(n)]
    out.append(("C999", snapshot, None, None, None))  # nulls in every nullable column
    return out


def meta(stage: str = "test", run_id: str = "run-1", snapshot: dt.date | None = None) -> CommitMetadata:
    return CommitMetadata(run_id=run_id, stage=stage, config_hash="abc123",
                          snapshot_date=snapshot.isoformat() if snapshot else None)


class Tables:
    """Tables under one root by any name, straight on the store: the layer below the catalog's Warehouse, so these
    tests write tables of their own schemas and modes."""

    def __init__(self, spark, root: str, settings: DeltaSettings):
        self.root, self.store = str(root), DeltaStore(spark, settings)

    def uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write(self, name: str, df, **kwargs):
        return self.store.write(self.uri(name), df, **kwargs)

    def read(self, name: str, version: int | None = None, timestamp=None):
        return self.store.read(self.uri(name), version, timestamp)

    def history(self, name: str):
        return self.store.history(self.uri(name))

    def partition_values(self, name: str, column: str) -> list[str]:
        return self.store.partition_values(self.uri(name), column)

    def vacuum(self, name: str, retention_hours: float | None = None, dry_run: bool = False) -> list[str]:
        return self.store.vacuum(self.uri(name), retention_hours, dry_run)


def data_files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*.parquet")}


@pytest.fixture(params=BACKENDS)
def warehouse(spark, tmp_path, request) -> Tables:
    """Tables written by each backend in turn."""
    return Tables(spark, str(tmp_path / "wh"), DeltaSettings(backend=request.param))


@pytest.fixture
def rs_warehouse(spark, tmp_path) -> Tables:
    """Tables written by delta-rs, for what only its writer does: files written by the executors, the seam before
    its commit."""
    return Tables(spark, str(tmp_path / "wh"), DeltaSettings(backend="delta-rs"))


def write_snapshot(warehouse: Tables, spark, snapshot: dt.date, scale: float = 1.0, run_id: str = "run-1"):
    df = spark.createDataFrame(rows(snapshot, scale=scale), SCHEMA).repartition(2)
    return warehouse.write("features", df, mode="replace_partition", partition_by=["snapshot_date"],
                           replace={"snapshot_date": snapshot}, meta=meta(run_id=run_id, snapshot=snapshot))


def test_create_then_read_round_trips_every_type_and_null(spark, warehouse):
    df = spark.createDataFrame(rows(D1), SCHEMA)
    result = warehouse.write("features", df, mode="create", partition_by=["snapshot_date"], meta=meta())
    assert result.version == 0 and result.rows == 4
    assertDataFrameEqual(warehouse.read("features"), df)
    assert warehouse.read("features").schema == SCHEMA


def test_files_are_written_by_executors_in_partition_directories_with_stats(spark, rs_warehouse):
    df = spark.createDataFrame(rows(D1, n=40), SCHEMA).repartition(3)
    rs_warehouse.write("features", df, mode="create", partition_by=["snapshot_date"], meta=meta())
    table = DeltaTable(rs_warehouse.uri("features"))
    actions = table.get_add_actions(flatten=True).to_pydict() if hasattr(
        table.get_add_actions(flatten=True), "to_pydict") else None
    if actions is None:
        import pyarrow as pa
        actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    assert len(actions["path"]) == 3  # one file per task
    assert all(p.startswith("snapshot_date=2024-01-31/part-") for p in actions["path"])
    assert sum(actions["num_records"]) == 41
    assert min(v for v in actions["min.frequency"] if v is not None) == 0
    assert max(v for v in actions["max.frequency"] if v is not None) == 39
    assert sum(actions["null_count.monetary"]) == 1
    # timestamp bounds are milliseconds; the maximum is rounded up so it still bounds the data
    assert max(actions["max.last_ts"]) >= TS + dt.timedelta(days=39)


def test_append_adds_rows_in_a_new_version(spark, warehouse):
    first = spark.createDataFrame(rows(D1), SCHEMA)
    second = spark.createDataFrame(rows(D2), SCHEMA)
    warehouse.write("features", first, mode="append", partition_by=["snapshot_date"], meta=meta())
    result = warehouse.write("features", second, mode="append", meta=meta())
    assert result.version == 1
    assertDataFrameEqual(warehouse.read("features"), first.unionByName(second))


def test_replace_partition_replaces_only_that_snapshot_and_never_duplicates(spark, warehouse):
    write_snapshot(warehouse, spark, D1)
    write_snapshot(warehouse, spark, D2)
    before_d2 = warehouse.read("features").where(F.col("snapshot_date") == D2)
    for attempt in range(2):  # the same snapshot re-run twice
        result = write_snapshot(warehouse, spark, D1, scale=2.0, run_id=f"rerun-{attempt}")
        assert result.version == 2 + attempt
    current = warehouse.read("features")
    expected_d1 = spark.createDataFrame(rows(D1, scale=2.0), SCHEMA)
    assertDataFrameEqual(current.where(F.col("snapshot_date") == D1), expected_d1)
    assertDataFrameEqual(current.where(F.col("snapshot_date") == D2), before_d2)
    assert current.count() == current.dropDuplicates().count() == 8


def test_replace_partition_refuses_rows_of_another_partition(spark, warehouse):
    write_snapshot(warehouse, spark, D1)
    mixed = spark.createDataFrame(rows(D1) + rows(D2), SCHEMA)
    with pytest.raises(WriteFailedError, match="replaces"):
        warehouse.write("features", mixed, mode="replace_partition", replace={"snapshot_date": D1},
                        partition_by=["snapshot_date"], meta=meta())
    assert DeltaTable(warehouse.uri("features")).version() == 0


def test_partition_values_come_from_the_log(spark, warehouse):
    write_snapshot(warehouse, spark, D2)
    write_snapshot(warehouse, spark, D1)
    assert warehouse.partition_values("features", "snapshot_date") == ["2024-01-31", "2024-02-29"]


def test_overwrite_replaces_the_whole_table(spark, warehouse):
    write_snapshot(warehouse, spark, D1)
    write_snapshot(warehouse, spark, D2)
    only = spark.createDataFrame(rows(D2, n=1), SCHEMA)
    warehouse.write("features", only, mode="overwrite", meta=meta())
    assertDataFrameEqual(warehouse.read("features"), only)


def test_create_refuses_an_existing_table(spark, warehouse):
    write_snapshot(warehouse, spark, D1)
    with pytest.raises(Exception, match="already exists"):
        warehouse.write("features", spark.createDataFrame(rows(D1), SCHEMA), mode="create", meta=meta())


def test_every_commit_carries_run_metadata_and_history_lists_it(spark, warehouse):
    write_snapshot(warehouse, spark, D1, run_id="run-a")
    write_snapshot(warehouse, spark, D2, run_id="run-b")
    history = warehouse.history("features")
    assert [h.version for h in history] == [1, 0]
    newest = history[0].metadata
    assert newest["run_id"] == "run-b"
    assert newest["stage"] == "test"
    assert newest["snapshot_date"] == "2024-02-29"
    assert newest["config_hash"] == "abc123"
    assert newest["package_version"]
    # the same metadata is in the raw Delta log, where any Delta reader finds it
    raw = DeltaTable(warehouse.uri("features")).history(1)[0]
    assert json.loads(raw["userMetadata"])["run_id"] == "run-b"


def test_time_travel_by_version_and_by_timestamp(spark, warehouse):
    write_snapshot(warehouse, spark, D1)
    time.sleep(1.1)
    between = dt.datetime.now(dt.UTC)
    time.sleep(1.1)
    write_snapshot(warehouse, spark, D1, scale=3.0)
    original = spark.createDataFrame(rows(D1), SCHEMA)
    assertDataFrameEqual(warehouse.read("features", version=0), original)
    assertDataFrameEqual(warehouse.read("features", timestamp=between), original)
    assertDataFrameEqual(warehouse.read("features"), spark.createDataFrame(rows(D1, scale=3.0), SCHEMA))
    with pytest.raises(TableNotFoundError):
        warehouse.read("features", version=7)
    with pytest.raises(TableNotFoundError, match="no Delta table"):
        warehouse.read("missing")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop("monetary"), r"missing columns \['monetary'\]"),
        (lambda df: df.withColumn("extra", F.lit(1)), r"new columns \['extra'\]"),
        (lambda df: df.withColumn("frequency", F.col("frequency").cast("string")),
         r"frequency \(table: bigint, frame: string\)"),
    ],
    ids=["missing", "extra", "retyped"],
)
def test_schema_mismatch_names_the_columns_and_commits_nothing(spark, warehouse, change, message):
    write_snapshot(warehouse, spark, D1)
    path = Path(warehouse.uri("features"))
    files_before = data_files(path)
    bad = change(spark.createDataFrame(rows(D2), SCHEMA))
    with pytest.raises(SchemaMismatchError, match=message):
        warehouse.write("features", bad, mode="append", meta=meta())
    assert DeltaTable(str(path)).version() == 0
    assert data_files(path) == files_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_additive_schema_evolution_only_when_allowed(spark, tmp_path, backend):
    evolving = Tables(spark, str(tmp_path / "wh"), DeltaSettings(backend=backend, allow_schema_evolution=True))
    write_snapshot(evolving, spark, D1)
    wider = spark.createDataFrame(rows(D2), SCHEMA).withColumn("score", F.col("frequency") * 2)
    evolving.write("features", wider, mode="replace_partition", replace={"snapshot_date": D2}, meta=meta())
    current = evolving.read("features")
    assert current.columns == [*SCHEMA.fieldNames(), "score"]
    assert current.where(F.col("snapshot_date") == D1).where(F.col("score").isNotNull()).count() == 0
    assert current.where(F.col("snapshot_date") == D2).agg(F.sum("score")).first()[0] == 6


def test_task_failure_leaves_the_table_at_its_previous_version_and_vacuum_removes_orphans(spark, rs_warehouse):
    write_snapshot(rs_warehouse, spark, D1)
    path = Path(rs_warehouse.uri("features"))
    committed = data_files(path)
    # One task, small Arrow batches: the task writes D2 rows to its file, then meets a row of another partition
    # in its last batch and fails, leaving a half-written file behind.
    poisoned = spark.createDataFrame(rows(D2, n=49) + [("BAD", D1, 1, 1.0, TS)], SCHEMA).coalesce(1)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10")
    try:
        with pytest.raises(WriteFailedError, match="unchanged at version 0.*in a write that replaces"):
            rs_warehouse.write("features", poisoned, mode="replace_partition", replace={"snapshot_date": D2},
                            meta=meta())
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert DeltaTable(str(path)).version() == 0
    orphans = data_files(path) - committed
    assert orphans, "the failed task left its file behind"
    assertDataFrameEqual(rs_warehouse.read("features"), spark.createDataFrame(rows(D1), SCHEMA))
    # the default retention window protects files an in-flight write may still commit
    assert rs_warehouse.vacuum("features", dry_run=True) == []
    removed = rs_warehouse.vacuum("features", retention_hours=0)
    assert {str(Path(p)) for p in removed} == orphans
    assert data_files(path) == committed


def test_python_worker_failure_is_reported_with_its_cause(spark, warehouse):
    write_snapshot(warehouse, spark, D1)

    @F.udf(T.StringType())
    def boom(customer_id):
        if customer_id == "C002":
            raise RuntimeError(f"injected failure at {customer_id}")
        return customer_id

    failing = spark.createDataFrame(rows(D2), SCHEMA).withColumn("customer_id", boom(F.col("customer_id")))
    with pytest.raises(WriteFailedError, match="injected failure at C002"):
        warehouse.write("features", failing, mode="replace_partition", replace={"snapshot_date": D2},
                        meta=meta())
    assert DeltaTable(warehouse.uri("features")).version() == 0


def test_concurrent_replace_of_the_same_partition_one_wins_the_other_gets_a_conflict(spark, rs_warehouse,
                                                                                      monkeypatch):
    write_snapshot(rs_warehouse, spark, D1)
    original = rs_writer.before_commit

    def race(uri: str, write_id: str) -> None:
        monkeypatch.setattr(rs_writer, "before_commit", original)  # the rival commits without racing
        write_snapshot(rs_warehouse, spark, D1, scale=5.0, run_id="rival")

    monkeypatch.setattr(rs_writer, "before_commit", race)
    with pytest.raises(WriteConflictError, match="another writer"):
        write_snapshot(rs_warehouse, spark, D1, scale=2.0, run_id="loser")
    table = DeltaTable(rs_warehouse.uri("features"))
    assert table.version() == 1
    assert table.history(1)[0]["userMetadata"] and "rival" in table.history(1)[0]["userMetadata"]
    assertDataFrameEqual(rs_warehouse.read("features"), spark.createDataFrame(rows(D1, scale=5.0), SCHEMA))


def test_concurrent_appends_both_land(spark, rs_warehouse, monkeypatch):
    write_snapshot(rs_warehouse, spark, D1)
    original = rs_writer.before_commit

    def race(uri: str, write_id: str) -> None:
        monkeypatch.setattr(rs_writer, "before_commit", original)
        rs_warehouse.write("features", spark.createDataFrame(rows(D2, n=1), SCHEMA), mode="append", meta=meta())

    monkeypatch.setattr(rs_writer, "before_commit", race)
    rs_warehouse.write("features", spark.createDataFrame(rows(D2, n=2), SCHEMA), mode="append", meta=meta())
    assert DeltaTable(rs_warehouse.uri("features")).version() == 2
    assert rs_warehouse.read("features").count() == 4 + 2 + 3


def test_a_table_created_by_another_writer_during_a_create_is_a_conflict(spark, rs_warehouse, monkeypatch):
    original = rs_writer.before_commit

    def race(uri: str, write_id: str) -> None:
        monkeypatch.setattr(rs_writer, "before_commit", original)
        write_snapshot(rs_warehouse, spark, D1, scale=5.0, run_id="rival")

    monkeypatch.setattr(rs_writer, "before_commit", race)
    with pytest.raises(WriteConflictError, match="created by another writer"):
        write_snapshot(rs_warehouse, spark, D1, run_id="loser")
    assert DeltaTable(rs_warehouse.uri("features")).version() == 0
    assertDataFrameEqual(rs_warehouse.read("features"), spark.createDataFrame(rows(D1, scale=5.0), SCHEMA))


def test_two_writers_creating_the_same_table_at_once_one_wins_without_duplicates(spark, rs_warehouse, monkeypatch):
    barrier = threading.Barrier(2, timeout=120)
    monkeypatch.setattr(rs_writer, "before_commit", lambda uri, write_id: barrier.wait())
    outcomes: list[str] = []

    def write(scale: float) -> None:
        try:
            write_snapshot(rs_warehouse, spark, D1, scale=scale)
            outcomes.append("won")
        except WriteConflictError as exc:
            outcomes.append("conflict" if "created by another writer" in str(exc) else str(exc))
        except Exception as exc:  # noqa: BLE001 (recorded for the assertion)
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=write, args=(s,)) for s in (1.0, 2.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "won"]
    table = DeltaTable(rs_warehouse.uri("features"))
    assert table.version() == 0
    assert rs_warehouse.read("features").count() == 4


def test_tables_are_readable_by_deltalake_duckdb_and_polars(spark, warehouse):
    write_snapshot(warehouse, spark, D1)
    write_snapshot(warehouse, spark, D2)
    uri = warehouse.uri("features")
    expected = sorted((r.customer_id, r.snapshot_date, r.frequency) for r in warehouse.read("features").collect())

    arrow = DeltaTable(uri).to_pyarrow_table()
    from_deltalake = sorted(zip(arrow["customer_id"].to_pylist(), arrow["snapshot_date"].to_pylist(),
                                arrow["frequency"].to_pylist(), strict=True))
    con = duckdb.connect()
    con.register("features", DeltaTable(uri).to_pyarrow_dataset())
    from_duckdb = sorted(con.sql("select customer_id, snapshot_date, frequency from features").fetchall())
    frame = polars.read_delta(uri).select("customer_id", "snapshot_date", "frequency")
    from_polars = sorted(frame.iter_rows())
    assert from_deltalake == from_duckdb == from_polars == expected


def test_empty_frame_creates_an_empty_table_with_the_schema(spark, warehouse):
    warehouse.write("features", spark.createDataFrame([], SCHEMA), mode="create", partition_by=["snapshot_date"],
                    meta=meta())
    read = warehouse.read("features")
    assert read.schema == SCHEMA and read.count() == 0


@pytest.mark.parametrize(("first", "then"), [("delta-rs", "delta-spark"), ("delta-spark", "delta-rs")])
def test_a_table_one_backend_wrote_the_other_extends_and_every_reader_reads(spark, tmp_path, first, then):
    root = str(tmp_path / "wh")
    write_snapshot(Tables(spark, root, DeltaSettings(backend=first)), spark, D1, run_id="first")
    other = Tables(spark, root, DeltaSettings(backend=then))
    write_snapshot(other, spark, D2, run_id="then")
    other.write("features", spark.createDataFrame(rows(D2, n=1, scale=4.0), SCHEMA), mode="append",
                meta=meta(run_id="appended"))
    expected = sorted(rows(D1) + rows(D2) + rows(D2, n=1, scale=4.0), key=str)
    uri = other.uri("features")
    # one protocol, whoever created the table (log.PINNED_PROTOCOL)
    table = DeltaTable(uri)
    protocol = table.protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    assert not protocol.reader_features and not protocol.writer_features
    assert table.metadata().configuration == {"delta.enableDeletionVectors": "false"}
    assert [h.metadata["run_id"] for h in other.history("features")] == ["appended", "then", "first"]

    def as_tuples(records) -> list[tuple]:
        """Rows in one order, each timestamp in UTC (Spark's are naive, in the process's time zone)."""
        return sorted((tuple(v.astimezone(dt.UTC) if isinstance(v, dt.datetime) else v for v in r)
                       for r in records), key=str)

    columns = SCHEMA.fieldNames()
    assert as_tuples(spark.read.format("delta").load(uri).select(*columns).collect()) == expected
    for backend in BACKENDS:
        assert as_tuples(Tables(spark, root, DeltaSettings(backend=backend)).read("features").collect()) == expected
    arrow = table.to_pyarrow_table().select(columns)
    assert as_tuples(zip(*(arrow[c].to_pylist() for c in columns), strict=True)) == expected
    con = duckdb.connect()  # through deltalake's dataset: DuckDB's delta extension is not installable offline
    con.register("features", table.to_pyarrow_dataset())
    assert as_tuples(con.sql(f"select {', '.join(columns)} from features").fetchall()) == expected
    assert as_tuples(polars.read_delta(uri).select(columns).iter_rows()) == expected


def test_store_chooses_delta_spark_in_a_session_with_the_delta_extension(spark):
    assert DeltaStore(spark, DeltaSettings()).backend == "delta-spark"  # the test sessions have it


def _session_with_extensions(extensions: str) -> SimpleNamespace:
    """Just enough of a SparkSession for the backend choice: its configuration."""
    values = {"spark.sql.extensions": extensions}
    return SimpleNamespace(conf=SimpleNamespace(get=lambda key, default=None: values.get(key, default)))


def test_store_chooses_delta_spark_when_the_delta_extension_is_configured():
    with_delta = _session_with_extensions("io.delta.sql.DeltaSparkSessionExtension")
    assert DeltaStore(with_delta, DeltaSettings()).backend == "delta-spark"
    assert DeltaStore(_session_with_extensions(""), DeltaSettings()).backend == "delta-rs"
    assert DeltaStore(with_delta, DeltaSettings(backend="delta-rs")).backend == "delta-rs"


def test_delta_spark_in_a_session_without_the_delta_extension_names_what_spark_submit_needs():
    with pytest.raises(ConfigError, match=r"--packages io\.delta:delta-spark_4\.2_2\.13:4\.4\.0 --conf "
                                          r"spark\.sql\.extensions=io\.delta\.sql\.DeltaSparkSessionExtension"):
        DeltaStore(_session_with_extensions(""), DeltaSettings(backend="delta-spark"))
