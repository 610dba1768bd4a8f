"""The `segscale` command line. Each command parses its flags, builds settings and the session, and calls the
package; `jobs/*.py` reuse `main` so spark-submit runs the same code path."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from pyspark.logger import PySparkLogger
from pyspark.sql import SparkSession

from segscale import __version__, catalog
from segscale.analyst.report import write_report
from segscale.analyst.sql import FORMATS, run_query, write_result
from segscale.config import Settings, load_settings
from segscale.errors import DegradedRunError, InputError, SegscaleError, describe_exception, unreadable_input
from segscale.io.delta import Warehouse
from segscale.models import registry
from segscale.pipeline.commands import (
    Run,
    backfill,
    generate_inputs,
    run_pipeline,
    score_snapshot,
    snapshot_dates,
    train_models,
)
from segscale.session import get_spark
from segscale.transforms.segments import LIFECYCLE_STAGES, TIER_LABELS

log = logging.getLogger("segscale")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in YYYY-MM-DD form") from None


def _timestamp(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time like 2024-12-31T08:00:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _days(text: str) -> int:
    match = re.fullmatch(r"(\d+)([dw])", text.strip())
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an interval like 1d, 7d or 2w")
    return int(match.group(1)) * (7 if match.group(2) == "w" else 1)


def _yesterday() -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="YAML config file (default: $SEGSCALE_CONFIG, else conf/local.yaml if "
                                         "present); conf/base.yaml beside it is loaded first")
    common.add_argument("--debug", action="store_true", help="show the Python traceback of a failure")

    parser = argparse.ArgumentParser(
        prog="segscale",
        description="Score a whole customer base on Spark and publish the answers as versioned Delta tables.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"segscale {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", parents=[common], help="generate synthetic input tables",
                              description="Generate customers, transactions, interactions and the generator's "
                                          "ground truth in parallel on the executors.")
    gen.add_argument("--customers", type=int, help="number of customers (default from config: 20000)")
    gen.add_argument("--seed", type=int, help="random seed; the same seed gives the same tables")
    gen.add_argument("--out", required=True, help="output directory (one sub-directory per table)")
    gen.add_argument("--start", type=_date, help="first day of history (YYYY-MM-DD)")
    gen.add_argument("--end", type=_date, help="last day of history (YYYY-MM-DD)")
    gen.add_argument("--dirty-rate", type=float, help="share of deliberately bad rows (0..1)")
    gen.add_argument("--format", choices=["delta", "parquet", "csv"], help="format of the input tables")
    gen.set_defaults(handler=_generate)

    snapshot_commands = {
        "run": ("run the main job for one snapshot: validate, [train], features, segment and score, plan",
                "Read the inputs, validate them (bad rows to quarantine), publish customer_features, then "
                "customer_scores (churn and CLV from the champion models) and segment_migration, then "
                "retention_plan and retention_summary for the snapshot. Trains a model first with --train or "
                "when it has no champion."),
        "validate": ("validate the inputs and publish the snapshot's quarantine",
                     "Check every input row; bad rows go to the quarantine table with a reason code."),
        "features": ("validate, then publish customer_features for the snapshot",
                     "Validate the inputs and compute one row of features per customer as of the snapshot."),
        "segment": ("publish customer_scores and segment_migration from published features",
                    "RFM scores and segments, value tiers, lifecycle stages, churn scores and CLV (champion "
                    "models) from the snapshot's published customer_features, and migration from the previous "
                    "snapshot."),
        "plan": ("publish the retention plan from published customer_scores",
                 "Rank the snapshot's scored customers by expected saved value per unit cost of their tier's "
                 "treatment, select them within retention.budget, and publish retention_plan and "
                 "retention_summary."),
    }
    for name, (summary, description) in snapshot_commands.items():
        sub = commands.add_parser(name, parents=[common], help=summary, description=description)
        _add_snapshot_flags(sub, with_input=name not in ("segment", "plan"))
        if name == "run":
            sub.add_argument("--train", action="store_true",
                             help="train the churn model (with the promotion gate) and fit the CLV model before "
                                  "scoring")
            _add_strict_flag(sub)
        sub.set_defaults(handler=_run)

    back = commands.add_parser(
        "backfill", parents=[common], help="run the main job for a range of snapshots, in order",
        description="Run the main job (like segscale run) for every snapshot from --from to --to, --every days "
                    "apart, oldest first, so each snapshot's migration compares with the one before. A snapshot "
                    "whose newest publishing run is a successful run with the same config hash is skipped, "
                    "unless --force. Stops at the first failure with its exit code.")
    _add_snapshot_flags(back, with_input=True, with_date=False)
    back.add_argument("--from", dest="first", type=_date, required=True, help="first snapshot date (YYYY-MM-DD)")
    back.add_argument("--to", dest="last", type=_date, required=True, help="last snapshot date, inclusive")
    back.add_argument("--every", type=_days, default=1, help="days between snapshots: 1d (default), 7d, 2w ...")
    back.add_argument("--force", action="store_true", help="re-run snapshots that are already published")
    _add_strict_flag(back)
    back.set_defaults(handler=_backfill)

    score = commands.add_parser(
        "score", parents=[common], help="re-score churn for a published snapshot",
        description="Score every customer of a published snapshot with the churn model's champion (or "
                    "--model-version) on the executors, and replace the snapshot of customer_scores with the new "
                    "churn_probability, churn_risk_band, model_name and model_version; other columns are kept. "
                    "The retention plan is then rebuilt from the new scores.")
    _add_snapshot_flags(score, with_input=False)
    score.add_argument("--model-version", type=int, help="registered version to score with (default: champion)")
    score.set_defaults(handler=_score)

    train = commands.add_parser(
        "train", parents=[common], help="train, track and register the churn and CLV models (MLflow)",
        description="Churn: build the out-of-time training set from the inputs, fit and calibrate the model, "
                    "evaluate it and two baselines on the holdout, log everything to MLflow, register a new "
                    "version as challenger and move champion to it when the promotion gate allows. CLV: fit "
                    "BG/NBD and Gamma-Gamma on the whole base as of the snapshot, log and register a new version "
                    "as champion.")
    _add_snapshot_flags(train, with_input=True)
    train.set_defaults(handler=_train)

    prom = commands.add_parser("promote", parents=[common], help="move a model's champion alias by hand",
                               description="Point alias champion at a registered version and record why.")
    prom.add_argument("--model", choices=["churn", "clv"], default="churn", help="which model (default: churn)")
    prom.add_argument("--warehouse", help="warehouse directory; the default MLflow store sits beside it")
    prom.add_argument("--version", type=int, required=True, dest="model_version", help="model version to promote")
    prom.add_argument("--reason", required=True, help="why (recorded on the model version)")
    prom.set_defaults(handler=_promote, needs_spark=False)

    hist = commands.add_parser("history", parents=[common], help="list a table's versions with run metadata")
    hist.add_argument("table", help="table name, e.g. customer_features")
    hist.add_argument("--warehouse", help="warehouse directory (default from config)")
    hist.add_argument("--limit", type=int, help="show only the newest N versions")
    hist.set_defaults(handler=_history, needs_spark=False)

    sql = commands.add_parser(
        "sql", parents=[common], help="query the published tables with SQL (read-only, DuckDB)",
        description="Run one SELECT over the published Delta tables, each visible under its own name "
                    "(customer_scores, customer_features, retention_plan, ...). Statements that would write are "
                    "refused. See docs/querying.md.")
    sql.add_argument("query", help="one SELECT (or EXPLAIN) statement")
    sql.add_argument("--warehouse", help="warehouse directory (default from config)")
    travel = sql.add_mutually_exclusive_group()
    travel.add_argument("--version", type=int, dest="table_version", help="read version N of every table named")
    travel.add_argument("--as-of", type=_timestamp, help="read the tables as of this time (ISO 8601; UTC if no "
                                                         "offset is given)")
    sql.add_argument("--snapshot", type=_date, help="show only this snapshot_date of the partitioned tables")
    sql.add_argument("--format", choices=FORMATS, default="table", dest="output_format",
                     help="output: an aligned table (default), csv, json, or parquet (needs --out)")
    sql.add_argument("--out", help="write the result to this file instead of standard output")
    sql.set_defaults(handler=_sql, needs_spark=False)

    rep = commands.add_parser(
        "report", parents=[common], help="write a self-contained HTML report about a snapshot",
        description="One HTML file with charts (images embedded, opens offline) about a published snapshot: "
                    "headline numbers, value tiers, RFM, lifecycle, churn, CLV, migration, the retention plan, "
                    "data quality and lineage. Built from small DuckDB aggregates; see docs/report.md.")
    rep.add_argument("--warehouse", help="warehouse directory (default from config)")
    rep.add_argument("--snapshot", type=_date, help="snapshot date (default: the latest published)")
    rep.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    rep.set_defaults(handler=_report, needs_spark=False)

    vac = commands.add_parser("vacuum", parents=[common], help="delete files no retained version needs",
                              description="Delete data files that no version inside the retention window "
                                          "references, including files of failed writes.")
    vac.add_argument("table", help="table name, e.g. customer_features")
    vac.add_argument("--warehouse", help="warehouse directory (default from config)")
    vac.add_argument("--retention-hours", type=float,
                     help="keep files needed by versions newer than this (default from config: 168)")
    vac.add_argument("--dry-run", action="store_true", help="list the files without deleting them")
    vac.set_defaults(handler=_vacuum, needs_spark=False)
    return parser


def _add_snapshot_flags(sub: argparse.ArgumentParser, *, with_input: bool, with_date: bool = True) -> None:
    if with_input:
        sub.add_argument("--input", help="directory holding customers/, transactions/, interactions/")
    sub.add_argument("--warehouse", help="directory (or URI) of the published Delta tables (the default MLflow "
                                         "store sits beside it)")
    if with_date:
        sub.add_argument("--snapshot-date", type=_date, default=None,
                         help="snapshot date YYYY-MM-DD, end of day UTC inclusive (default: yesterday, UTC)")
    sub.add_argument("--summary-json", help="write the summary (JSON) to this file, also when the command fails")


def _add_strict_flag(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--strict", action="store_true",
                     help="exit 4 when a model the data cannot support was skipped (the run still publishes "
                          "everything else); without it such a run exits 0 with warnings")


def main(argv: Sequence[str] | None = None, spark: SparkSession | None = None) -> int:
    """Run one command; returns the exit code. `spark` may be injected (tests); otherwise it is built."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # PySpark logs every analysis error with its traceback, also one segscale reports as a one-paragraph error.
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.DEBUG if args.debug else logging.CRITICAL)
    # A session that was already running (a notebook, a test) belongs to its owner: never stop it.
    owns_session = spark is None and SparkSession.getActiveSession() is None
    try:
        settings = load_settings(args.config, _overrides(args))
        needs_spark = getattr(args, "needs_spark", True)
        log.log(logging.INFO if needs_spark else logging.DEBUG, "segscale %s %s, effective config (hash %s):\n%s",
                __version__, args.command, settings.config_hash(),
                yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=True, default_flow_style=None, width=120))
        if spark is None and needs_spark:
            spark = get_spark(settings)
        return args.handler(spark, settings, args)
    except SegscaleError as exc:
        return _fail(args, exc, exc.exit_code, str(exc))
    except Exception as exc:  # anything else: one paragraph, the cause, exit 1
        unreadable = unreadable_input(exc)
        if unreadable is not None:
            return _fail(args, exc, unreadable.exit_code, str(unreadable))
        return _fail(args, exc, 1, f"{args.command} failed: {describe_exception(exc)}")
    finally:
        if owns_session and spark is not None:
            spark.stop()


