"""The `segscale` command line (Typer). Each command takes its flags, builds settings and the session, and calls
the package; `jobs/*.py` reuse `main` so spark-submit runs the same code path. What the commands print is in
`cli.summary`, the stage display in `cli.progress`, the argparse-compatible argument handling in `cli.parsing`."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer
import yaml
from pyspark.logger import PySparkLogger
from pyspark.sql import SparkSession
from typer._click.exceptions import UsageError

from segscale import __version__, catalog
from segscale.analyst.report import write_report
from segscale.analyst.sql import FORMATS, run_query, write_result
from segscale.cli import progress
from segscale.cli.parsing import (
    DATE,
    DAYS,
    FLOAT,
    HELP_OPTIONS,
    INT,
    TIMESTAMP,
    ArgumentError,
    Command,
    Group,
    choice,
    report_usage_error,
)
from segscale.cli.summary import (
    format_summary,
    history_view,
    maintenance_view,
    registration_view,
    show,
    stages_view,
    summary_view,
    training_view,
)
from segscale.config import Settings, load_settings
from segscale.errors import DegradedRunError, InputError, SegscaleError, describe_exception, unreadable_input
from segscale.io.delta import Warehouse
from segscale.models import registry
from segscale.pipeline.commands import (
    Run,
    backfill,
    generate_inputs,
    maintain,
    run_pipeline,
    score_snapshot,
    snapshot_dates,
    train_models,
    treat_plan,
)
from segscale.session import fetch_delta_jars, get_spark, spark_sql_command, under_spark_submit

__all__ = ["app", "format_summary", "main", "parse"]

log = logging.getLogger("segscale")

app = typer.Typer(
    name="segscale", cls=Group, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_OPTIONS},
    help="Score a whole customer base on Spark and publish the answers as versioned Delta tables.")


@dataclass(frozen=True)
class Invocation:
    """What `main` hands every command: the Spark session a caller injected, if any."""

    spark: SparkSession | None = None


# ---- flags shared by several commands -----------------------------------------------------------------------
Config = Annotated[str | None, typer.Option(
    "--config", metavar="CONFIG", help="YAML config file (default: $SEGSCALE_CONFIG, else conf/local.yaml if "
                                       "present); conf/base.yaml beside it is loaded first")]
Debug = Annotated[bool, typer.Option("--debug", help="show the Python traceback of a failure")]
Input = Annotated[str | None, typer.Option(
    "--input", metavar="INPUT", help="directory holding customers/, transactions/, interactions/")]
Warehouse_ = Annotated[str | None, typer.Option(
    "--warehouse", metavar="WAREHOUSE", help="directory (or URI) of the published Delta tables (the default MLflow "
                                             "store sits beside it)")]
SnapshotDate = Annotated[dt.date | None, typer.Option(
    "--snapshot-date", parser=DATE, metavar="YYYY-MM-DD",
    help="snapshot date YYYY-MM-DD, end of day UTC inclusive (default: yesterday, UTC)")]
SummaryJson = Annotated[str | None, typer.Option(
    "--summary-json", metavar="FILE", help="write the summary (JSON) to this file, also when the command fails")]
Strict = Annotated[bool, typer.Option(
    "--strict", help="exit 4 when a model the data cannot support was skipped (the run still publishes "
                     "everything else); without it such a run exits 0 with warnings")]
TableWarehouse = Annotated[str | None, typer.Option(
    "--warehouse", metavar="WAREHOUSE", help="warehouse directory (default from config)")]
Table = Annotated[str, typer.Argument(help="table name, e.g. customer_features",
                                      show_default=False)]
# What the analyst commands read: the tables as the newest completed run left them, or as an older one did.
AsOf = Annotated[dt.datetime | None, typer.Option(
    "--as-of", parser=TIMESTAMP, metavar="TIME",
    help="read the tables as the last run completed by this time left them (ISO 8601; UTC if no offset is given)")]
RunId = Annotated[str | None, typer.Option(
    "--run-id", metavar="RUN_ID", help="read the tables as this succeeded run left them (default: the newest)")]


def _one_run(ctx: typer.Context, as_of: dt.datetime | None, run_id: str | None) -> None:
    if as_of is not None and run_id is not None:
        raise ArgumentError("argument --run-id: not allowed with argument --as-of", ctx)


def _print_version(value: bool) -> None:
    if value:
        print(f"segscale {__version__}")
        raise typer.Exit()


@app.callback()
def segscale(
    config: Config = None,
    debug: Debug = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="show the version and exit")] = False,
) -> None:
    """Score a whole customer base on Spark and publish the answers as versioned Delta tables."""


# ---- running a command ---------------------------------------------------------------------------------------
_FLAG_KEYS = {
    "input": "paths.input",
    "warehouse": "paths.warehouse",
    "customers": "generate.customers",
    "seed": "generate.seed",
    "start": "generate.start",
    "end": "generate.end",
    "dirty_rate": "generate.dirty_rate",
    "format": "generate.format",
}

Job = Callable[[SparkSession | None, Settings], int]


def _execute(ctx: typer.Context, job: Job, *, needs_spark: bool = True, metastore: bool = False) -> int:
    """Run `job` with the settings (config file, environment, flags) and, when it `needs_spark`, the session (an
    embedded one attached to the metastore with `metastore`); a failure becomes one paragraph on stderr and its exit
    code."""
    root = ctx.find_root()
    command = ctx.info_name
    # --config and --debug count before the command's name as after it.
    config = ctx.params.get("config") or root.params.get("config")
    debug = bool(ctx.params.get("debug") or root.params.get("debug"))
    level = logging.DEBUG if debug else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # PySpark logs every analysis error with its traceback, also one segscale reports as a one-paragraph error.
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)
    spark = ctx.obj.spark if isinstance(ctx.obj, Invocation) else None
    # A session that was already running (a notebook, a test) belongs to its owner: never stop it.
    owns_session = spark is None and SparkSession.getActiveSession() is None
    overrides = {key: ctx.params[flag] for flag, key in _FLAG_KEYS.items() if ctx.params.get(flag) is not None}
    try:
        with progress.shown(progress.stderr_console() if needs_spark else None, level):
            settings = load_settings(config, overrides)
            log.log(logging.INFO if needs_spark else logging.DEBUG,
                    "segscale %s %s, effective config (hash %s):\n%s", __version__, command, settings.config_hash(),
                    yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=True, default_flow_style=None,
                                   width=120))
            if spark is None and needs_spark:
                spark = get_spark(settings, metastore=metastore)
            return job(spark, settings)
    except SegscaleError as exc:
        return _fail(command, debug, exc.exit_code, str(exc))
    except Exception as exc:  # anything else: one paragraph, the cause, exit 1
        unreadable = unreadable_input(exc)
        if unreadable is not None:
            return _fail(command, debug, unreadable.exit_code, str(unreadable))
        return _fail(command, debug, 1, f"{command} failed: {describe_exception(exc)}")
    finally:
        if owns_session and spark is not None:
            spark.stop()


def _fail(command: str, debug: bool, code: int, message: str) -> int:
    if debug:
        log.exception("segscale %s failed", command)
    print(f"segscale: error: {message}", file=sys.stderr)
    if not debug:
        print("(run again with --debug for the full traceback)", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, spark: SparkSession | None = None) -> int:
    """Run one command; returns the exit code. `spark` may be injected (tests); otherwise it is built. As with
    argparse, `--help` and `--version` exit 0 and a usage error exits 2 (SystemExit)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        with command.make_context("segscale", args, obj=Invocation(spark)) as ctx:
            return command.invoke(ctx)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except UsageError as exc:
        raise SystemExit(report_usage_error(exc)) from None


