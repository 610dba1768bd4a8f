"""`segscale report`: one self-contained HTML page about a snapshot, for analysts (docs/report.md).

Every figure comes from a small aggregate that DuckDB computes over the published Delta tables (through
`segscale.analyst.sql`, so only the snapshot's files are read) or from the churn model's holdout evaluation in MLflow;
no customer rows reach this process. Charts are matplotlib PNGs embedded as data URIs, so the file opens offline.
A section whose input is missing (no previous snapshot, no model, churn or CLV switched off) says so instead of
failing. Nothing here writes to the warehouse or the MLflow store.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from segscale import __version__, catalog
from segscale.analyst.sql import connect, published_snapshots, published_tables
from segscale.config import DeltaSettings
from segscale.errors import InputError
from segscale.io.delta import DeltaStore, absolute_uri
from segscale.transforms.segments import LIFECYCLE_STAGES, TIER_LABELS, VALUE_TIERS

TIER_COLOURS = {"high_value": "#c8871a", "potential": "#3f7fbf", "regular": "#9a9a9a"}
STAGE_COLOURS = {"prospect": "#c9d6e3", "new": "#8fb3d9", "repeat": "#4f86c6", "loyal": "#1f4e8c",
                 "at_risk": "#e0a030", "churned": "#c0392b"}
BAND_ORDER = ("low", "medium", "high", "critical")
BAND_COLOURS = {"low": "#7fb77e", "medium": "#f2c14e", "high": "#f08a4b", "critical": "#c0392b"}


class Missing(Exception):
    """An input a section needs is not there; the section shows the message instead of its content."""


@dataclass
class Section:
    key: str
    title: str
    body: list[str] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)  # data-chart names, for the test and the table of contents
    missing: str | None = None


@dataclass
class Context:
    root: str
    snapshot: dt.date
    tables: dict[str, str]
    con: duckdb.DuckDBPyConnection  # every published table, registered once, showing only the snapshot

    def query(self, sql: str) -> pd.DataFrame:
        """The (small) result of `sql` over the snapshot's rows; Missing when a table it names is not published."""
        absent = [t.name for t in catalog.named_in(sql) if t.name not in self.tables]
        if absent:
            raise Missing(f"table {', '.join(absent)} is not published in this warehouse")
        return self.con.sql(sql).to_arrow_table().to_pandas()  # small: aggregates only


def build_report(root: str, snapshot: dt.date | None = None) -> str:
    """The report's HTML for `snapshot` (default: the latest published one)."""
    known = published_snapshots(root)
    if not known:
        raise InputError(f"customer_scores in {root} has no rows: run segscale run first")
    if snapshot is None:
        snapshot = known[-1]
    elif snapshot not in known:
        raise InputError(f"snapshot {snapshot} is not published in {root}; customer_scores has "
                         f"{', '.join(str(d) for d in known)}")
    tables = published_tables(root)
    ctx = Context(root, snapshot, tables, connect(tables, snapshot=snapshot))
    try:
        sections = [_section(key, title, build, ctx) for key, title, build in SECTIONS]
    finally:
        ctx.con.close()
    return _page(ctx, sections)