def _fail(args: argparse.Namespace, exc: BaseException, code: int, message: str) -> int:
    if args.debug:
        log.exception("segscale %s failed", args.command)
    print(f"segscale: error: {message}", file=sys.stderr)
    if not args.debug:
        print("(run again with --debug for the full traceback)", file=sys.stderr)
    return code


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


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = vars(args)
    return {key: values[flag] for flag, key in _FLAG_KEYS.items() if values.get(flag) is not None}


def _generate(spark: SparkSession, settings: Settings, args: argparse.Namespace) -> int:
    summary = generate_inputs(spark, settings, args.out)
    _print_stages(summary)
    return 0


def _run(spark: SparkSession, settings: Settings, args: argparse.Namespace) -> int:
    job = functools.partial(run_pipeline, train=getattr(args, "train", False))
    summary = _snapshot_job(job, spark, settings, args)
    print(format_summary(summary))
    if getattr(args, "strict", False):
        _refuse_skipped_models(summary)
    return 0


def _refuse_skipped_models(summary: dict[str, Any]) -> None:
    """--strict: DegradedRunError (exit 4) when the run skipped a model the data could not support."""
    skipped = {kind: outcome["skipped"] for kind, outcome in summary.get("models", {}).items() if outcome["skipped"]}
    if skipped:
        raise DegradedRunError(
            f"snapshot {summary['snapshot_date']} was published without a model the data could not support "
            f"(--strict): " + "; ".join(f"{kind}: {reason}" for kind, reason in skipped.items()))


