"""The Typer CLI accepts and refuses what the argparse CLI before it did: the same flags per command with the same
defaults, the same messages and exit codes for bad arguments, the same --summary-json; and what it prints: the
summary's tables, plain when not on a terminal, and the stage progress only on a terminal."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re

import pytest
import typer
from rich.console import Console
from rich.progress import Progress

import segscale.cli.app as cli
from segscale.cli import progress
from segscale.cli.app import main, parse
from segscale.cli.summary import format_summary, show, summary_view
from segscale.config import Settings
from segscale.errors import ConfigError
from segscale.pipeline.context import Published, Run

# Every flag of every command as the argparse CLI declared it (read off its parser before it was replaced), and
# its positional arguments.
ARGPARSE_FLAGS = {
    "generate": (["-h", "--help", "--config", "--debug", "--customers", "--seed", "--out", "--start", "--end",
                  "--dirty-rate", "--format"], []),
    "run": (["-h", "--help", "--config", "--debug", "--input", "--warehouse", "--snapshot-date", "--summary-json",
             "--train", "--strict"], []),
    "validate": (["-h", "--help", "--config", "--debug", "--input", "--warehouse", "--snapshot-date",
                  "--summary-json"], []),
    "features": (["-h", "--help", "--config", "--debug", "--input", "--warehouse", "--snapshot-date",
                  "--summary-json"], []),
    "segment": (["-h", "--help", "--config", "--debug", "--warehouse", "--snapshot-date", "--summary-json"], []),
    "plan": (["-h", "--help", "--config", "--debug", "--warehouse", "--snapshot-date", "--summary-json"], []),
    "backfill": (["-h", "--help", "--config", "--debug", "--input", "--warehouse", "--summary-json", "--from", "--to",
                  "--every", "--force", "--strict"], []),
    "score": (["-h", "--help", "--config", "--debug", "--warehouse", "--snapshot-date", "--summary-json",
               "--model-version"], []),
    "train": (["-h", "--help", "--config", "--debug", "--input", "--warehouse", "--snapshot-date",
               "--summary-json"], []),
    "promote": (["-h", "--help", "--config", "--debug", "--model", "--warehouse", "--version", "--reason"], []),
    "history": (["-h", "--help", "--config", "--debug", "--warehouse", "--limit"], ["table"]),
    "sql": (["-h", "--help", "--config", "--debug", "--warehouse", "--version", "--as-of", "--run-id", "--snapshot",
             "--format", "--out"], ["query"]),
    "report": (["-h", "--help", "--config", "--debug", "--warehouse", "--snapshot", "--out", "--as-of", "--run-id"],
               []),
    "vacuum": (["-h", "--help", "--config", "--debug", "--warehouse", "--retention-hours", "--dry-run"], ["table"]),
    "maintain": (["-h", "--help", "--config", "--debug", "--warehouse", "--summary-json"], []),
    "treat": (["-h", "--help", "--config", "--debug", "--input", "--warehouse", "--snapshot-date"], []),
    "catalog": (["-h", "--help", "--config", "--debug", "--warehouse"], []),
}


def declared(command: str) -> tuple[set[str], list[str]]:
    root = typer.main.get_command(cli.app)
    sub = root.commands[command]
    params = sub.get_params(typer.Context(sub, parent=typer.Context(root, **root.context_settings)))  # and -h
    flags = {name for p in params if p.param_type_name == "option" for name in p.opts + p.secondary_opts}
    return flags, [p.name for p in params if p.param_type_name == "argument"]


@pytest.mark.parametrize("command", list(ARGPARSE_FLAGS))
def test_each_command_has_the_flags_it_had_and_its_help_lists_them(command, capsys):
    flags, positionals = ARGPARSE_FLAGS[command]
    assert declared(command) == (set(flags), positionals)
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    assert f"usage: segscale {command}" in listing
    for flag in flags:
        assert re.search(rf"(^|\s){re.escape(flag)}(\s|$)", listing, flags=re.MULTILINE), flag
    with pytest.raises(SystemExit) as exit_info:
        main([command, "-h"])
    assert exit_info.value.code == 0 and f"usage: segscale {command}" in capsys.readouterr().out


def test_the_top_level_has_its_flags_and_version(capsys):
    root = typer.main.get_command(cli.app)
    assert {n for p in root.get_params(typer.Context(root, **root.context_settings)) for n in p.opts} == {
        "-h", "--help", "--config", "--debug", "--version"}
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and re.fullmatch(r"segscale \S+\n", capsys.readouterr().out)


@pytest.mark.parametrize(("argv", "values"), [
    (["generate", "--out", "o"], {"out": "o", "customers": None, "seed": None, "start": None, "end": None,
                                  "dirty_rate": None, "format": None, "config": None, "debug": False}),
    (["run"], {"input": None, "warehouse": None, "snapshot_date": None, "summary_json": None, "train": False,
               "strict": False}),
    (["backfill", "--from", "2024-06-01", "--to", "2024-06-30"], {
        "first": dt.date(2024, 6, 1), "last": dt.date(2024, 6, 30), "every": 1, "force": False, "strict": False}),
    (["backfill", "--from", "2024-06-01", "--to", "2024-06-30", "--every", "2w"], {"every": 14}),
    (["promote", "--version", "3", "--reason", "r"], {"model": "churn", "model_version": 3, "reason": "r"}),
    (["sql", "SELECT 1"], {"query": "SELECT 1", "output_format": "table", "table_version": None, "as_of": None,
                           "run_id": None}),
    (["sql", "SELECT 1", "--run-id", "r1"], {"run_id": "r1"}),
    (["sql", "SELECT 1", "--as-of", "2024-12-31T08:00:00"], {
        "as_of": dt.datetime(2024, 12, 31, 8, tzinfo=dt.UTC)}),
    (["report"], {"out": "report.html", "snapshot": None, "run_id": None, "as_of": None}),
    (["vacuum", "t", "--retention-hours", "0", "--dry-run"], {"table": "t", "retention_hours": 0.0, "dry_run": True}),
    (["score", "--model-version", "2", "--snapshot-date", "2024-06-30"], {
        "model_version": 2, "snapshot_date": dt.date(2024, 6, 30)}),
    # argparse took any unique prefix of a long flag, and --flag=value
    (["run", "--snap", "2024-06-30", "--summary=s.json"], {"snapshot_date": dt.date(2024, 6, 30),
                                                           "summary_json": "s.json"}),
    (["history", "--lim", "3", "customer_features"], {"table": "customer_features", "limit": 3}),
])
def test_flags_parse_to_the_values_and_defaults_argparse_gave(argv, values):
    command, parsed = parse(argv)
    assert command == argv[0]
    assert {key: parsed[key] for key in values} == values


# (arguments, the last line argparse printed on stderr); every one exited 2.
ARGPARSE_ERRORS = [
    (["run", "--snapshot-date", "2024-02-30"],
     "segscale run: error: argument --snapshot-date: '2024-02-30' is not a date in YYYY-MM-DD form"),
    (["report", "--snapshot", "x"],
     "segscale report: error: argument --snapshot: 'x' is not a date in YYYY-MM-DD form"),
    (["run", "--bogus"], "segscale: error: unrecognized arguments: --bogus"),
    (["--bogus", "run"], "segscale: error: unrecognized arguments: --bogus"),
    (["run", "--snap", "2024-01-01", "--bogus", "--other"], "segscale: error: unrecognized arguments: --bogus --other"),
    (["run", "--input", "x", "extra"], "segscale: error: unrecognized arguments: extra"),
    (["run", "--s", "x"],
     "segscale run: error: ambiguous option: --s could match --snapshot-date, --summary-json, --strict"),
    (["generate"], "segscale generate: error: the following arguments are required: --out"),
    (["backfill"], "segscale backfill: error: the following arguments are required: --from, --to"),
    (["backfill", "--from", "2024-01-01"], "segscale backfill: error: the following arguments are required: --to"),
    (["promote", "--reason", "r"], "segscale promote: error: the following arguments are required: --version"),
    (["sql"], "segscale sql: error: the following arguments are required: query"),
    (["history"], "segscale history: error: the following arguments are required: table"),
    (["generate", "--out", "o", "--customers", "many"],
     "segscale generate: error: argument --customers: invalid int value: 'many'"),
    (["generate", "--out", "o", "--dirty-rate", "lots"],
     "segscale generate: error: argument --dirty-rate: invalid float value: 'lots'"),
    (["vacuum", "t", "--retention-hours", "x"],
     "segscale vacuum: error: argument --retention-hours: invalid float value: 'x'"),
    (["generate", "--out", "o", "--format", "orc"],
     "segscale generate: error: argument --format: invalid choice: 'orc' (choose from 'delta', 'parquet', 'csv')"),
    (["promote", "--version", "1", "--reason", "r", "--model", "x"],
     "segscale promote: error: argument --model: invalid choice: 'x' (choose from 'churn', 'clv')"),
    (["backfill", "--from", "2024-01-01", "--to", "2024-01-02", "--every", "0d"],
     "segscale backfill: error: argument --every: '0d' is not an interval like 1d, 7d or 2w"),
    (["sql", "select 1", "--as-of", "yesterday"],
     "segscale sql: error: argument --as-of: 'yesterday' is not an ISO 8601 time like 2024-12-31T08:00:00"),
    (["sql", "select 1", "--version", "1", "--as-of", "2024-01-01"],
     "segscale sql: error: argument --as-of: not allowed with argument --version"),
    (["sql", "select 1", "--version", "1", "--run-id", "r1"],
     "segscale sql: error: argument --run-id: not allowed with argument --version"),
    (["report", "--run-id", "r1", "--as-of", "2024-01-01"],
     "segscale report: error: argument --run-id: not allowed with argument --as-of"),
    (["nosuch"], "segscale: error: argument COMMAND: invalid choice: 'nosuch' (choose from 'generate', 'treat', 'run', "
                 "'validate', 'features', 'segment', 'plan', 'backfill', 'score', 'train', 'promote', 'history', "
                 "'sql', 'report', 'vacuum', 'maintain', 'catalog', 'jars')"),
    ([], "segscale: error: the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize(("argv", "message"), ARGPARSE_ERRORS)
def test_a_bad_argument_exits_2_with_argparse_s_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: segscale") and err[-1] == message


def test_config_and_debug_count_before_the_command_name_too(monkeypatch, capsys):
    seen = []

    def refuse(config, overrides):
        seen.append((config, overrides))
        raise ConfigError("refused")

    monkeypatch.setattr(cli, "load_settings", refuse)
    assert main(["--config", "a.yaml", "promote", "--version", "1", "--reason", "r", "--warehouse", "wh"]) == 2
    assert main(["promote", "--config", "b.yaml", "--version", "1", "--reason", "r"]) == 2
    assert seen == [("a.yaml", {"paths.warehouse": "wh"}), ("b.yaml", {})]
    assert "(run again with --debug" in capsys.readouterr().err
    assert main(["--debug", "promote", "--version", "1", "--reason", "r"]) == 2
    assert "(run again with --debug" not in capsys.readouterr().err


def summary_of(run: Run) -> dict:
    with run.stage("features") as stage:
        stage.published["customer_features"] = Published(3, 7)
    run.warn("tiers on monetary")
    return run.summary("succeeded")


def test_summary_json_is_the_run_summary_and_a_failure_s_summary_names_its_stage(spark, tmp_path, monkeypatch,
                                                                                capsys):
    def job(spark, settings, snapshot_date, run, **options):
        return summary_of(run)

    monkeypatch.setattr(cli, "run_pipeline", job)
    out = tmp_path / "s.json"
    assert main(["run", "--warehouse", str(tmp_path / "wh"), "--snapshot-date", "2024-06-30", "--summary-json",
                 str(out)], spark=spark) == 0
    summary = json.loads(out.read_text())
    assert set(summary) == {"run_id", "command", "status", "snapshot_date", "config_hash", "package_version",
                            "stages", "models", "warnings"}
    assert summary["stages"]["features"]["published"] == {"customer_features": {"rows": 3, "version": 7}}
    assert (summary["command"], summary["status"], summary["snapshot_date"]) == ("run", "succeeded", "2024-06-30")
    assert out.read_text() == json.dumps(summary, indent=2)  # indented as before
    assert format_summary(summary) in capsys.readouterr().out

    def failing(spark, settings, snapshot_date, run, **options):
        with run.stage("segment"):
            raise RuntimeError("boom")

    monkeypatch.setattr(cli, "run_pipeline", failing)
    assert main(["segment", "--warehouse", str(tmp_path / "wh"), "--snapshot-date", "2024-06-30", "--summary-json",
                 str(out)], spark=spark) == 1
    failed = json.loads(out.read_text())
    assert (failed["status"], failed["failed_stage"], failed["command"]) == ("failed", "segment", "segment")
    assert "segscale: error: segment failed: boom" in capsys.readouterr().err


SUMMARY = {
    "run_id": "20240701T000000Z-abcd1234", "command": "run", "status": "succeeded", "snapshot_date": "2024-06-30",
    "config_hash": "0123456789abcdef", "package_version": "0",
    "stages": {
        "validate": {"tables": {"transactions": {"rows": 1200, "bad": {"duplicate_transaction_id": 3,
                                                                        "negative_amount": 1}}},
                     "published": {"quarantine": {"rows": 4, "version": 2}}, "seconds": 1.25},
        "features": {"published": {"customer_features": {"rows": 300, "version": 5}}, "seconds": 12.5},
        "segment": {"rfm_cut_points": {"recency": [10.0, 30.5], "frequency": []},
                    "tiers_by_stage": {"high_value": {"loyal": 40, "repeat": 10}, "regular": {"churned": 1250}},
                    "published": {"customer_scores": {"rows": 300, "version": 5}}, "seconds": 3.0},
        "migration": {"previous_snapshot": "2024-03-31", "next_snapshot": "2024-09-30",
                      "next_published": {"rows": 12, "version": 4}, "seconds": 0.25},
        "outcomes": {"measured": {"2024-03-31": {"high_value": {
            "treatment": "dedicated_account_manager", "customers_treated": 45, "customers_controlled": 5,
            "incremental_retention": 0.125, "incremental_retention_low": -0.05, "incremental_retention_high": 0.31,
            "realized_uplift": 0.4, "learned_uplift": 0.32}}}, "waiting": [], "uplifts": {}, "seconds": 0.4},
        "plan": {"retention": {"customers_targeted": 50, "customers_controlled": 6, "spend": 1000.0,
                               "budget": 2000.0, "expected_saved_value": 4321.5,
                               "uplifts": {"high_value": {"uplift": 0.32, "source": "learned", "plans": ["2024-03-31"]},
                                           "regular": {"uplift": 0.03, "source": "configured", "plans": []}},
                               "tiers": {"high_value": {"treatment": "dedicated_account_manager", "candidates": 60,
                                                        "customers_targeted": 50, "customers_controlled": 6,
                                                        "spend": 1000.0, "share_of_budget": 0.5,
                                                        "expected_saved_value": 4321.5, "roi": 4.32,
                                                        "tier_budget": None, "capacity": 50},
                                         "regular": {"treatment": "none", "candidates": 0, "customers_targeted": 0,
                                                     "customers_controlled": 0, "spend": 0.0,
                                                     "share_of_budget": None, "expected_saved_value": 0.0,
                                                     "roi": 0.0, "tier_budget": None, "capacity": None}}},
                 "seconds": 0.5},
    },
    "models": {"churn": {"status": "skipped", "version": None, "skipped": "too few churned buyers"}},
    "warnings": ["churn model skipped: too few churned buyers"],
}


def rows(text: str, first: str) -> list[str]:
    """The cells of the line that starts with `first` (after indentation)."""
    line = next(line for line in text.splitlines() if line.split()[:1] == [first])
    return line.split()


def test_the_summary_puts_stages_inputs_tiers_and_the_plan_in_tables():
    text = format_summary(SUMMARY)
    assert text.splitlines()[0] == ("segscale run succeeded: snapshot 2024-06-30, run 20240701T000000Z-abcd1234, "
                                    "config 0123456789abcdef")
    assert rows(text, "features") == ["features", "12.5", "customer_features", "300", "5"]
    assert rows(text, "validate") == ["validate", "1.2", "quarantine", "4", "2"]
    assert rows(text, "transactions") == ["transactions", "1,200", "1,196", "duplicate_transaction_id", "3,",
                                          "negative_amount", "1"]
    assert rows(text, "recency") == ["recency", "10,", "30.5"] and rows(text, "frequency") == ["frequency", "(one",
                                                                                                 "bin)"]
    assert rows(text, "high_value")[:9] == ["high_value", "高价值", "0", "0", "10", "40", "0", "0", "50"]
    assert rows(text, "regular")[:9] == ["regular", "普通", "0", "0", "0", "0", "0", "1,250", "1,250"]
    assert ("retention plan: 50 customers treated, 6 held out as control, spend 1,000.00 of budget 2,000.00, "
            "expected saved value 4,321.50") in text
    plan_line = [line for line in text.splitlines() if line.startswith("high_value") and "learned" in line][0].split()
    assert plan_line == ["high_value", "dedicated_account_manager", "0.320", "learned", "60", "50", "6", "1,000.00",
                         "50.0%", "capacity", "50", "4,321.50", "4.32"]
    untargeted = [line for line in text.splitlines() if " none " in line][0].split()
    assert untargeted == ["regular", "none", "0.030", "config", "0", "0", "0", "0.00", "-", "-", "0.00", "0.00"]
    measured = [line for line in text.splitlines() if line.startswith("2024-03-31")][0].split()
    assert measured == ["2024-03-31", "high_value", "dedicated_account_manager", "45", "5", "+12.5%", "-5.0%", "to",
                        "+31.0%", "0.400", "0.320"]
    assert "migration from 2024-03-31; the migration of 2024-09-30 recomputed from this snapshot" in text
    assert rows(text, "churn")[:2] == ["churn", "no"] and "training skipped: too few churned buyers" in text
    assert "warnings (1)" in text and "  - churn model skipped: too few churned buyers" in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_off_a_terminal_the_summary_prints_as_its_plain_text(capsys):
    show(summary_view(SUMMARY))
    out = capsys.readouterr().out
    assert out == format_summary(SUMMARY) + "\n" and "\x1b[" not in out


def test_stage_progress_follows_the_pipeline_s_stage_records(caplog):
    # setLevel (not a plain attribute) so the logger's cache of enabled levels from earlier tests is cleared.
    caplog.set_level(logging.INFO, logger="segscale.pipeline.context")
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    display = Progress(console=console)
    stages = progress.StageProgress(display)
    logging.getLogger("segscale.pipeline.context").addHandler(stages)
    try:
        run = Run("run", Settings(), dt.date(2024, 6, 30))
        with run.stage("validate"):
            task = display.tasks[0]
            assert (task.description, task.finished) == ("validate", False)
        assert display.tasks[0].finished
        with run.stage("features"):
            pass
        with run.stage("validate"):  # the next snapshot of a backfill starts the row over
            assert not display.tasks[0].finished and len(display.tasks) == 2
    finally:
        logging.getLogger("segscale.pipeline.context").removeHandler(stages)
    assert [(t.description, t.finished) for t in display.tasks] == [("validate", True), ("features", True)]


def test_progress_is_shown_only_on_a_terminal(capsys):
    assert progress.stderr_console() is None  # pytest captures stderr: not a terminal
    with progress.shown(None, logging.INFO) as stages:
        assert stages is None
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    context_log = logging.getLogger("segscale.pipeline.context")
    with progress.shown(console, logging.INFO) as stages:
        assert stages in context_log.handlers
    assert stages not in context_log.handlers