def write_report(root: str, out: str, snapshot: dt.date | None = None) -> dict[str, Any]:
    """Build the report and write it to `out` (the file appears whole or not at all)."""
    page = build_report(root, snapshot)
    target = Path(out)
    if target.parent and not target.parent.exists():
        raise InputError(f"cannot write the report to {out}: directory {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return {"out": str(target), "bytes": len(page.encode("utf-8"))}


def _section(key: str, title: str, build: Callable[[Context, Section], None], ctx: Context) -> Section:
    section = Section(key, title)
    try:
        build(ctx, section)
    except Missing as exc:
        section.body, section.charts, section.missing = [], [], str(exc)
    return section


# ---- sections --------------------------------------------------------------------------------------------------
def _headline(ctx: Context, s: Section) -> None:
    row = ctx.query("""
        SELECT count(*) AS customers,
               count(*) FILTER (WHERE recency_days IS NOT NULL) AS buyers,
               sum(monetary) AS revenue,
               sum(monetary) FILTER (WHERE value_tier = 'high_value') AS high_value_revenue,
               count(*) FILTER (WHERE lifecycle_stage IN ('new', 'repeat', 'loyal')) AS active,
               count(*) FILTER (WHERE lifecycle_stage = 'at_risk') AS at_risk,
               count(*) FILTER (WHERE lifecycle_stage = 'churned') AS churned,
               avg(churn_probability) AS mean_churn_probability,
               sum(clv) AS total_clv
        FROM customer_scores""").iloc[0]
    share = row.high_value_revenue / row.revenue if row.revenue else None
    cards = [
        ("customers", _int(row.customers)),
        ("buyers", _int(row.buyers)),
        ("revenue (monetary, net of returns)", _money(row.revenue)),
        ("share of revenue from high_value 高价值", _pct(share)),
        ("active (new, repeat, loyal)", _int(row.active)),
        ("at risk", _int(row.at_risk)),
        ("churned", _int(row.churned)),
        ("mean churn probability of buyers", _pct(row.mean_churn_probability)),
        ("predicted CLV, all customers", _money(row.total_clv)),
    ]
    s.body.append('<div class="cards">' + "".join(
        f'<div class="card"><div class="value">{_e(value)}</div><div class="label">{_e(label)}</div></div>'
        for label, value in cards) + "</div>")


def _tiers(ctx: Context, s: Section) -> None:
    df = ctx.query("""
        SELECT value_tier, count(*) AS customers, sum(monetary) AS revenue, avg(clv) AS mean_clv
        FROM customer_scores GROUP BY value_tier""").set_index("value_tier")
    # Every tier is shown, an empty one with no customers.
    df = df.reindex(list(VALUE_TIERS)).fillna({"customers": 0, "revenue": 0.0})
    df["customer_share"] = df["customers"] / df["customers"].sum()
    df["revenue_share"] = df["revenue"] / df["revenue"].sum() if df["revenue"].sum() else 0.0
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    order = list(reversed(df.index))  # regular at the base, high_value at the top
    colours = [TIER_COLOURS[t] for t in order]
    left.barh(order, [-v for v in df.loc[order, "customer_share"]], color=colours)
    right.barh(order, df.loc[order, "revenue_share"], color=colours)
    for ax, column, title in ((left, "customer_share", "share of customers"),
                              (right, "revenue_share", "share of revenue")):
        for y, value in enumerate(df.loc[order, column]):
            ax.text((-value if ax is left else value), y, f" {value:.1%} ", va="center",
                    ha="right" if ax is left else "left", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.spines[["top", "right", "left", "bottom"]].set_visible(False)
    left.set_xlim(-1.25, 0)
    right.set_xlim(0, 1.25)
    fig.suptitle("Value tier pyramid", fontsize=11)
    _chart(s, "tier-pyramid", fig, "Value tier pyramid: share of customers and of revenue per tier")
    s.body.append(_table(
        ["tier", "customers", "share", "revenue", "revenue share", "mean CLV"],
        [[_tier(t), _int(r.customers), _pct(r.customer_share), _money(r.revenue), _pct(r.revenue_share),
          _money(r.mean_clv)] for t, r in df.iterrows()]))


def _rfm(ctx: Context, s: Section) -> None:
    grid = ctx.query("""
        SELECT r_score, f_score, count(*) AS customers, avg(monetary) AS mean_monetary
        FROM customer_scores WHERE r_score IS NOT NULL GROUP BY ALL""")
    if grid.empty:
        raise Missing("no buyers in this snapshot, so no RFM scores")
    means = grid.pivot(index="r_score", columns="f_score", values="mean_monetary").sort_index(ascending=False)
    counts = grid.pivot(index="r_score", columns="f_score", values="customers").reindex_like(means)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.6))
    image = ax.imshow(means.to_numpy(dtype=float), cmap="YlOrBr", aspect="auto")
    ax.set_xticks(range(len(means.columns)), [str(c) for c in means.columns])
    ax.set_yticks(range(len(means.index)), [str(i) for i in means.index])
    ax.set(xlabel="F score (5 = most frequent)", ylabel="R score (5 = most recent)",
           title="Mean monetary by R and F score (n = customers)")
    for (i, j), value in pd.DataFrame(means.to_numpy()).stack().items():
        ax.text(j, i, f"{value:,.0f}\nn={int(counts.iat[i, j]):,}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="mean monetary")
    _chart(s, "rfm-heatmap", fig, "RFM heatmap: R score by F score, coloured by mean monetary")

    sizes = ctx.query("""
        SELECT rfm_segment, count(*) AS customers, avg(monetary) AS mean_monetary FROM customer_scores
        WHERE rfm_segment IS NOT NULL GROUP BY ALL ORDER BY customers""")
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(sizes) + 1.2))
    ax.barh(sizes["rfm_segment"], sizes["customers"], color="#4f86c6")
    for y, value in enumerate(sizes["customers"]):
        ax.text(value, y, f" {value:,}", va="center", fontsize=8)
    ax.set(xlabel="customers", title="RFM segment sizes")
    ax.spines[["top", "right"]].set_visible(False)
    _chart(s, "rfm-segments", fig, "RFM segment sizes")


