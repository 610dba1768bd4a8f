"""The segscale command line and the spark-submit jobs: commands, exit codes, messages, what gets published."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable
from frames import ROOT, contract_schema, run_command
from pyspark.sql import functions as F

from segscale.cli import main
from segscale.config import DeltaSettings
from segscale.io.delta import CommitMetadata, DeltaStore

SNAPSHOT = "2024-06-30"


@pytest.fixture(autouse=True)
def without_models(monkeypatch):
    """These inputs are far too small to fit the churn or CLV models on; scoring has its own tests."""
    monkeypatch.setenv("SEGSCALE_CHURN__ENABLED", "false")
    monkeypatch.setenv("SEGSCALE_CLV__ENABLED", "false")
    monkeypatch.setenv("SEGSCALE_TIERS__BASIS", "monetary")


def write_inputs(spark, root: Path, fmt: str) -> Path:
    customers = spark.createDataFrame(
        [(c, dt.date(2023, 1, 1), "north", 1, "online", 1980, "F") for c in ["A", "B", "P"]],
        contract_schema("customers"))
    when = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)
    transactions = spark.createDataFrame(
        [("t1", "A", when, 10.0, 1, "books", "online", "purchase"),
         ("t2", "A", when + dt.timedelta(days=5), 15.0, 1, "books", "online", "purchase"),
         ("t3", "B", when, 8.0, 1, "toys", "store", "purchase"),
         ("t4", "B", when + dt.timedelta(days=60), 50.0, 1, "toys", "store", "purchase")],
        contract_schema("transactions"))
    store = DeltaStore(spark, DeltaSettings(backend="delta-rs"))
    for name, df in {"customers": customers, "transactions": transactions}.items():
        path = str(root / name)
        if fmt == "delta":
            store.write(path, df, mode="overwrite", meta=CommitMetadata("t", "test", "h"))
        elif fmt == "parquet":
            df.write.parquet(path)
        else:
            df.select(*[F.date_format(c, "yyyy-MM-dd'T'HH:mm:ss'Z'").alias(c) if c == "ts" else F.col(c)
                        for c in df.columns]).write.option("header", True).csv(path)
    return root


def run_in_own_process(inputs: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`segscale run` as a user starts it: its own process and embedded session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    return subprocess.run(
        [sys.executable, "-m", "segscale", "run", "--input", str(inputs), "--warehouse", str(tmp_path / "wh"),
         "--snapshot-date", SNAPSHOT],
        capture_output=True, text=True, cwd=tmp_path, env={**env, "SEGSCALE_SPARK__MASTER": "local[1]"},
        timeout=300,
    )


def drop_checksums(inputs: Path) -> None:
    """Files edited by hand have no valid Hadoop checksum sidecar, like files that come from anywhere but Spark."""
    for crc in inputs.rglob(".*.crc"):
        crc.unlink()


@pytest.mark.parametrize("fmt", ["delta", "parquet", "csv"])
def test_run_publishes_customer_features_from_every_input_format(spark, tmp_path, fmt, capsys):
    inputs = write_inputs(spark, tmp_path / "in", fmt)
    warehouse = tmp_path / "wh"
    code = main(["run", "--input", str(inputs), "--warehouse", str(warehouse), "--snapshot-date", SNAPSHOT],
                spark=spark)
    assert code == 0
    out = capsys.readouterr().out
    assert "succeeded" in out and "features" in out
    rows = {r.customer_id: (r.recency_days, r.frequency, r.monetary) for r in
            spark.read.parquet(*DeltaTable(str(warehouse / "customer_features")).file_uris()).collect()}
    assert rows == {"A": (24, 2, 25.0), "B": (29, 1, 8.0), "P": (None, 0, 0.0)}


def test_rerunning_a_snapshot_replaces_it_and_records_each_run(spark, tmp_path, capsys):
    inputs = write_inputs(spark, tmp_path / "in", "parquet")
    args = ["run", "--input", str(inputs), "--warehouse", str(tmp_path / "wh"), "--snapshot-date", SNAPSHOT,
            "--summary-json", str(tmp_path / "summary.json")]
    assert main(args, spark=spark) == 0
    assert main(args, spark=spark) == 0
    table = DeltaTable(str(tmp_path / "wh" / "customer_features"))
    assert table.version() == 1
    assert table.to_pyarrow_table().num_rows == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["stages"]["features"]["published"]["customer_features"]["rows"] == 3
    runs = DeltaTable(str(tmp_path / "wh" / "runs")).to_pyarrow_table().to_pylist()
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert summary["run_id"] in {r["run_id"] for r in runs}
    config = json.loads(runs[0]["config_json"])
    assert config["paths"]["warehouse"] == str(tmp_path / "wh")
    capsys.readouterr()
    assert main(["history", "customer_features", "--warehouse", str(tmp_path / "wh")]) == 0
    listing = capsys.readouterr().out
    assert summary["run_id"] in listing and "2024-06-30" in listing and "features" in listing


def test_missing_input_table_exits_2_naming_it_and_writes_nothing(spark, tmp_path, capsys):
    inputs = write_inputs(spark, tmp_path / "in", "parquet")
    for f in (inputs / "transactions").iterdir():
        f.unlink()
    (inputs / "transactions").rmdir()
    code = main(["run", "--input", str(inputs), "--warehouse", str(tmp_path / "wh"), "--snapshot-date",
                 SNAPSHOT], spark=spark)
    err = capsys.readouterr().err
    assert code == 2
    assert "['transactions']" in err and str(inputs) in err and "Traceback" not in err
    assert not (tmp_path / "wh" / "customer_features").exists()


def test_missing_required_column_exits_2_naming_column_and_table(spark, tmp_path, capsys):
    inputs = write_inputs(spark, tmp_path / "in", "delta")
    df = spark.read.parquet(*DeltaTable(str(inputs / "transactions")).file_uris()).drop("amount")
    df.write.parquet(str(tmp_path / "in2" / "transactions"))
    spark.read.parquet(*DeltaTable(str(inputs / "customers")).file_uris()).write.parquet(
        str(tmp_path / "in2" / "customers"))
    code = main(["run", "--input", str(tmp_path / "in2"), "--warehouse", str(tmp_path / "wh"),
                 "--snapshot-date", SNAPSHOT], spark=spark)
    err = capsys.readouterr().err
    assert code == 2 and "transactions" in err and "['amount']" in err
    assert not (tmp_path / "wh" / "customer_features").exists()


def test_bad_config_exits_2_with_key_and_file(spark, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("delta:\n  max_commit_retries: -1\n")
    code = main(["run", "--config", str(config), "--snapshot-date", SNAPSHOT], spark=spark)
    err = capsys.readouterr().err
    assert code == 2 and "delta.max_commit_retries" in err and str(config) in err


def test_bad_config_variable_exits_2_naming_the_variable_and_its_value(spark, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGSCALE_VALIDATION__MAX_BAD_RATIO", "1.5")
    code = main(["run", "--warehouse", str(tmp_path / "wh"), "--snapshot-date", SNAPSHOT], spark=spark)
    err = capsys.readouterr().err
    assert code == 2
    assert "validation.max_bad_ratio: Input should be less than or equal to 1 (got 1.5) " \
           "[from environment SEGSCALE_VALIDATION__MAX_BAD_RATIO]" in err
    assert not (tmp_path / "wh").exists()


def test_bad_date_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--snapshot-date", "2024-02-30"])
    assert exit_info.value.code == 2
    assert "not a date" in capsys.readouterr().err


def test_history_of_a_missing_table_exits_2_without_traceback(spark, tmp_path, capsys):
    (tmp_path / "wh").mkdir()
    code = main(["history", "customer_features", "--warehouse", str(tmp_path / "wh")])
    err = capsys.readouterr().err
    assert code == 2 and "no Delta table" in err and "Traceback" not in err


def test_vacuum_command_lists_and_deletes_orphans(spark, tmp_path, capsys):
    inputs = write_inputs(spark, tmp_path / "in", "parquet")
    wh = tmp_path / "wh"
    assert main(["run", "--input", str(inputs), "--warehouse", str(wh), "--snapshot-date", SNAPSHOT],
                spark=spark) == 0
    orphan = wh / "customer_features" / "snapshot_date=2024-06-30" / "part-orphan.parquet"
    orphan.write_bytes(b"half-written")
    capsys.readouterr()
    assert main(["vacuum", "customer_features", "--warehouse", str(wh), "--dry-run"]) == 0
    assert "would delete 0 files" in capsys.readouterr().out  # inside the 168 h retention window
    assert main(["vacuum", "customer_features", "--warehouse", str(wh), "--retention-hours", "0"]) == 0
    assert "deleted 1 files" in capsys.readouterr().out
    assert not orphan.exists()


def test_help_lists_every_command_and_each_has_help(capsys):
    started = subprocess.run([sys.executable, "-X", "importtime", "-m", "segscale", "--help"], capture_output=True,
                             text=True, check=True)  # the installed entry point, as a user starts it
    listing = started.stdout
    # skops takes seconds to import (it lists scikit-learn's types) and only saving a churn model needs it.
    assert " skops" not in started.stderr
    for command in ("generate", "treat", "run", "backfill", "train", "score", "promote", "history", "vacuum",
                    "maintain", "catalog", "sql", "report"):
        assert command in listing
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: segscale {command}" in capsys.readouterr().out


@pytest.mark.parametrize(("job", "command"), [("run_pipeline.py", "run"), ("generate_data.py", "generate"),
                                              ("maintain.py", "maintain"), ("catalog.py", "catalog")])
def test_spark_submit_jobs_run_the_cli_code_path(job, command):
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / job), "--help"], capture_output=True,
                            text=True, check=True)
    assert f"usage: segscale {command}" in result.stdout


def test_a_corrupt_input_file_gives_one_paragraph_naming_it_and_exit_2(spark, tmp_path, capsys):
    """A file that is not Parquet at all fails while Spark plans the read, on the driver."""
    inputs = tmp_path / "in"
    for name in ("customers", "transactions"):
        (inputs / name).mkdir(parents=True)
        (inputs / name / "part-0.parquet").write_bytes(b"PAR1 this is not a parquet file")
    code = main(["run", "--input", str(inputs), "--warehouse", str(tmp_path / "wh"), "--snapshot-date", SNAPSHOT],
                spark=spark)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    error = err[err.index("segscale: error:"):]
    assert "parquet input at" in error and "customers/part-0.parquet" in error and "Could not read footer" in error
    assert not (tmp_path / "wh" / "customer_features").exists()


def test_a_truncated_data_file_fails_in_an_executor_as_one_paragraph_naming_it(spark, tmp_path):
    """A Delta input whose data file is truncated (a copy cut short) fails inside an executor task, not while
    Spark plans the read on the driver. In its own process (an embedded session, as a user runs it), so the
    executor's Java stack traces would show on its stderr if they reached the user."""
    inputs = write_inputs(spark, tmp_path / "in", "delta")
    for data_file in (inputs / "transactions").glob("*.parquet"):
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    drop_checksums(inputs)
    result = run_in_own_process(inputs, tmp_path)
    assert result.returncode == 2  # bad input
    assert "Traceback" not in result.stderr and "\tat org.apache" not in result.stderr
    error = result.stderr[result.stderr.index("segscale: error:"):]
    assert "transactions/" in error and ".parquet" in error and "truncated or corrupt" in error
    assert not (tmp_path / "wh" / "customer_features").exists()


