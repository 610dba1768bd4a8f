"""What the commands print: the run summary (a table of the stages with what each published, then inputs,
segments, models and the plan), the stages of `generate`, a training result and a table's history, as rich
renderables. On a terminal they print with colour at the terminal's width; anywhere else (logs, CI, a pipe)
as plain text as wide as its content: exactly `format_summary`'s text."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from segscale.transforms.segments import LIFECYCLE_STAGES, TIER_LABELS

# Plain text is laid out as wide as its content (never wrapped or cut), the same on every machine whatever its
# terminal or COLUMNS; a terminal narrower than a table folds its cells.
PLAIN_WIDTH = 1000


def _table(title: str | None, *columns: str, right: Iterable[str] = ()) -> Table:
    """A borderless table titled on its left; the columns named in `right` hold numbers."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, header_style="bold")
    numeric = set(right)
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left", overflow="fold")
    return table


def _stages(stages: dict[str, Any]) -> Table:
    table = _table(None, "stage", "seconds", "published", "rows", "version", right=("seconds", "rows", "version"))
    for name, record in stages.items():
        published = list(record.get("published", {}).items()) or [(None, None)]
        for i, (table_name, p) in enumerate(published):
            table.add_row(name if i == 0 else "", f"{record['seconds']:.1f}" if i == 0 else "",
                          table_name or "", f"{p['rows']:,}" if p else "", str(p["version"]) if p else "")
    return table


def _inputs(tables: dict[str, Any]) -> Table:
    table = _table(None, "input", "rows in", "rows out", "quarantined by reason", right=("rows in", "rows out"))
    for name, counts in tables.items():
        bad = sum(counts["bad"].values())
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(counts["bad"].items())) or "-"
        table.add_row(name, f"{counts['rows']:,}", f"{counts['rows'] - bad:,}", reasons)
    return table


def _cut_points(cut_points: dict[str, list[float]]) -> Table:
    table = _table("RFM cut points (upper bound of score 1, 2, ...; recency scores reversed)", "dimension",
                   "cut points")
    for dimension, cuts in cut_points.items():
        table.add_row(dimension, ", ".join(f"{c:g}" for c in cuts) or "(one bin)")
    return table


def _tiers_by_stage(tiers: dict[str, dict[str, int]]) -> Table:
    table = _table("value tiers by lifecycle stage", "value tier", "", *LIFECYCLE_STAGES, "total",
                   right=(*LIFECYCLE_STAGES, "total"))
    for tier, label in TIER_LABELS.items():
        counts = tiers.get(tier, {})
        table.add_row(tier, label, *(f"{counts.get(s, 0):,}" for s in LIFECYCLE_STAGES), f"{sum(counts.values()):,}")
    return table


def _plan(plan: dict[str, Any]) -> RenderableType:
    if plan.get("note"):
        return Text(f"retention plan: empty ({plan['note']})")
    controls = plan.get("customers_controlled")
    held = f", {controls:,} held out as control" if controls is not None else ""
    table = _table(f"retention plan: {plan['customers_targeted']:,} customers treated{held}, spend "
                   f"{plan['spend']:,.2f} of budget {plan['budget']:,.2f}, expected saved value "
                   f"{plan['expected_saved_value']:,.2f}",
                   "value tier", "treatment", "uplift", "candidates", "treated", "control", "spend", "budget share",
                   "limits", "expected saved", "ROI",
                   right=("uplift", "candidates", "treated", "control", "spend", "budget share", "expected saved",
                          "ROI"))
    uplifts = plan.get("uplifts", {})
    for tier, t in plan["tiers"].items():
        share = f"{t['share_of_budget']:.1%}" if t["share_of_budget"] is not None else "-"
        limits = [f"budget {t['tier_budget']:,.2f}" if t.get("tier_budget") is not None else "",
                  f"capacity {t['capacity']:,}" if t.get("capacity") is not None else ""]
        uplift = uplifts.get(tier)
        used = ("-" if not uplift else "per customer (model)" if uplift["source"] == "model" else
                f"{uplift['uplift']:.3f} {'learned' if uplift['source'] == 'learned' else 'config'}")
        table.add_row(tier, t["treatment"], used, f"{t['candidates']:,}", f"{t['customers_targeted']:,}",
                      f"{t.get('customers_controlled', 0):,}", f"{t['spend']:,.2f}", share,
                      ", ".join(x for x in limits if x) or "-", f"{t['expected_saved_value']:,.2f}",
                      f"{t['roi']:.2f}")
    return table