def _lifecycle(ctx: Context, s: Section) -> None:
    df = ctx.query("SELECT lifecycle_stage, count(*) AS customers FROM customer_scores GROUP BY ALL"
                   ).set_index("lifecycle_stage")["customers"]
    counts = [int(df.get(stage, 0)) for stage in LIFECYCLE_STAGES]
    total = max(sum(counts), 1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    positions = list(range(len(LIFECYCLE_STAGES)))[::-1]
    ax.barh(positions, counts, left=[(max(counts) - c) / 2 for c in counts],
            color=[STAGE_COLOURS[stage] for stage in LIFECYCLE_STAGES])
    for y, stage, count in zip(positions, LIFECYCLE_STAGES, counts, strict=True):
        ax.text(max(counts) / 2, y, f"{stage}: {count:,} ({count / total:.1%})", ha="center", va="center",
                fontsize=9, color="white" if stage in ("loyal", "churned", "repeat") else "black")
    ax.axhline(1.5, color="#666", linewidth=0.8, linestyle=":")
    ax.set_yticks([])
    ax.set_xticks([])
    ax.spines[["top", "right", "left", "bottom"]].set_visible(False)
    ax.set_title("Lifecycle funnel: prospect → new → repeat → loyal; below the line: at risk and churned",
                 fontsize=10)
    _chart(s, "lifecycle-funnel", fig, "Lifecycle funnel")


def _churn(ctx: Context, s: Section) -> None:
    scored = ctx.query("""
        SELECT model_name, model_version, count(*) AS customers FROM customer_scores
        WHERE churn_probability IS NOT NULL GROUP BY ALL ORDER BY customers DESC""")
    if scored.empty:
        raise Missing("no churn scores in this snapshot (churn.enabled is false, or no model had been trained)")
    name, version = scored["model_name"].iloc[0], int(scored["model_version"].iloc[0])
    s.body.append(f"<p>Scored by <code>models:/{_e(name)}/{version}</code> "
                  f"({_int(scored['customers'].sum())} customers with a purchase).</p>")
    bins = ctx.query("""
        SELECT least(floor(churn_probability * 20), 19) AS bin, count(*) AS customers FROM customer_scores
        WHERE churn_probability IS NOT NULL GROUP BY ALL ORDER BY bin""")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.bar(bins["bin"] / 20 + 0.025, bins["customers"], width=0.05, color="#c0392b", alpha=0.8)
    ax.set(xlabel="churn probability", ylabel="customers", xlim=(0, 1), title="Churn score distribution")
    ax.spines[["top", "right"]].set_visible(False)
    _chart(s, "churn-distribution", fig, "Distribution of churn probability")

    bands = ctx.query("""
        SELECT value_tier, churn_risk_band, count(*) AS customers FROM customer_scores
        WHERE churn_risk_band IS NOT NULL GROUP BY ALL""")
    table = bands.pivot(index="value_tier", columns="churn_risk_band", values="customers").fillna(0)
    table = table.reindex([t for t in VALUE_TIERS if t in table.index])
    table = table[[b for b in BAND_ORDER if b in table.columns]]
    shares = table.div(table.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(7, 2.8))
    left = pd.Series(0.0, index=shares.index)
    for band in shares.columns:
        ax.barh([f"{t}" for t in shares.index], shares[band], left=left, color=BAND_COLOURS.get(band), label=band)
        left += shares[band]
    ax.set(xlabel="share of the tier's scored customers", xlim=(0, 1), title="Churn risk bands by value tier")
    ax.invert_yaxis()
    ax.legend(ncol=len(shares.columns), loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    _chart(s, "churn-risk-by-tier", fig, "Churn risk bands by value tier")
    s.body.append(_table(["tier", *table.columns], [[_tier(t), *(_int(v) for v in r)] for t, r in table.iterrows()]))

    try:
        evaluation = _holdout_evaluation(ctx.root, name, version)
    except Missing as exc:
        s.body.append(f'<p class="missing" data-missing="churn-holdout">{_e(exc)}</p>')
        return
    metrics = evaluation["model"]
    s.body.append(_table(["holdout metric", "value"], [
        ["holdout rows", _int(evaluation.get("holdout_rows"))], ["ROC-AUC", f"{metrics['roc_auc']:.3f}"],
        ["PR-AUC", f"{metrics['pr_auc']:.3f}"], ["Brier score", f"{metrics['brier']:.4f}"],
        ["top-decile lift", f"{metrics['top_decile_lift']:.2f}"], ["churn rate", _pct(metrics["churn_rate"])],
        *([[f"baseline {b} ROC-AUC", f"{m['roc_auc']:.3f}"] for b, m in evaluation.get("baselines", {}).items()]),
    ]))
    calibration = evaluation["calibration"]
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.plot([b["mean_predicted"] for b in calibration], [b["observed"] for b in calibration], marker="o",
            color="#c0392b", label=f"models:/{name}/{version}")
    ax.set(xlabel="mean predicted churn probability", ylabel="observed churn rate", xlim=(0, 1), ylim=(0, 1),
           title="Calibration (holdout)")
    ax.legend(fontsize=8)
    _chart(s, "churn-calibration", fig, "Calibration curve on the model's holdout")
    if "lift" not in evaluation:
        s.body.append('<p class="missing" data-missing="churn-lift">This model version was trained before '
                      'segscale logged the per-decile lift table; retrain to see the lift chart.</p>')
        return
    lift = pd.DataFrame(evaluation["lift"])
    fig, (bars, gains) = plt.subplots(1, 2, figsize=(9, 3.6))
    bars.bar(lift["decile"], lift["lift"], color="#c0392b")
    bars.axhline(1, color="grey", linestyle="--", linewidth=0.8)
    bars.set(xlabel="decile of predicted risk (1 = highest)", ylabel="lift over the churn rate",
             title="Lift by decile (holdout)", xticks=list(lift["decile"]))
    gains.plot([0, *lift["cumulative_share"]], [0, *lift["cumulative_capture"]], marker="o", color="#c0392b",
               label="model")
    gains.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    gains.set(xlabel="share of customers, highest risk first", ylabel="share of churners captured",
              title="Cumulative gains (holdout)")
    gains.legend(fontsize=8)
    _chart(s, "churn-lift", fig, "Lift chart and cumulative gains on the model's holdout")


def _clv(ctx: Context, s: Section) -> None:
    bins = ctx.query("""
        SELECT floor(log10(1 + greatest(clv, 0)) * 10) / 10 AS bin, count(*) AS customers FROM customer_scores
        WHERE clv IS NOT NULL GROUP BY ALL ORDER BY bin""")
    if bins.empty:
        raise Missing("no CLV predictions in this snapshot (clv.enabled is false, or no CLV model was fitted)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.bar(10 ** bins["bin"], bins["customers"], width=10 ** (bins["bin"] + 0.1) - 10 ** bins["bin"], align="edge",
           color="#c8871a")
    ax.set_xscale("log")
    ax.set(xlabel="predicted CLV + 1 (log scale)", ylabel="customers", title="CLV distribution")
    ax.spines[["top", "right"]].set_visible(False)
    _chart(s, "clv-distribution", fig, "Distribution of predicted customer lifetime value")

    stats = ctx.query("""
        SELECT value_tier, count(*) AS customers, sum(clv) AS total, avg(clv) AS mean,
               approx_quantile(clv, [0.05, 0.25, 0.5, 0.75, 0.95]) AS q
        FROM customer_scores WHERE clv IS NOT NULL GROUP BY ALL""").set_index("value_tier")
    stats = stats.reindex([t for t in VALUE_TIERS if t in stats.index])
    boxes = [{"label": t, "whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4], "mean": r["mean"],
              "fliers": []} for t, r in stats.iterrows() for q in [list(r["q"])]]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    artists = ax.bxp(boxes, showmeans=True, patch_artist=True, orientation="horizontal")
    for patch, tier in zip(artists["boxes"], stats.index, strict=True):
        patch.set_facecolor(TIER_COLOURS[tier])
    ax.set_xscale("symlog", linthresh=10)
    ax.set(xlabel="predicted CLV (box: quartiles, whiskers: 5th and 95th percentiles, ▲ mean)",
           title="CLV by value tier")
    ax.invert_yaxis()
    _chart(s, "clv-by-tier", fig, "Predicted CLV by value tier")
    total = stats["total"].sum()
    s.body.append(_table(["tier", "customers", "total CLV", "share", "mean", "median"], [
        [_tier(t), _int(r.customers), _money(r.total), _pct(r.total / total if total else None),
         _money(r["mean"]), _money(list(r["q"])[2])] for t, r in stats.iterrows()]))


def _migration(ctx: Context, s: Section) -> None:
    df = ctx.query("""
        SELECT previous_snapshot_date, coalesce(from_value_tier, '(not a customer)') AS from_tier,
               coalesce(to_value_tier, '(gone)') AS to_tier, sum(customers) AS customers
        FROM segment_migration GROUP BY ALL""")
    if df.empty:
        raise Missing(f"no previous snapshot before {ctx.snapshot}, so no migration to show")
    previous = df["previous_snapshot_date"].iloc[0]
    matrix = df.pivot_table(index="from_tier", columns="to_tier", values="customers", aggfunc="sum", fill_value=0)
    rows = [t for t in (*VALUE_TIERS, "(not a customer)") if t in matrix.index]
    columns = [t for t in (*VALUE_TIERS, "(gone)") if t in matrix.columns]
    matrix = matrix.reindex(index=rows, columns=columns, fill_value=0)
    shares = matrix.div(matrix.sum(axis=1).where(lambda v: v > 0), axis=0).fillna(0)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.imshow(shares.to_numpy(dtype=float), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(columns)):
            ax.text(j, i, f"{int(matrix.iat[i, j]):,}\n{shares.iat[i, j]:.0%}", ha="center", va="center",
                    fontsize=8, color="white" if shares.iat[i, j] > 0.6 else "black")
    ax.set(xlabel=f"value tier on {ctx.snapshot}", ylabel=f"value tier on {previous}",
           title="Tier migration (row shares)")
    _chart(s, "migration-matrix", fig, f"Value tier migration from {previous} to {ctx.snapshot}")


def _retention(ctx: Context, s: Section) -> None:
    df = ctx.query("SELECT * FROM retention_summary")
    if df.empty:
        raise Missing("no retention plan for this snapshot (it needs churn and CLV scores)")
    notes = df["note"].dropna().unique() if "note" in df.columns else []
    if len(notes):
        raise Missing(f"the retention plan of this snapshot is empty: {notes[0]}")
    df = df.set_index("value_tier").reindex([t for t in VALUE_TIERS if t in set(df["value_tier"])])
    budget = float(df["budget"].iloc[0])
    spend, saved = df["spend"].sum(), df["expected_saved_value"].sum()
    s.body.append(f"<p>Budget {_money(budget)}; spent {_money(spend)} ({_pct(spend / budget if budget else None)}) "
                  f"on {_int(df['customers_targeted'].sum())} customers; expected saved value "
                  f"{_money(saved)}.</p>")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    positions = range(len(df))
    ax.bar([p - 0.2 for p in positions], df["spend"], width=0.4, label="spend", color="#9a9a9a")
    ax.bar([p + 0.2 for p in positions], df["expected_saved_value"], width=0.4, label="expected saved value",
           color=[TIER_COLOURS[t] for t in df.index])
    ax.set_xticks(list(positions), [f"{t}\n{r.treatment}" for t, r in df.iterrows()], fontsize=8)
    ax.set(ylabel="amount", title="Retention plan: spend and expected saved value per tier")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    _chart(s, "retention-plan", fig, "Retention budget and expected saved value per tier")
    s.body.append(_table(
        ["tier", "treatment", "scored", "candidates", "targeted", "spend", "share of budget",
         "value at risk targeted", "expected saved value", "ROI"],
        [[_tier(t), r.treatment, _int(r.scored_customers), _int(r.candidates), _int(r.customers_targeted),
          _money(r.spend), _pct(r.share_of_budget), _money(r.value_at_risk_targeted), _money(r.expected_saved_value),
          "—" if _absent(r.roi) else f"{r.roi:.2f}"] for t, r in df.iterrows()]))


def _quality(ctx: Context, s: Section) -> None:
    df = ctx.query("""
        SELECT source_table, reason, count(*) AS rows FROM quarantine GROUP BY ALL
        ORDER BY source_table, rows DESC""")
    if df.empty:
        s.body.append("<p>No row of this snapshot's input was quarantined.</p>")
        return
    labels = [f"{r.source_table}: {r.reason}" for r in df.itertuples()]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(df) + 1.2))
    ax.barh(labels, df["rows"], color="#8e6c8a")
    for y, value in enumerate(df["rows"]):
        ax.text(value, y, f" {value:,}", va="center", fontsize=8)
    ax.set(xlabel="quarantined rows", title="Quarantined rows per table and reason")
    ax.invert_yaxis()
    ax.spines[["top", "right"]].set_visible(False)
    _chart(s, "quarantine-reasons", fig, "Quarantined rows per reason")
    s.body.append(_table(["input table", "reason", "rows"],
                         [[r.source_table, r.reason, _int(r.rows)] for r in df.itertuples()]))