def test_generate_writes_delta_inputs_and_ground_truth_that_run_reads(spark, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "--customers", "300", "--seed", "3", "--out", str(out)], spark=spark) == 0
    for name in ("customers", "transactions", "interactions", "customer_truth"):
        assert DeltaTable(str(out / name)).version() == 0, name
    assert DeltaTable(str(out / "customers")).to_pyarrow_table().num_rows == 300
    history = DeltaTable(str(out / "transactions")).history(1)[0]
    assert json.loads(history["userMetadata"])["stage"] == "generate transactions"
    assert main(["run", "--input", str(out), "--warehouse", str(tmp_path / "wh"), "--snapshot-date", "2024-12-31"],
                spark=spark) == 0
    assert DeltaTable(str(tmp_path / "wh" / "customer_features")).to_pyarrow_table().num_rows == 300


def test_generated_csv_holds_unparseable_timestamps_that_ingest_reads_as_null(spark, tmp_path):
    from segscale.io.inputs import read_inputs

    out = tmp_path / "gen"
    args = ["generate", "--customers", "800", "--out", str(out), "--format", "csv", "--dirty-rate", "0.05"]
    assert main(args, spark=spark) == 0
    text = "\n".join(p.read_text() for p in (out / "transactions").glob("*.csv"))
    assert "yesterday" in text and "2024-13-45T25:61:00Z" in text
    inputs = read_inputs(DeltaStore(spark, DeltaSettings(backend="delta-rs")), str(out))
    unreadable = inputs.transactions.where(F.col("ts").isNull()).count()
    assert 0 < unreadable < 0.05 * inputs.transactions.count()  # the dirty rows only