def _score(spark: SparkSession, settings: Settings, args: argparse.Namespace) -> int:
    summary = _snapshot_job(functools.partial(score_snapshot, model_version=args.model_version), spark, settings,
                            args)
    print(format_summary(summary))
    return 0


def _train(spark: SparkSession, settings: Settings, args: argparse.Namespace) -> int:
    summary = _snapshot_job(train_models, spark, settings, args)
    print(format_summary(summary))
    trained = summary["stages"].get("train")
    if trained:
        promotion = trained["promotion"]
        print(f"\nmodel {trained['model']} version {trained['model_version']} "
              f"({'champion' if promotion['promoted'] else 'challenger'}: {promotion['reason']})")
        print("holdout " + ", ".join(f"{k} {v:.4f}" for k, v in trained["metrics"].items()))
        print("baselines ROC-AUC " + ", ".join(f"{k} {v:.4f}" for k, v in trained["baselines_roc_auc"].items()))
        print(f"MLflow run {trained['mlflow_run_id']} at {trained['tracking_uri']}")
    return 0


def _snapshot_job(job: Callable[..., dict[str, Any]], spark: SparkSession, settings: Settings,
                  args: argparse.Namespace) -> dict[str, Any]:
    """Run `job` for the snapshot of `args`; --summary-json gets the summary, also when the job fails."""
    snapshot = args.snapshot_date or _yesterday()
    run = Run(args.command, settings, snapshot)
    try:
        summary = job(spark, settings, snapshot, run)
    except Exception:
        if args.summary_json:
            _write_json(args.summary_json, run.summary("failed"))
        raise
    if args.summary_json:
        _write_json(args.summary_json, summary)
    return summary