def _share(value: float | None) -> str:
    return f"{value:+.1%}" if value is not None else "-"


def _outcomes(measured: dict[str, dict[str, dict[str, Any]]]) -> Table:
    table = _table("plans measured (treated against the randomized control group)", "plan", "value tier",
                   "treatment", "treated", "control", "incremental retention", "interval", "realized uplift",
                   "learned uplift", right=("treated", "control", "incremental retention", "realized uplift",
                                            "learned uplift"))
    for plan_date, tiers in measured.items():
        for tier, o in tiers.items():
            interval = (f"{o['incremental_retention_low']:+.1%} to {o['incremental_retention_high']:+.1%}"
                        if o["incremental_retention_low"] is not None else "-")
            table.add_row(plan_date, tier, o["treatment"], f"{o['customers_treated']:,}",
                          f"{o['customers_controlled']:,}", _share(o["incremental_retention"]), interval,
                          f"{o['realized_uplift']:.3f}" if o["realized_uplift"] is not None else "-",
                          f"{o['learned_uplift']:.3f}" if o["learned_uplift"] is not None else "-")
    return table


def _model_outcome(outcome: dict[str, Any]) -> str:
    status, version = outcome["status"], outcome["version"]
    scored = f"scored with v{version}" if version is not None else "no scores (columns null)"
    if status == "disabled":
        return "disabled in the config (columns null)"
    if outcome["skipped"]:
        return f"{scored}; training skipped: {outcome['skipped']}"
    return f"{scored} ({'trained by this run' if status == 'trained' else 'the champion'})"