def parse(argv: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The command `argv` names and its flags' values, without running it; a usage error exits 2 as in `main`."""
    command = typer.main.get_command(app)
    try:
        with command.make_context("segscale", list(argv), resilient_parsing=False) as ctx:
            name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
            with sub.make_context(name, rest, parent=ctx) as sub_ctx:
                return name, dict(sub_ctx.params)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except UsageError as exc:
        raise SystemExit(report_usage_error(exc)) from None


# ---- generate ------------------------------------------------------------------------------------------------
@app.command("generate", cls=Command, short_help="generate synthetic input tables",
             help="Generate customers, transactions, interactions and the generator's ground truth in parallel on "
                  "the executors.")
def generate(
    ctx: typer.Context,
    out: Annotated[str, typer.Option("--out", metavar="OUT", help="output directory (one sub-directory per table)",
                                     show_default=False)],
    customers: Annotated[int | None, typer.Option(
        "--customers", parser=INT, metavar="N", help="number of customers (default from config: 20000)")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", parser=INT, metavar="SEED", help="random seed; the same seed gives the same tables")] = None,
    start: Annotated[dt.date | None, typer.Option(
        "--start", parser=DATE, metavar="YYYY-MM-DD", help="first day of history (YYYY-MM-DD)")] = None,
    end: Annotated[dt.date | None, typer.Option(
        "--end", parser=DATE, metavar="YYYY-MM-DD", help="last day of history (YYYY-MM-DD)")] = None,
    dirty_rate: Annotated[float | None, typer.Option(
        "--dirty-rate", parser=FLOAT, metavar="RATE", help="share of deliberately bad rows (0..1)")] = None,
    format: Annotated[str | None, typer.Option(  # noqa: A002 (the flag's name)
        "--format", parser=choice("delta", "parquet", "csv"), metavar="{delta,parquet,csv}",
        help="format of the input tables")] = None,
    config: Config = None,
    debug: Debug = False,
) -> int:
    def job(spark: SparkSession, settings: Settings) -> int:
        show(stages_view(generate_inputs(spark, settings, out)))
        return 0
    return _execute(ctx, job)


@app.command("treat", cls=Command, short_help="carry out a published plan on generated input (simulation)",
             help="Simulate carrying out the retention plan of --snapshot-date on input made by segscale generate: "
                  "each plan customer is saved with their tier's true effect (generate.treatment_effects), a saved "
                  "treated customer who would not have bought within churn.horizon_days gets one purchase, and the "
                  "treated group is recorded in INPUT/treatments; INPUT/treatment_truth holds every customer's "
                  "potential outcomes. A later segscale run measures the plan. Refused on input without the "
                  "generator's ground truth, and for a plan already carried out.")
def treat(ctx: typer.Context, input: Input = None, warehouse: Warehouse_ = None,  # noqa: A002 (the flag's name)
          snapshot_date: SnapshotDate = None, config: Config = None, debug: Debug = False) -> int:
    def job(spark: SparkSession, settings: Settings) -> int:
        show(stages_view(treat_plan(spark, settings, snapshot_date or _yesterday())))
        return 0
    return _execute(ctx, job)


# ---- the snapshot commands -----------------------------------------------------------------------------------
def _snapshot_job(job: Callable[..., dict[str, Any]], spark: SparkSession, settings: Settings, command: str,
                  snapshot_date: dt.date | None, summary_json: str | None) -> dict[str, Any]:
    """Run `job` for the snapshot (yesterday, UTC, by default); --summary-json gets the summary, also when the job
    fails."""
    snapshot = snapshot_date or _yesterday()
    return _summarised(Run(command, settings, snapshot), summary_json,
                       lambda run: job(spark, settings, snapshot, run))


def _summarised(run: Run, summary_json: str | None, job: Callable[[Run], dict[str, Any]]) -> dict[str, Any]:
    """`job(run)`'s summary; --summary-json gets it, also when the job fails."""
    try:
        summary = job(run)
    except Exception:
        if summary_json:
            _write_json(summary_json, run.summary("failed"))
        raise
    if summary_json:
        _write_json(summary_json, summary)
    return summary


def _yesterday() -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


def _write_json(path: str, summary: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, default=str)


def _refuse_skipped_models(summary: dict[str, Any]) -> None:
    """--strict: DegradedRunError (exit 4) when the run skipped a model the data could not support."""
    skipped = {kind: outcome["skipped"] for kind, outcome in summary.get("models", {}).items() if outcome["skipped"]}
    if skipped:
        raise DegradedRunError(
            f"snapshot {summary['snapshot_date']} was published without a model the data could not support "
            f"(--strict): " + "; ".join(f"{kind}: {reason}" for kind, reason in skipped.items()))


def _pipeline_job(ctx: typer.Context, snapshot_date: dt.date | None, summary_json: str | None, *,
                  train: bool = False, strict: bool = False) -> int:
    """`run` and its one-stage commands: the stages of the command's graph, then the summary."""
    def job(spark: SparkSession, settings: Settings) -> int:
        summary = _snapshot_job(functools.partial(run_pipeline, train=train), spark, settings, ctx.info_name,
                                snapshot_date, summary_json)
        show(summary_view(summary))
        if strict:
            _refuse_skipped_models(summary)
        return 0
    return _execute(ctx, job)


@app.command("run", cls=Command,
             short_help="run the main job for one snapshot: validate, \\[train], features, segment and score, plan",
             help="Read the inputs, validate them (bad rows to quarantine), publish customer_features, then "
                  "customer_scores (churn and CLV from the champion models) and segment_migration, then "
                  "retention_outcomes (earlier plans whose horizon has passed, and the uplift learned from them), "
                  "retention_plan, retention_summary and tier_economics for the snapshot. Trains a model first "
                  "with --train or when it has no champion.")
def run(
    ctx: typer.Context,
    input: Input = None,  # noqa: A002 (the flag's name)
    warehouse: Warehouse_ = None,
    snapshot_date: SnapshotDate = None,
    summary_json: SummaryJson = None,
    train: Annotated[bool, typer.Option(
        "--train", help="train the churn model (with the promotion gate) and fit the CLV model before scoring")
    ] = False,
    strict: Strict = False,
    config: Config = None,
    debug: Debug = False,
) -> int:
    return _pipeline_job(ctx, snapshot_date, summary_json, train=train, strict=strict)


@app.command("validate", cls=Command, short_help="validate the inputs and publish the snapshot's quarantine",
             help="Check every input row; bad rows go to the quarantine table with a reason code.")
def validate(ctx: typer.Context, input: Input = None, warehouse: Warehouse_ = None,  # noqa: A002
             snapshot_date: SnapshotDate = None, summary_json: SummaryJson = None, config: Config = None,
             debug: Debug = False) -> int:
    return _pipeline_job(ctx, snapshot_date, summary_json)


@app.command("features", cls=Command, short_help="validate, then publish customer_features for the snapshot",
             help="Validate the inputs and compute one row of features per customer as of the snapshot.")
def features(ctx: typer.Context, input: Input = None, warehouse: Warehouse_ = None,  # noqa: A002
             snapshot_date: SnapshotDate = None, summary_json: SummaryJson = None, config: Config = None,
             debug: Debug = False) -> int:
    return _pipeline_job(ctx, snapshot_date, summary_json)


@app.command("segment", cls=Command,
             short_help="publish customer_scores and segment_migration from published features",
             help="RFM scores and segments, value tiers, lifecycle stages, churn scores and CLV (champion models) "
                  "from the snapshot's published customer_features, and migration from the previous snapshot.")
def segment(ctx: typer.Context, warehouse: Warehouse_ = None, snapshot_date: SnapshotDate = None,
            summary_json: SummaryJson = None, config: Config = None, debug: Debug = False) -> int:
    return _pipeline_job(ctx, snapshot_date, summary_json)


@app.command("plan", cls=Command, short_help="publish the retention plan from published customer_scores",
             help="Rank the snapshot's scored customers by expected saved value per unit cost of their tier's "
                  "treatment, select them within retention.budget, and publish retention_plan and "
                  "retention_summary.")
def plan(ctx: typer.Context, warehouse: Warehouse_ = None, snapshot_date: SnapshotDate = None,
         summary_json: SummaryJson = None, config: Config = None, debug: Debug = False) -> int:
    return _pipeline_job(ctx, snapshot_date, summary_json)


@app.command("backfill", cls=Command, short_help="run the main job for a range of snapshots, in order",
             help="Run the main job (like segscale run) for every snapshot from --from to --to, --every days "
                  "apart, oldest first, so each snapshot's migration compares with the one before. A snapshot "
                  "whose newest publishing run is a successful run with the same config hash is skipped, unless "
                  "--force. Stops at the first failure with its exit code.")
def backfill_command(
    ctx: typer.Context,
    first: Annotated[dt.date, typer.Option("--from", parser=DATE, metavar="YYYY-MM-DD",
                                           help="first snapshot date (YYYY-MM-DD)", show_default=False)],
    last: Annotated[dt.date, typer.Option("--to", parser=DATE, metavar="YYYY-MM-DD",
                                          help="last snapshot date, inclusive", show_default=False)],
    input: Input = None,  # noqa: A002 (the flag's name)
    warehouse: Warehouse_ = None,
    summary_json: SummaryJson = None,
    every: Annotated[int, typer.Option("--every", parser=DAYS, metavar="EVERY", show_default=False,
                                       help="days between snapshots: 1d (default), 7d, 2w ...")] = 1,
    force: Annotated[bool, typer.Option("--force", help="re-run snapshots that are already published")] = False,
    strict: Strict = False,
    config: Config = None,
    debug: Debug = False,
) -> int:
    def job(spark: SparkSession, settings: Settings) -> int:
        dates = snapshot_dates(first, last, every)
        outcomes: list[dict[str, Any]] = []

        def report(outcome: dict[str, Any]) -> None:
            outcomes.append(outcome)
            detail = outcome.get("reason") or f"run {outcome['run_id']} in {outcome['seconds']} s"
            print(f"{outcome['snapshot_date']}  {outcome['status']:<9}  {detail}", flush=True)

        def write_summary(error: BaseException | None = None) -> None:
            if not summary_json:
                return
            rest = [{"snapshot_date": d.isoformat(), "status": "not run"} for d in dates[len(outcomes):]]
            if error is not None and rest and not isinstance(error, DegradedRunError):
                rest[0].update(status="failed", error=describe_exception(error))
            _write_json(summary_json, {"config_hash": settings.config_hash(), "snapshots": outcomes + rest})

        def check(summary: dict[str, Any]) -> None:
            if strict:
                _refuse_skipped_models(summary)

        print(f"backfill of {len(dates)} snapshots, {dates[0]} to {dates[-1]}, every {every} days")
        try:
            backfill(spark, settings, dates, force=force, report=report, check=check)
        except Exception as exc:
            write_summary(exc)
            raise
        write_summary()
        return 0
    return _execute(ctx, job)


@app.command("score", cls=Command, short_help="re-score churn for a published snapshot",
             help="Score every customer of a published snapshot with the churn model's champion (or "
                  "--model-version) on the executors, and replace the snapshot of customer_scores with the new "
                  "churn_probability, churn_risk_band, model_name and model_version; other columns are kept. The "
                  "retention plan is then rebuilt from the new scores.")
def score(
    ctx: typer.Context,
    warehouse: Warehouse_ = None,
    snapshot_date: SnapshotDate = None,
    summary_json: SummaryJson = None,
    model_version: Annotated[int | None, typer.Option(
        "--model-version", parser=INT, metavar="N", help="registered version to score with (default: champion)")
    ] = None,
    config: Config = None,
    debug: Debug = False,
) -> int:
    def job(spark: SparkSession, settings: Settings) -> int:
        show(summary_view(_snapshot_job(functools.partial(score_snapshot, model_version=model_version), spark,
                                        settings, ctx.info_name, snapshot_date, summary_json)))
        return 0
    return _execute(ctx, job)


@app.command("train", cls=Command, short_help="train, track and register the churn and CLV models (MLflow)",
             help="Churn: build the out-of-time training set from the inputs, fit and calibrate the model, evaluate "
                  "it and two baselines on the holdout, log everything to MLflow, register a new version as "
                  "challenger and move champion to it when the promotion gate allows. CLV: fit BG/NBD and "
                  "Gamma-Gamma on the whole base as of the snapshot, log and register a new version as champion.")
def train(ctx: typer.Context, input: Input = None, warehouse: Warehouse_ = None,  # noqa: A002
          snapshot_date: SnapshotDate = None, summary_json: SummaryJson = None, config: Config = None,
          debug: Debug = False) -> int:
    def job(spark: SparkSession, settings: Settings) -> int:
        summary = _snapshot_job(train_models, spark, settings, ctx.info_name, snapshot_date, summary_json)
        show(summary_view(summary))
        trained = summary["stages"].get("train")
        if trained:
            print()
            show(training_view(trained))
        return 0
    return _execute(ctx, job)


# ---- models and tables ---------------------------------------------------------------------------------------
@app.command("promote", cls=Command, short_help="move a model's champion alias by hand",
             help="Point alias champion at a registered version and record why.")
def promote(
    ctx: typer.Context,
    model_version: Annotated[int, typer.Option("--version", parser=INT, metavar="MODEL_VERSION",
                                               help="model version to promote", show_default=False)],
    reason: Annotated[str, typer.Option("--reason", metavar="REASON", help="why (recorded on the model version)",
                                        show_default=False)],
    model: Annotated[str, typer.Option("--model", parser=choice("churn", "clv"), metavar="{churn,clv}",
                                       help="which model (default: churn)", show_default=False)] = "churn",
    warehouse: Annotated[str | None, typer.Option(
        "--warehouse", metavar="WAREHOUSE", help="warehouse directory; the default MLflow store sits beside it")
    ] = None,
    config: Config = None,
    debug: Debug = False,
) -> int:
    def job(spark: SparkSession | None, settings: Settings) -> int:
        name = settings.churn.model_name if model == "churn" else settings.clv.model_name
        with registry.scoped():
            client = registry.connect(settings.paths.warehouse, settings.churn.experiment)
            previous = registry.promote(client, name, model_version, reason)
        print(f"{name}: champion is now version {model_version} "
              f"(was {previous if previous is not None else 'none'}); reason recorded")
        return 0
    return _execute(ctx, job, needs_spark=False)


@app.command("history", cls=Command, short_help="list a table's versions with run metadata")
def history(
    ctx: typer.Context,
    table: Table,
    warehouse: TableWarehouse = None,
    limit: Annotated[int | None, typer.Option("--limit", parser=INT, metavar="N",
                                              help="show only the newest N versions")] = None,
    config: Config = None,
    debug: Debug = False,
) -> int:
    """List a table's versions with run metadata."""
    def job(spark: SparkSession | None, settings: Settings) -> int:
        warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
        show(history_view(warehouse.history(catalog.table(table), limit)))
        return 0
    return _execute(ctx, job, needs_spark=False)


@app.command("sql", cls=Command, short_help="query the published tables with SQL (read-only, DuckDB)",
             help="Run one SELECT over the published Delta tables, each visible under its own name "
                  "(customer_scores, customer_features, retention_plan, ...) as the newest completed run left it: "
                  "a run that failed between two commits is never seen half-published. Statements that would "
                  "write are refused. See docs/querying.md.")
def sql(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="one SELECT (or EXPLAIN) statement",
                                         show_default=False)],
    warehouse: TableWarehouse = None,
    table_version: Annotated[int | None, typer.Option(
        "--version", parser=INT, metavar="N", help="read raw Delta version N of every table named")] = None,
    as_of: AsOf = None,
    run_id: RunId = None,
    snapshot: Annotated[dt.date | None, typer.Option(
        "--snapshot", parser=DATE, metavar="YYYY-MM-DD",
        help="show only this snapshot_date of the partitioned tables")] = None,
    output_format: Annotated[str, typer.Option(
        "--format", parser=choice(*FORMATS), metavar="{" + ",".join(FORMATS) + "}", show_default=False,
        help="output: an aligned table (default), csv, json, or parquet (needs --out)")] = "table",
    out: Annotated[str | None, typer.Option(
        "--out", metavar="OUT", help="write the result to this file instead of standard output")] = None,
    config: Config = None,
    debug: Debug = False,
) -> int:
    if table_version is not None and (as_of is not None or run_id is not None):
        raise ArgumentError(f"argument {'--as-of' if as_of is not None else '--run-id'}: not allowed with "
                            f"argument --version", ctx)
    _one_run(ctx, as_of, run_id)

    def job(spark: SparkSession | None, settings: Settings) -> int:
        result = run_query(settings.paths.warehouse, query, version=table_version, as_of=as_of, run_id=run_id,
                           snapshot=snapshot)
        try:
            write_result(result, output_format, out)
        except BrokenPipeError:  # the reader (head, less) stopped early: not an error
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python's documented way to leave quietly)
        return 0
    return _execute(ctx, job, needs_spark=False)