def _backfill(spark: SparkSession, settings: Settings, args: argparse.Namespace) -> int:
    dates = snapshot_dates(args.first, args.last, args.every)
    outcomes: list[dict[str, Any]] = []

    def report(outcome: dict[str, Any]) -> None:
        outcomes.append(outcome)
        detail = outcome.get("reason") or f"run {outcome['run_id']} in {outcome['seconds']} s"
        print(f"{outcome['snapshot_date']}  {outcome['status']:<9}  {detail}", flush=True)

    def write_summary(error: BaseException | None = None) -> None:
        if not args.summary_json:
            return
        rest = [{"snapshot_date": d.isoformat(), "status": "not run"} for d in dates[len(outcomes):]]
        if error is not None and rest and not isinstance(error, DegradedRunError):
            rest[0].update(status="failed", error=describe_exception(error))
        _write_json(args.summary_json, {"config_hash": settings.config_hash(), "snapshots": outcomes + rest})

    def check(summary: dict[str, Any]) -> None:
        if args.strict:
            _refuse_skipped_models(summary)

    print(f"backfill of {len(dates)} snapshots, {dates[0]} to {dates[-1]}, every {args.every} days")
    try:
        backfill(spark, settings, dates, force=args.force, report=report, check=check)
    except Exception as exc:
        write_summary(exc)
        raise
    write_summary()
    return 0


def _promote(spark: SparkSession | None, settings: Settings, args: argparse.Namespace) -> int:
    name = settings.churn.model_name if args.model == "churn" else settings.clv.model_name
    with registry.scoped():
        client = registry.connect(settings.paths.warehouse, settings.churn.experiment)
        previous = registry.promote(client, name, args.model_version, args.reason)
    print(f"{name}: champion is now version {args.model_version} "
          f"(was {previous if previous is not None else 'none'}); reason recorded")
    return 0