def _lineage(ctx: Context, s: Section) -> None:
    day = ctx.snapshot.isoformat()
    store = DeltaStore(None, DeltaSettings())
    rows, segment_meta, scores_meta = [], {}, {}
    for name, uri in ctx.tables.items():
        commits = [c for c in store.history(uri) if c.metadata.get("snapshot_date") == day]  # newest first
        if not commits:
            continue
        newest = commits[0]
        if name == catalog.CUSTOMER_SCORES.name:
            scores_meta = newest.metadata
            # `segscale score` re-writes the partition without the segment stage's details: find those.
            segment_meta = next((c.metadata for c in commits if c.metadata.get("stage") == "segment"), {})
        rows.append([name, str(newest.version), f"{newest.timestamp:%Y-%m-%d %H:%M:%S} UTC",
                     newest.metadata.get("stage", ""), newest.metadata.get("run_id", ""),
                     newest.metadata.get("config_hash", "")])
    s.body.append("<p>The latest commit of each table for this snapshot (read them again with "
                  "<code>segscale sql --version N</code>):</p>")
    s.body.append(_table(["table", "version", "committed", "stage", "run id", "config hash"], rows))
    models = ctx.query("""
        SELECT any_value(model_name) AS churn_name, max(model_version) AS churn_version,
               max(clv_model_version) AS clv_version FROM customer_scores""").iloc[0]
    extra = segment_meta.get("extra", {})
    s.body.append(_table(["lineage", "value"], [
        ["churn model", "none" if _absent(models.churn_version)
         else f"models:/{models.churn_name}/{int(models.churn_version)}"],
        ["CLV model", "none" if _absent(models.clv_version)
         else extra.get("clv_model") or f"version {int(models.clv_version)}"],
        ["tier thresholds", json.dumps(extra["tier_thresholds"]) if extra.get("tier_thresholds") else "—"],
        ["run id (customer_scores)", scores_meta.get("run_id", "—")],
        ["config hash", scores_meta.get("config_hash", "—")],
        ["segscale version", scores_meta.get("package_version", "—")],
    ]))