@app.command("report", cls=Command, short_help="write a self-contained HTML report about a snapshot",
             help="One HTML file with charts (images embedded, opens offline) about a published snapshot: headline "
                  "numbers, value tiers, RFM, lifecycle, churn, CLV, migration, the retention plan, data quality and "
                  "lineage. Built from small DuckDB aggregates; see docs/report.md.")
def report(
    ctx: typer.Context,
    warehouse: TableWarehouse = None,
    snapshot: Annotated[dt.date | None, typer.Option(
        "--snapshot", parser=DATE, metavar="YYYY-MM-DD",
        help="snapshot date (default: the latest published)")] = None,
    out: Annotated[str, typer.Option("--out", metavar="OUT", show_default=False,
                                     help="the HTML file to write (default: report.html)")] = "report.html",
    as_of: AsOf = None,
    run_id: RunId = None,
    config: Config = None,
    debug: Debug = False,
) -> int:
    _one_run(ctx, as_of, run_id)

    def job(spark: SparkSession | None, settings: Settings) -> int:
        written = write_report(settings.paths.warehouse, out, snapshot, run_id=run_id, as_of=as_of)
        print(f"wrote {written['out']} ({written['bytes'] / 1e6:.1f} MB)")
        return 0
    return _execute(ctx, job, needs_spark=False)