def _write_json(path: str, summary: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, default=str)


def _history(spark: SparkSession | None, settings: Settings, args: argparse.Namespace) -> int:
    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    print(f"{'version':>7}  {'timestamp (UTC)':<19}  {'operation':<14}  {'stage':<20}  {'snapshot':<10}  "
          f"{'run id':<26}  {'config':<16}  models")
    for entry in warehouse.history(catalog.table(args.table), args.limit):
        m = entry.metadata
        print(f"{entry.version:>7}  {entry.timestamp:%Y-%m-%d %H:%M:%S}  {entry.operation:<14}  "
              f"{m.get('stage', ''):<20}  {m.get('snapshot_date', ''):<10}  {m.get('run_id', ''):<26}  "
              f"{m.get('config_hash', ''):<16}  "
              + " ".join(filter(None, (m.get("model_version"), m.get("extra", {}).get("clv_model")))))
    return 0


def _sql(spark: SparkSession | None, settings: Settings, args: argparse.Namespace) -> int:
    result = run_query(settings.paths.warehouse, args.query, version=args.table_version, as_of=args.as_of,
                       snapshot=args.snapshot)
    try:
        write_result(result, args.output_format, args.out)
    except BrokenPipeError:  # the reader (head, less) stopped early: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python's documented way to leave quietly)
    return 0


def _report(spark: SparkSession | None, settings: Settings, args: argparse.Namespace) -> int:
    written = write_report(settings.paths.warehouse, args.out, args.snapshot)
    print(f"wrote {written['out']} ({written['bytes'] / 1e6:.1f} MB)")
    return 0


def _vacuum(spark: SparkSession | None, settings: Settings, args: argparse.Namespace) -> int:
    if args.retention_hours is not None and args.retention_hours < 0:
        raise InputError("--retention-hours must not be negative")
    warehouse = Warehouse(spark, settings.paths.warehouse, settings.delta)
    files = warehouse.vacuum(catalog.table(args.table), args.retention_hours, args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(files)} files from {args.table}")
    for name in files:
        print(f"  {name}")
    return 0


def _print_stages(summary: dict[str, Any]) -> None:
    print(f"run {summary['run_id']} {summary['status']}")
    for name, record in summary["stages"].items():
        details = ", ".join(f"{k}={v}" for k, v in record.items() if k != "seconds")
        print(f"  {name:<28} {record['seconds']:>8.1f} s  {details}")