def _notes(ctx: Context, s: Section) -> None:
    """The models the snapshot was scored with and what its run worked around, from the `runs` table."""
    runs = ctx.query("""
        SELECT command, started_at, summary_json FROM runs
        WHERE run_id = (SELECT any_value(run_id) FROM customer_scores)""")
    if runs.empty:
        raise Missing("the run that published this snapshot's scores is not in the runs table")
    run = runs.iloc[0]
    summary = json.loads(run.summary_json)
    outcomes = summary.get("models", {})
    s.body.append(f"<p>Scores published by <code>segscale {_e(run.command)}</code> at "
                  f"{pd.Timestamp(run.started_at):%Y-%m-%d %H:%M:%S} UTC.</p>")
    if outcomes:
        s.body.append(_table(["model", "scored with", "training skipped because"], [
            [kind, "—" if o["version"] is None else f"version {o['version']} ({o['status']})",
             o["skipped"] or "—"] for kind, o in outcomes.items()]))
    warnings = summary.get("warnings", [])
    s.body.append('<ul class="warnings">' + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>" if warnings
                  else "<p>The run needed no workaround: every enabled model was trained or scored as configured."
                       "</p>")


SECTIONS: Sequence[tuple[str, str, Callable[[Context, Section], None]]] = (
    ("headline", "Headline numbers", _headline),
    ("notes", "Models and warnings of the run", _notes),
    ("tiers", "Value tiers 高价值 / 潜力 / 普通", _tiers),
    ("rfm", "RFM scores and segments", _rfm),
    ("lifecycle", "Lifecycle", _lifecycle),
    ("churn", "Churn risk", _churn),
    ("clv", "Customer lifetime value", _clv),
    ("migration", "Migration since the previous snapshot", _migration),
    ("retention", "Retention plan", _retention),
    ("quality", "Data quality", _quality),
    ("lineage", "Run lineage", _lineage),
)