@app.command("vacuum", cls=Command, short_help="delete files no retained version needs",
             help="Delete data files that no version inside the retention window references, nor any version the "
                  "newest maintenance.keep_runs completed runs recorded, including files of failed writes.")
def vacuum(
    ctx: typer.Context,
    table: Table,
    warehouse: TableWarehouse = None,
    retention_hours: Annotated[float | None, typer.Option(
        "--retention-hours", parser=FLOAT, metavar="HOURS",
        help="keep files needed by versions newer than this (default from config: 168)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the files without deleting them")] = False,
    config: Config = None,
    debug: Debug = False,
) -> int:
    def job(spark: SparkSession | None, settings: Settings) -> int:
        if retention_hours is not None and retention_hours < 0:
            raise InputError("--retention-hours must not be negative")
        warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
        entry = catalog.table(table)
        kept = warehouse.versions_runs_read(settings.maintenance.keep_runs).get(entry.name, ())
        files = warehouse.vacuum(entry, retention_hours, dry_run, kept)
        print(f"{'would delete' if dry_run else 'deleted'} {len(files)} files from {table}")
        for name in files:
            print(f"  {name}")
        return 0
    return _execute(ctx, job, needs_spark=False)


@app.command("maintain", cls=Command, short_help="prune old snapshots, compact, cluster, vacuum and checkpoint",
             help="Maintain every published table, as one recorded run: delete the snapshots the retention rules "
                  "(maintenance.keep_snapshots, keep_days) no longer keep, compact small files, Z-order "
                  "customer_scores by customer_id in the snapshots written since the last maintenance, vacuum "
                  "(keeping every version the newest maintenance.keep_runs completed runs recorded) and write a "
                  "checkpoint. Readers see the maintained tables once it completes. See docs/tables.md.")