def partitions(warehouse: Path, table: str) -> list[str]:
    return sorted(p["snapshot_date"] for p in DeltaTable(str(warehouse / table)).partitions())


def test_backfill_runs_snapshots_in_order_and_skips_what_is_already_published(spark, tmp_path, capsys,
                                                                               monkeypatch):
    inputs, warehouse = write_inputs(spark, tmp_path / "in", "parquet"), tmp_path / "wh"
    days = ["2024-06-16", "2024-06-23", "2024-06-30"]

    def backfill(first: str, last: str, *extra: str) -> dict:
        assert main(["backfill", "--input", str(inputs), "--warehouse", str(warehouse), "--from", first, "--to",
                     last, "--every", "7d", "--summary-json", str(tmp_path / "b.json"), *extra], spark=spark) == 0
        return {s["snapshot_date"]: s["status"] for s in json.loads((tmp_path / "b.json").read_text())["snapshots"]}

    assert backfill(days[0], days[-1]) == dict.fromkeys(days, "published")
    assert partitions(warehouse, "customer_scores") == days
    migration = DeltaTable(str(warehouse / "segment_migration")).to_pyarrow_table().to_pylist()
    assert {(str(r["previous_snapshot_date"]), str(r["snapshot_date"])) for r in migration} == {
        (days[0], days[1]), (days[1], days[2])}  # in order: each snapshot compared with the one before
    runs = sorted(DeltaTable(str(warehouse / "runs")).to_pyarrow_table().to_pylist(), key=lambda r: r["started_at"])
    assert [str(r["snapshot_date"]) for r in runs] == days and {r["command"] for r in runs} == {"run"}

    assert backfill(days[0], days[-1]) == dict.fromkeys(days, "skipped")
    assert "already published with config" in capsys.readouterr().out
    # A later stage command on one snapshot, a config change or --force make it run again.
    assert main(["segment", "--warehouse", str(warehouse), "--snapshot-date", days[1]], spark=spark) == 0
    assert backfill(days[0], days[-1]) == {days[0]: "skipped", days[1]: "published", days[2]: "skipped"}
    monkeypatch.setenv("SEGSCALE_RFM__BINS", "4")
    assert backfill(days[2], days[2]) == {days[2]: "published"}
    assert backfill(days[2], days[2]) == {days[2]: "skipped"}
    assert backfill(days[2], days[2], "--force") == {days[2]: "published"}
    assert DeltaTable(str(warehouse / "customer_scores")).to_pyarrow_table().num_rows == 9  # 3 per snapshot