def format_summary(summary: dict[str, Any]) -> str:
    """The run summary for a terminal: stages and times, rows, quarantine, cut points, tiers by stage."""
    stages = summary["stages"]
    lines = [f"segscale {summary['command']} {summary['status']}: snapshot {summary['snapshot_date']}, "
             f"run {summary['run_id']}, config {summary['config_hash']}", "", "stage          seconds"]
    lines += [f"  {name:<12} {record['seconds']:>7.1f}" for name, record in stages.items()]
    tables = stages.get("validate", {}).get("tables")
    if tables:
        lines += ["", "input          rows in   rows out  quarantined by reason"]
        for table, counts in tables.items():
            bad = sum(counts["bad"].values())
            reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(counts["bad"].items())) or "-"
            lines.append(f"  {table:<12} {counts['rows']:>9,} {counts['rows'] - bad:>10,}  {reasons}")
    published = {t: p for record in stages.values() for t, p in record.get("published", {}).items()}
    if published:
        lines += ["", "published             rows  version"]
        lines += [f"  {t:<18} {p['rows']:>9,} {p['version']:>8}" for t, p in published.items()]
    segment = stages.get("segment", {})
    if "rfm_cut_points" in segment:
        lines += ["", "RFM cut points (upper bound of score 1, 2, ...; recency scores reversed)"]
        lines += [f"  {d:<10} {', '.join(f'{c:g}' for c in cuts) or '(one bin)'}"
                  for d, cuts in segment["rfm_cut_points"].items()]
    if "tiers_by_stage" in segment:
        lines += ["", "value tier             " + " ".join(f"{s:>9}" for s in LIFECYCLE_STAGES) + "      total"]
        for tier, label in TIER_LABELS.items():
            counts = segment["tiers_by_stage"].get(tier, {})
            lines.append(f"  {tier:<11} {label:<6}  " + " ".join(f"{counts.get(s, 0):>9,}" for s in LIFECYCLE_STAGES)
                         + f" {sum(counts.values()):>10,}")
    scored = stages.get("score") or segment
    if scored.get("churn_risk_bands"):
        model = scored["churn_model"]
        status = summary.get("models", {}).get("churn", {}).get("status", "disabled")
        why = "churn.enabled: false" if status == "disabled" else "no churn model: see models below"
        title = f"churn risk ({model['name']} v{model['version']})" if model else f"churn risk ({why})"
        lines += ["", title + "  " + ", ".join(f"{band} {n:,}" for band, n in scored["churn_risk_bands"].items())]
    if segment.get("clv_by_tier"):
        model, value = segment["clv_model"], segment["clv_by_tier"]
        total = sum(value.values()) or 1.0
        lines += ["", f"predicted value, next {segment['clv_horizon_days']} days ({model['name']} "
                      f"v{model['version']})  " + ", ".join(f"{tier} {v:,.0f} ({v / total:.0%})"
                                                          for tier, v in value.items())]
    fitted = stages.get("clv fit")
    if fitted and "model_version" in fitted:
        resolution = fitted["resolution"]
        lines += ["", f"fitted {fitted['model']} v{fitted['model_version']} on {fitted['buyers']:,} buyers "
                      f"({fitted['repeat_buyers']:,} repeat) in {fitted['fit_seconds']:.1f} s, recency and T in "
                      f"{'exact days' if resolution['bin_days'] == 1 else str(resolution['bin_days']) + '-day bins'}"
                      f": " + ", ".join(f"{k} {v:.4g}" for part in fitted["params"].values() for k, v in part.items())]
    plan = stages.get("plan", {}).get("retention")
    if plan and plan.get("note"):
        lines += ["", f"retention plan: empty ({plan['note']})"]
    elif plan:
        lines += ["", f"retention plan: {plan['customers_targeted']:,} customers, spend {plan['spend']:,.2f} of "
                      f"budget {plan['budget']:,.2f}, expected saved value {plan['expected_saved_value']:,.2f}",
                  "  value tier   treatment                   candidates   targeted        spend  "
                  "budget share  expected saved     ROI"]
        for tier, t in plan["tiers"].items():
            share = f"{t['share_of_budget']:.1%}" if t["share_of_budget"] is not None else "-"
            roi = f"{t['roi']:.2f}" if t["roi"] is not None else "-"
            lines.append(f"  {tier:<12} {t['treatment']:<26} {t['candidates']:>11,} {t['customers_targeted']:>10,} "
                         f"{t['spend']:>12,.2f} {share:>13} {t['expected_saved_value']:>15,.2f} {roi:>7}")
    trained = stages.get("train")
    if trained and "promotion" in trained:
        lines += ["", f"trained {trained['model']} v{trained['model_version']}: holdout ROC-AUC "
                      f"{trained['metrics']['roc_auc']:.4f}, "
                      f"{'champion' if trained['promotion']['promoted'] else 'challenger'} "
                      f"({trained['promotion']['reason']})"]
    migration = stages.get("migration")
    if migration is not None:
        previous = migration.get("previous_snapshot")
        lines += ["", f"migration from {previous}" if previous else "migration: no earlier snapshot"]
    if summary.get("models"):
        lines += ["", "models"] + [f"  {kind:<6} {_outcome(outcome)}" for kind, outcome in summary["models"].items()]
    if summary.get("warnings"):
        lines += ["", f"warnings ({len(summary['warnings'])})"] + [f"  - {w}" for w in summary["warnings"]]
    return "\n".join(lines)


def _outcome(outcome: dict[str, Any]) -> str:
    status, version = outcome["status"], outcome["version"]
    scored = f"scored with v{version}" if version is not None else "no scores (columns null)"
    if status == "disabled":
        return "disabled in the config (columns null)"
    if outcome["skipped"]:
        return f"{scored}; training skipped: {outcome['skipped']}"
    return f"{scored} ({'trained by this run' if status == 'trained' else 'the champion'})"