def summary_view(summary: dict[str, Any]) -> Group:
    """The run summary: stages and times with the tables they published, rows in and out and quarantine per
    reason, RFM cut points, tiers by lifecycle stage, churn and CLV, the plan per tier, models and warnings."""
    stages = summary["stages"]
    parts: list[RenderableType] = [
        Text(f"segscale {summary['command']} {summary['status']}: snapshot {summary['snapshot_date']}, "
             f"run {summary['run_id']}, config {summary['config_hash']}", style="bold"),
        _stages(stages)]
    tables = stages.get("validate", {}).get("tables")
    if tables:
        parts.append(_inputs(tables))
    segment = stages.get("segment", {})
    if "rfm_cut_points" in segment:
        parts.append(_cut_points(segment["rfm_cut_points"]))
    if "tiers_by_stage" in segment:
        parts.append(_tiers_by_stage(segment["tiers_by_stage"]))
    lines: list[str] = []
    scored = stages.get("score") or segment
    if scored.get("churn_risk_bands"):
        model = scored["churn_model"]
        status = summary.get("models", {}).get("churn", {}).get("status", "disabled")
        why = "churn.enabled: false" if status == "disabled" else "no churn model: see models below"
        title = f"churn risk ({model['name']} v{model['version']})" if model else f"churn risk ({why})"
        lines.append(title + "  " + ", ".join(f"{band} {n:,}" for band, n in scored["churn_risk_bands"].items()))
    if segment.get("clv_by_tier"):
        model, value = segment["clv_model"], segment["clv_by_tier"]
        total = sum(value.values()) or 1.0
        lines.append(f"predicted value, next {segment['clv_horizon_days']} days ({model['name']} "
                     f"v{model['version']})  " + ", ".join(f"{tier} {v:,.0f} ({v / total:.0%})"
                                                         for tier, v in value.items()))
    fitted = stages.get("clv fit")
    if fitted and "model_version" in fitted:
        resolution = fitted["resolution"]
        lines.append(f"fitted {fitted['model']} v{fitted['model_version']} on {fitted['buyers']:,} buyers "
                     f"({fitted['repeat_buyers']:,} repeat) in {fitted['fit_seconds']:.1f} s, recency and T in "
                     f"{'exact days' if resolution['bin_days'] == 1 else str(resolution['bin_days']) + '-day bins'}"
                     f": " + ", ".join(f"{k} {v:.4g}" for part in fitted["params"].values() for k, v in part.items()))
    parts += [Text(line) for line in lines]
    outcomes = stages.get("outcomes")
    if outcomes and outcomes.get("measured"):
        parts.append(_outcomes(outcomes["measured"]))
    fitted_uplift = (outcomes or {}).get("uplift_model")
    if fitted_uplift:
        qini, noise = fitted_uplift["qini_coefficient"], fitted_uplift["qini_random_sd"]
        parts.append(Text(
            f"per-customer uplift model, plans of {', '.join(fitted_uplift['plans']) or 'none'}: "
            f"{fitted_uplift['customers_fitted']:,} customers, Qini coefficient "
            f"{'-' if qini is None else f'{qini:+.4f} (random: ±{noise:.4f})'} on "
            f"{fitted_uplift['customers_evaluated']:,} held-out; "
            + ("the plan values each candidate with it" if fitted_uplift["used_by_plans"] else fitted_uplift["note"])))
    plan = stages.get("plan", {}).get("retention")
    if plan:
        parts.append(_plan(plan))
    monitored = stages.get("monitor")
    if monitored and "retrain" in monitored:
        drift = (f"PSI of the most drifting {', '.join(f'{n} {v:.2f}' for n, v in monitored['drift'].items())}"
                 if monitored["drift"] else f"no drift measured ({'; '.join(monitored['notes']) or 'no reference'})")
        line = (f"monitoring: {drift}; backtested "
                f"{', '.join(monitored['backtested']) or 'no snapshot (none matured yet)'}; retrain "
                + ", ".join(f"{kind} {'yes' if retrain else 'no'}" for kind, retrain in monitored["retrain"].items()))
        parts.append(Text(line))
    queued = stages.get("queue")
    if queued and "customers" in queued:
        model = queued["churn_model"]
        line = (f"at-risk queue: {queued['customers']:,} customers ({queued['at_risk']:,} at risk"
                + (f", {queued['left_out']:,} left out by queue.max_customers" if queued["left_out"] else "")
                + (f", {queued['on_request']:,} on request" if queued["on_request"] else "") + ")")
        line += f"; {queued['note']}" if queued["note"] else f", reasons from {model['name']} v{model['version']}"
        parts.append(Text(line))
    trained = stages.get("train")
    if trained and "promotion" in trained:
        parts.append(Text(f"trained {trained['model']} v{trained['model_version']}: holdout ROC-AUC "
                          f"{trained['metrics']['roc_auc']:.4f}, "
                          f"{'champion' if trained['promotion']['promoted'] else 'challenger'} "
                          f"({trained['promotion']['reason']})"))
    migration = stages.get("migration")
    if migration is not None:
        previous, later = migration.get("previous_snapshot"), migration.get("next_snapshot")
        line = f"migration from {previous}" if previous else "migration: no earlier snapshot"
        if later:
            line += f"; the migration of {later} recomputed from this snapshot"
        parts.append(Text(line))
    if summary.get("models"):
        models = _table("models", "model", "outcome")
        for kind, outcome in summary["models"].items():
            models.add_row(kind, _model_outcome(outcome))
        parts.append(models)
    if summary.get("warnings"):
        parts.append(_warnings(summary["warnings"]))
    return Group(*_spaced(parts))


def maintenance_view(summary: dict[str, Any]) -> Group:
    """What `segscale maintain` did to each table: the snapshots it deleted, its files before and after compaction
    (and the snapshots it Z-ordered), the files vacuum deleted, the checkpoint's version; then the warnings."""
    stages = summary["stages"]
    retention, optimized = stages["retention"], stages["optimize"]["tables"]
    table = _table(None, "table", "snapshots deleted", "files before", "files after", "clustered snapshots",
                   "files vacuumed", "checkpoint", right=("files before", "files after", "files vacuumed",
                                                          "checkpoint"))
    for name, version in stages["checkpoint"]["versions"].items():
        files = optimized.get(name)
        clustered = files.get("clustered") if files else None
        table.add_row(name, ", ".join(retention["deleted"].get(name, [])) or "-",
                      f"{files['files_before']:,}" if files else "-", f"{files['files_after']:,}" if files else "-",
                      ("-" if clustered is None else ", ".join(clustered) or "none new"),
                      f"{stages['vacuum']['deleted_files'][name]:,}", str(version))
    kept = retention["kept"]
    parts: list[RenderableType] = [
        Text(f"segscale maintain {summary['status']}: run {summary['run_id']}", style="bold"), _stages(stages),
        Text(f"snapshots kept: {len(kept)}" + (f" ({kept[0]} to {kept[-1]})" if kept else "")), table]
    if summary.get("warnings"):
        parts.append(_warnings(summary["warnings"]))
    return Group(*_spaced(parts))