def test_backfill_stops_at_the_first_failure_with_its_exit_code(spark, tmp_path, capsys, monkeypatch):
    from segscale.errors import InputError
    from segscale.pipeline import commands as pipeline

    inputs = write_inputs(spark, tmp_path / "in", "parquet")
    real = pipeline.run_pipeline

    def failing_on_the_second(spark, settings, day, *args, **kwargs):
        if day == dt.date(2024, 6, 23):
            raise InputError("transactions are unreadable for this day")
        return real(spark, settings, day, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_pipeline", failing_on_the_second)
    code = main(["backfill", "--input", str(inputs), "--warehouse", str(tmp_path / "wh"), "--from", "2024-06-16",
                 "--to", "2024-06-30", "--every", "1w", "--summary-json", str(tmp_path / "b.json")], spark=spark)
    assert code == 2
    assert "transactions are unreadable for this day" in capsys.readouterr().err
    summary = json.loads((tmp_path / "b.json").read_text())["snapshots"]
    assert [(s["snapshot_date"], s["status"]) for s in summary] == [
        ("2024-06-16", "published"), ("2024-06-23", "failed"), ("2024-06-30", "not run")]
    assert "unreadable" in summary[1]["error"]
    assert partitions(tmp_path / "wh", "customer_scores") == ["2024-06-16"]


@pytest.mark.parametrize(("args", "message"), [
    (["--every", "0d"], "is not an interval"),
    (["--every", "weekly"], "is not an interval"),
    (["--from", "2024-06-30", "--to", "2024-06-01"], "is before --from"),
])
def test_backfill_refuses_a_bad_range(tmp_path, capsys, args, message):
    base = {"--from": "2024-06-01", "--to": "2024-06-30"}
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["backfill", "--input", str(tmp_path), "--warehouse", str(tmp_path / "wh")]
    for flag, value in {**base, **pairs}.items():
        argv += [flag, value]
    with pytest.raises(SystemExit) if "interval" in message else contextlib.nullcontext():
        assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "wh").exists()