# ---- MLflow ------------------------------------------------------------------------------------------------------
def _holdout_evaluation(root: str, name: str, version: int) -> dict[str, Any]:
    """evaluation.json of the MLflow run that trained `name` version `version`, read without creating anything."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from segscale.models.registry import tracking_uri

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise Missing(f"no MLflow store at {uri}, so the holdout evaluation of models:/{name}/{version} is unknown")
    try:
        client = MlflowClient(uri, uri)
        run_id = client.get_model_version(name, str(version)).run_id
        with tempfile.TemporaryDirectory() as scratch:
            path = client.download_artifacts(run_id, "evaluation.json", scratch)
            return json.loads(Path(path).read_text())
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Missing(f"the holdout evaluation of models:/{name}/{version} could not be read from {uri}: "
                      f"{first}") from None


# ---- rendering ---------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    return plt


def _chart(s: Section, name: str, fig: Any, alt: str) -> None:
    plt = _pyplot()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    s.body.append(f'<figure class="chart" data-chart="{name}"><img alt="{_e(alt)}" '
                  f'src="data:image/png;base64,{data}"><figcaption>{_e(alt)}</figcaption></figure>')
    s.charts.append(name)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(ctx: Context, sections: list[Section]) -> str:
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    toc = "".join(f'<li><a href="#{s.key}">{_e(s.title)}</a>{" (not available)" if s.missing else ""}</li>'
                  for s in sections)
    parts = []
    for s in sections:
        content = (f'<p class="missing" data-missing="{s.key}">Not available: {_e(s.missing)}.</p>' if s.missing
                   else "\n".join(s.body))
        parts.append(f'<section id="{s.key}"><h2>{_e(s.title)}</h2>\n{content}\n</section>')
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="segscale {_e(__version__)}">
<title>segscale report: snapshot {ctx.snapshot}</title>
<style>{STYLE}</style>
</head>
<body>
<header><h1>Customer base on {ctx.snapshot}</h1>
<p>Warehouse <code>{_e(absolute_uri(ctx.root))}</code> · generated {generated} by segscale {_e(__version__)}</p>
<nav><ol>{toc}</ol></nav></header>
<main>
{chr(10).join(parts)}
</main>
</body>
</html>
"""


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK SC", "PingFang SC",
       "Microsoft YaHei", sans-serif; margin: 0 auto; max-width: 1000px; padding: 1.5rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
header p { color: #666; margin-top: 0; } nav ol { columns: 2; font-size: 0.9rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 0.6rem; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6rem 0.8rem; background: #fafafa; }
.card .value { font-size: 1.4rem; font-weight: 600; } .card .label { font-size: 0.8rem; color: #555; }
figure.chart { margin: 1rem 0; } figure.chart img { max-width: 100%; height: auto; }
figcaption { font-size: 0.8rem; color: #666; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
p.missing { background: #fff6e0; border-left: 4px solid #e0a030; padding: 0.5rem 0.8rem; }
code { font-size: 0.85em; }
"""


# ---- formatting --------------------------------------------------------------------------------------------------
def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _tier(name: str) -> str:
    return f"{name} {TIER_LABELS.get(name, '')}".strip()


def _int(value: Any) -> str:
    return "—" if _absent(value) else f"{int(value):,}"


def _money(value: Any) -> str:
    return "—" if _absent(value) else f"{float(value):,.0f}"


def _pct(value: Any) -> str:
    return "—" if _absent(value) else f"{float(value):.1%}"


def _e(value: Any) -> str:
    return html.escape(str(value))