def registration_view(database: str, locations: dict[str, str], outcome: dict[str, str]) -> Table:
    """What `segscale catalog` registered: each table's name in the metastore, its location, and whether it was
    registered now, kept, or moved from another location."""
    table = _table(f"{len(outcome)} tables in database {database}", "table", "location", "")
    for name, status in outcome.items():
        table.add_row(f"{database}.{name}", locations[name], status)
    return table


def _warnings(warnings: list[str]) -> Text:
    return Text("\n".join([f"warnings ({len(warnings)})", *(f"  - {w}" for w in warnings)]), style="yellow")


def _spaced(parts: list[RenderableType]) -> list[RenderableType]:
    """A blank line between the parts, as between paragraphs."""
    out: list[RenderableType] = []
    for part in parts:
        if out:
            out.append(Text(""))
        out.append(part)
    return out


def stages_view(summary: dict[str, Any]) -> Group:
    """A command's outcome and its stages with their records (`segscale generate`)."""
    table = _table(None, "stage", "seconds", "details", right=("seconds",))
    for name, record in summary["stages"].items():
        table.add_row(name, f"{record['seconds']:.1f}",
                      ", ".join(f"{k}={v}" for k, v in record.items() if k != "seconds"))
    return Group(Text(f"run {summary['run_id']} {summary['status']}", style="bold"), table)


def training_view(trained: dict[str, Any]) -> Text:
    """What `segscale train` registered and how it scored on the holdout."""
    promotion = trained["promotion"]
    return Text("\n".join([
        f"model {trained['model']} version {trained['model_version']} "
        f"({'champion' if promotion['promoted'] else 'challenger'}: {promotion['reason']})",
        "holdout " + ", ".join(f"{k} {v:.4f}" for k, v in trained["metrics"].items()),
        "baselines ROC-AUC " + ", ".join(f"{k} {v:.4f}" for k, v in trained["baselines_roc_auc"].items()),
        f"MLflow run {trained['mlflow_run_id']} at {trained['tracking_uri']}"]))


def history_view(entries: Iterable[Any]) -> Table:
    """A table's versions, newest first, with the run that wrote each."""
    table = _table(None, "version", "timestamp (UTC)", "operation", "stage", "snapshot", "run id", "config",
                   "models", right=("version",))
    for entry in entries:
        m = entry.metadata
        table.add_row(str(entry.version), f"{entry.timestamp:%Y-%m-%d %H:%M:%S}", entry.operation,
                      m.get("stage", ""), m.get("snapshot_date", ""), m.get("run_id", ""), m.get("config_hash", ""),
                      " ".join(filter(None, (m.get("model_version"), m.get("extra", {}).get("clv_model")))))
    return table


def to_text(renderable: RenderableType) -> str:
    """`renderable` as plain text without trailing blanks."""
    console = Console(file=io.StringIO(), width=PLAIN_WIDTH, color_system=None, force_terminal=False,
                      emoji=False, highlight=False, markup=False)
    console.print(renderable, soft_wrap=True)
    return "\n".join(line.rstrip() for line in console.file.getvalue().rstrip("\n").splitlines())


def format_summary(summary: dict[str, Any]) -> str:
    """The run summary as plain text (what a log or a pipe receives)."""
    return to_text(summary_view(summary))


def show(renderable: RenderableType) -> None:
    """Print to standard output: styled on a terminal, else as `to_text`."""
    console = Console(emoji=False, highlight=False, markup=False)
    if console.is_terminal:
        console.print(renderable)
    else:
        print(to_text(renderable), flush=True)