def test_a_csv_input_with_another_delimiter_names_the_file(spark, tmp_path, capsys):
    inputs = write_inputs(spark, tmp_path / "in", "csv")
    for part in (inputs / "customers").glob("*.csv"):
        part.write_text(part.read_text().replace(",", ";"))
    drop_checksums(inputs)
    assert run_command(spark, inputs, tmp_path / "wh", SNAPSHOT) == 2
    err = capsys.readouterr().err
    assert "is not comma-separated" in err and "semicolons" in err and "customers/part-" in err
    assert not (tmp_path / "wh").exists() or not (tmp_path / "wh" / "customer_features").exists()


def test_a_csv_input_that_is_not_utf8_names_the_file(spark, tmp_path, capsys):
    inputs = write_inputs(spark, tmp_path / "in", "csv")
    part = next(p for p in sorted((inputs / "customers").glob("*.csv")) if p.read_text().count("\n") > 1)
    text = part.read_text().replace("north", "Zürich", 1)
    part.write_bytes(text.encode("latin-1"))
    drop_checksums(inputs)
    assert run_command(spark, inputs, tmp_path / "wh", SNAPSHOT) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and part.name in err
    assert not (tmp_path / "wh" / "customer_features").exists()


def test_a_snapshot_command_without_a_date_scores_yesterday_in_utc(spark, tmp_path, monkeypatch):
    import segscale.cli.app as cli

    seen = []

    def job(spark, settings, snapshot_date, run, **options):
        seen.append(snapshot_date)
        return run.summary("succeeded")

    monkeypatch.setattr(cli, "run_pipeline", job)
    before = dt.datetime.now(dt.UTC).date()
    assert main(["run", "--input", str(tmp_path), "--warehouse", str(tmp_path / "wh")], spark=spark) == 0
    after = dt.datetime.now(dt.UTC).date()
    assert seen[0] in {before - dt.timedelta(days=1), after - dt.timedelta(days=1)}