def maintain_command(ctx: typer.Context, warehouse: TableWarehouse = None, summary_json: SummaryJson = None,
                     config: Config = None, debug: Debug = False) -> int:
    def job(spark: SparkSession, settings: Settings) -> int:
        summary = _summarised(Run("maintain", settings), summary_json, lambda run: maintain(spark, settings, run))
        show(maintenance_view(summary))
        return 0
    return _execute(ctx, job)


@app.command("catalog", cls=Command, short_help="register the published tables by name in the Spark metastore",
             help="Register every published table as an external Delta table in the Spark session's metastore "
                  "(segscale.customer_scores, ...; metastore.database): the cluster's metastore under spark-submit, "
                  "else a local Derby metastore beside the warehouse (metastore.path). Then spark.table(...) and "
                  "spark-sql read them by name, at their current versions. Safe to run again: a table already "
                  "registered at this warehouse is kept, one registered elsewhere is moved. See docs/querying.md.")
def catalog_command(ctx: typer.Context, warehouse: TableWarehouse = None, config: Config = None,
                    debug: Debug = False) -> int:
    def job(spark: SparkSession, settings: Settings) -> int:
        if spark.conf.get("spark.sql.catalogImplementation", "in-memory") != "hive":
            log.warning("the Spark session's catalog is in memory: the tables are registered for this session only")
        published = Warehouse(spark, settings.paths.warehouse, settings.delta)
        registered = published.register(settings.metastore.database)
        show(registration_view(settings.metastore.database, {name: published.uri(catalog.table(name))
                                                              for name in registered}, registered))
        if embedded:
            print("\nquery them by name, e.g.:\n  " + shlex.join([
                *spark_sql_command(settings), "-e",
                f"SELECT value_tier, count(*) FROM {settings.metastore.database}.customer_scores GROUP BY 1"]))
        return 0
    embedded = not (isinstance(ctx.obj, Invocation) and ctx.obj.spark) and SparkSession.getActiveSession() is None \
        and not under_spark_submit()
    return _execute(ctx, job, metastore=True)


@app.command("jars", cls=Command, short_help="fetch the Delta jars once and print their paths",
             help="Fetch the Delta Lake jars built for the installed pyspark and delta-spark, with their dependencies, "
                  "from Maven Central into the user's cache (once: afterwards nothing is downloaded), and print their "
                  "paths comma-separated, as spark-submit's --jars takes them. make's setup runs it; an embedded "
                  "session with delta.backend: delta-spark puts them on its classpath. See docs/tables.md.")
def jars(ctx: typer.Context, config: Config = None, debug: Debug = False) -> int:
    def job(spark: SparkSession | None, settings: Settings) -> int:
        print(",".join(fetch_delta_jars()))
        return 0
    return _execute(ctx, job, needs_spark=False)
