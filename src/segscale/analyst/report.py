"""`segscale report`: one self-contained HTML page about a snapshot, for analysts (docs/report.md).

Every figure comes from a small aggregate that DuckDB computes over the published Delta tables (through
`segscale.analyst.sql`, so only the snapshot's files are read) or from the churn model's holdout evaluation in MLflow;
no customer rows reach this process. Each section's builder computes the values and draws the charts (matplotlib PNGs
embedded as data URIs, so the file opens offline); its template (templates/<section>.html.j2) lays them out and holds
the text. A section whose input is missing (no previous snapshot, no model, churn or CLV switched off) says so
instead of failing. Nothing here writes to the warehouse or the MLflow store.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import jinja2
import pandas as pd
from deltalake import DeltaTable
from markupsafe import Markup

from segscale import __version__, catalog, charts
from segscale.analyst.sql import connect, snapshots_in, visible_tables
from segscale.config import DeltaSettings
from segscale.errors import InputError
from segscale.io.delta import DeltaStore, absolute_uri
from segscale.models.churn import RISK_BAND_COLOURS, RISK_BANDS
from segscale.transforms.segments import (
    ACTIVE_STAGES,
    AT_RISK,
    CHURNED,
    HIGH_VALUE,
    LIFECYCLE_STAGES,
    PROSPECT,
    STAGE_COLOURS,
    TIER_COLOURS,
    TIER_LABELS,
    VALUE_TIERS,
)

Values = dict[str, Any]


class Missing(Exception):
    """An input a section needs is not there; the section shows the message instead of its content."""


@dataclass(frozen=True)
class Chart:
    """A drawn figure: `name` is its data-chart attribute (the tests find charts by it), `alt` its caption."""

    name: str
    alt: str
    uri: str


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    html: Markup  # the section's template rendered with its builder's values; empty when missing
    missing: str | None = None


@dataclass
class Context:
    root: str
    snapshot: dt.date
    tables: dict[str, DeltaTable]  # name -> the version the report reads
    con: duckdb.DuckDBPyConnection  # every published table, registered once, showing only the snapshot

    def query(self, sql: str) -> pd.DataFrame:
        """The (small) result of `sql` over the snapshot's rows; Missing when a table it names is not published."""
        absent = [t.name for t in catalog.named_in(sql) if t.name not in self.tables]
        if absent:
            raise Missing(f"table {', '.join(absent)} is not published in this warehouse")
        return self.con.sql(sql).to_arrow_table().to_pandas()  # small: aggregates only


def build_report(root: str, snapshot: dt.date | None = None, *, run_id: str | None = None,
                 as_of: dt.datetime | None = None) -> str:
    """The report's HTML for `snapshot` (default: the latest published one), from the tables as the newest
    completed run left them, or as run `run_id` or the last run completed by `as_of` did (`visible_tables`)."""
    tables = visible_tables(root, run_id=run_id, as_of=as_of)
    known = snapshots_in(root, tables)
    if not known:
        raise InputError(f"customer_scores in {root} has no rows: run segscale run first")
    if snapshot is None:
        snapshot = known[-1]
    elif snapshot not in known:
        raise InputError(f"snapshot {snapshot} is not published in {root}; customer_scores has "
                         f"{', '.join(str(d) for d in known)}")
    ctx = Context(root, snapshot, tables, connect(tables, snapshot=snapshot))
    try:
        sections = [_section(key, title, build, ctx) for key, title, build in SECTIONS]
    finally:
        ctx.con.close()
    return render("report.html.j2", version=__version__, snapshot=ctx.snapshot, warehouse=absolute_uri(ctx.root),
                  generated=dt.datetime.now(dt.UTC), sections=sections)


def write_report(root: str, out: str, snapshot: dt.date | None = None, *, run_id: str | None = None,
                 as_of: dt.datetime | None = None) -> dict[str, Any]:
    """Build the report and write it to `out` (the file appears whole or not at all)."""
    page = build_report(root, snapshot, run_id=run_id, as_of=as_of)
    target = Path(out)
    if target.parent and not target.parent.exists():
        raise InputError(f"cannot write the report to {out}: directory {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return {"out": str(target), "bytes": len(page.encode("utf-8"))}


def _section(key: str, title: str, build: Callable[[Context], Values], ctx: Context) -> Section:
    try:
        values = build(ctx)
    except Missing as exc:
        return Section(key, title, Markup(""), str(exc))
    return Section(key, title, Markup(render(f"{key}.html.j2", **values)))


def _chart(name: str, fig: Any, alt: str) -> Chart:
    return Chart(name, alt, charts.data_uri(fig))


# ---- sections: each returns the values its template shows -------------------------------------------------------
def _headline(ctx: Context) -> Values:
    row = ctx.query(f"""
        SELECT count(*) AS customers,
               count(*) FILTER (WHERE recency_days IS NOT NULL) AS buyers,
               sum(monetary) AS revenue,
               sum(monetary) FILTER (WHERE value_tier = '{HIGH_VALUE}') AS high_value_revenue,
               count(*) FILTER (WHERE lifecycle_stage IN {_sql_list(ACTIVE_STAGES)}) AS active,
               count(*) FILTER (WHERE lifecycle_stage = '{AT_RISK}') AS at_risk,
               count(*) FILTER (WHERE lifecycle_stage = '{CHURNED}') AS churned,
               avg(churn_probability) AS mean_churn_probability,
               sum(clv) AS total_clv
        FROM customer_scores""").iloc[0]
    share = row.high_value_revenue / row.revenue if row.revenue else None
    return {"row": row.to_dict(), "high_value_share": share, "high_value": HIGH_VALUE, "active": ACTIVE_STAGES}


def _tiers(ctx: Context) -> Values:
    df = ctx.query("""
        SELECT value_tier, count(*) AS customers, sum(monetary) AS revenue, avg(clv) AS mean_clv
        FROM customer_scores GROUP BY value_tier""").set_index("value_tier")
    # Every tier is shown, an empty one with no customers.
    df = df.reindex(list(VALUE_TIERS)).fillna({"customers": 0, "revenue": 0.0})
    df["customer_share"] = df["customers"] / df["customers"].sum()
    df["revenue_share"] = df["revenue"] / df["revenue"].sum() if df["revenue"].sum() else 0.0
    plt = charts.pyplot()
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
    return {"pyramid": _chart("tier-pyramid", fig, "Value tier pyramid: share of customers and of revenue per tier"),
            "tiers": _records(df, "tier")}


def _rfm(ctx: Context) -> Values:
    grid = ctx.query("""
        SELECT r_score, f_score, count(*) AS customers, avg(monetary) AS mean_monetary
        FROM customer_scores WHERE r_score IS NOT NULL GROUP BY ALL""")
    if grid.empty:
        raise Missing("no buyers in this snapshot, so no RFM scores")
    means = grid.pivot(index="r_score", columns="f_score", values="mean_monetary").sort_index(ascending=False)
    counts = grid.pivot(index="r_score", columns="f_score", values="customers").reindex_like(means)
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.6))
    image = ax.imshow(means.to_numpy(dtype=float), cmap="YlOrBr", aspect="auto")
    ax.set_xticks(range(len(means.columns)), [str(c) for c in means.columns])
    ax.set_yticks(range(len(means.index)), [str(i) for i in means.index])
    ax.set(xlabel="F score (5 = most frequent)", ylabel="R score (5 = most recent)",
           title="Mean monetary by R and F score (n = customers)")
    for (i, j), value in pd.DataFrame(means.to_numpy()).stack().items():
        ax.text(j, i, f"{value:,.0f}\nn={int(counts.iat[i, j]):,}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="mean monetary")
    heatmap = _chart("rfm-heatmap", fig, "RFM heatmap: R score by F score, coloured by mean monetary")

    sizes = ctx.query("""
        SELECT rfm_segment, count(*) AS customers, avg(monetary) AS mean_monetary FROM customer_scores
        WHERE rfm_segment IS NOT NULL GROUP BY ALL ORDER BY customers""")
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(sizes) + 1.2))
    ax.barh(sizes["rfm_segment"], sizes["customers"], color=charts.COUNT)
    for y, value in enumerate(sizes["customers"]):
        ax.text(value, y, f" {value:,}", va="center", fontsize=8)
    ax.set(xlabel="customers", title="RFM segment sizes")
    ax.spines[["top", "right"]].set_visible(False)
    return {"heatmap": heatmap, "segments": _chart("rfm-segments", fig, "RFM segment sizes")}


def _lifecycle(ctx: Context) -> Values:
    df = ctx.query("SELECT lifecycle_stage, count(*) AS customers FROM customer_scores GROUP BY ALL"
                   ).set_index("lifecycle_stage")["customers"]
    counts = [int(df.get(stage, 0)) for stage in LIFECYCLE_STAGES]
    total = max(sum(counts), 1)
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    positions = list(range(len(LIFECYCLE_STAGES)))[::-1]
    ax.barh(positions, counts, left=[(max(counts) - c) / 2 for c in counts],
            color=[STAGE_COLOURS[stage] for stage in LIFECYCLE_STAGES])
    for y, stage, count in zip(positions, LIFECYCLE_STAGES, counts, strict=True):
        ax.text(max(counts) / 2, y, f"{stage}: {count:,} ({count / total:.1%})", ha="center", va="center",
                fontsize=9, color=charts.ink_on(STAGE_COLOURS[stage]))
    ax.axhline(1.5, color="#666", linewidth=0.8, linestyle=":")
    ax.set_yticks([])
    ax.set_xticks([])
    ax.spines[["top", "right", "left", "bottom"]].set_visible(False)
    ax.set_title(f"Lifecycle funnel: {' → '.join((PROSPECT, *ACTIVE_STAGES))}; below the line: at risk and churned",
                 fontsize=10)
    return {"funnel": _chart("lifecycle-funnel", fig, "Lifecycle funnel")}


def _churn(ctx: Context) -> Values:
    scored = ctx.query("""
        SELECT model_name, model_version, count(*) AS customers FROM customer_scores
        WHERE churn_probability IS NOT NULL GROUP BY ALL ORDER BY customers DESC""")
    if scored.empty:
        raise Missing("no churn scores in this snapshot (churn.enabled is false, or no model had been trained)")
    name, version = scored["model_name"].iloc[0], int(scored["model_version"].iloc[0])
    values: Values = {"model": f"models:/{name}/{version}", "scored": scored["customers"].sum()}
    bins = ctx.query("""
        SELECT least(floor(churn_probability * 20), 19) AS bin, count(*) AS customers FROM customer_scores
        WHERE churn_probability IS NOT NULL GROUP BY ALL ORDER BY bin""")
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.bar(bins["bin"] / 20 + 0.025, bins["customers"], width=0.05, color=charts.RISK, alpha=0.8)
    ax.set(xlabel="churn probability", ylabel="customers", xlim=(0, 1), title="Churn score distribution")
    ax.spines[["top", "right"]].set_visible(False)
    values["distribution"] = _chart("churn-distribution", fig, "Distribution of churn probability")

    bands = ctx.query("""
        SELECT value_tier, churn_risk_band, count(*) AS customers FROM customer_scores
        WHERE churn_risk_band IS NOT NULL GROUP BY ALL""")
    table = bands.pivot(index="value_tier", columns="churn_risk_band", values="customers").fillna(0)
    table = table.reindex([t for t in VALUE_TIERS if t in table.index])
    table = table[[b for b in RISK_BANDS if b in table.columns]]
    shares = table.div(table.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(7, 2.8))
    left = pd.Series(0.0, index=shares.index)
    for band in shares.columns:
        ax.barh([f"{t}" for t in shares.index], shares[band], left=left, color=RISK_BAND_COLOURS.get(band),
                label=band)
        left += shares[band]
    ax.set(xlabel="share of the tier's scored customers", xlim=(0, 1), title="Churn risk bands by value tier")
    ax.invert_yaxis()
    ax.legend(ncol=len(shares.columns), loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    values["risk_by_tier"] = _chart("churn-risk-by-tier", fig, "Churn risk bands by value tier")
    values["bands"] = list(table.columns)
    values["band_counts"] = [(t, list(r)) for t, r in table.iterrows()]

    try:
        evaluation = _holdout_evaluation(ctx.root, name, version)
    except Missing as exc:
        return {**values, "holdout_missing": str(exc)}
    calibration = evaluation["calibration"]
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], linestyle="--", color=charts.REFERENCE, label="perfect calibration")
    ax.plot([b["mean_predicted"] for b in calibration], [b["observed"] for b in calibration], marker="o",
            color=charts.RISK, label=f"models:/{name}/{version}")
    ax.set(xlabel="mean predicted churn probability", ylabel="observed churn rate", xlim=(0, 1), ylim=(0, 1),
           title="Calibration (holdout)")
    ax.legend(fontsize=8)
    values.update(holdout_missing=None, evaluation=evaluation,
                  calibration=_chart("churn-calibration", fig, "Calibration curve on the model's holdout"), lift=None)
    if "lift" not in evaluation:  # a version trained before segscale logged the per-decile lift table
        return values
    lift = pd.DataFrame(evaluation["lift"])
    fig, (bars, gains) = plt.subplots(1, 2, figsize=(9, 3.6))
    bars.bar(lift["decile"], lift["lift"], color=charts.RISK)
    bars.axhline(1, color=charts.REFERENCE, linestyle="--", linewidth=0.8)
    bars.set(xlabel="decile of predicted risk (1 = highest)", ylabel="lift over the churn rate",
             title="Lift by decile (holdout)", xticks=list(lift["decile"]))
    gains.plot([0, *lift["cumulative_share"]], [0, *lift["cumulative_capture"]], marker="o", color=charts.RISK,
               label="model")
    gains.plot([0, 1], [0, 1], linestyle="--", color=charts.REFERENCE, label="random")
    gains.set(xlabel="share of customers, highest risk first", ylabel="share of churners captured",
              title="Cumulative gains (holdout)")
    gains.legend(fontsize=8)
    values["lift"] = _chart("churn-lift", fig, "Lift chart and cumulative gains on the model's holdout")
    return values


def _clv(ctx: Context) -> Values:
    bins = ctx.query("""
        SELECT floor(log10(1 + greatest(clv, 0)) * 10) / 10 AS bin, count(*) AS customers FROM customer_scores
        WHERE clv IS NOT NULL GROUP BY ALL ORDER BY bin""")
    if bins.empty:
        raise Missing("no CLV predictions in this snapshot (clv.enabled is false, or no CLV model was fitted)")
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.bar(10 ** bins["bin"], bins["customers"], width=10 ** (bins["bin"] + 0.1) - 10 ** bins["bin"], align="edge",
           color=charts.VALUE)
    ax.set_xscale("log")
    ax.set(xlabel="predicted CLV + 1 (log scale)", ylabel="customers", title="CLV distribution")
    ax.spines[["top", "right"]].set_visible(False)
    distribution = _chart("clv-distribution", fig, "Distribution of predicted customer lifetime value")

    stats = ctx.query("""
        SELECT value_tier, count(*) AS customers, sum(clv) AS total, avg(clv) AS mean,
               approx_quantile(clv, [0.05, 0.25, 0.5, 0.75, 0.95]) AS q,
               median(clv_p10) AS median_p10, median(clv_p90) AS median_p90
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
    total = stats["total"].sum()
    stats["share"] = stats["total"] / total if total else None
    stats["median"] = [list(q)[2] for q in stats["q"]]
    return {"distribution": distribution, "by_tier": _chart("clv-by-tier", fig, "Predicted CLV by value tier"),
            "tiers": _records(stats.drop(columns="q"), "tier"),
            "banded": bool(stats["median_p90"].notna().any())}


def _migration(ctx: Context) -> Values:
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
    plt = charts.pyplot()
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
    return {"matrix": _chart("migration-matrix", fig, f"Value tier migration from {previous} to {ctx.snapshot}")}


def _retention(ctx: Context) -> Values:
    df = ctx.query("SELECT * FROM retention_summary")
    if df.empty:
        raise Missing("no retention plan for this snapshot (it needs churn and CLV scores)")
    notes = df["note"].dropna().unique() if "note" in df.columns else []
    if len(notes):
        raise Missing(f"the retention plan of this snapshot is empty: {notes[0]}")
    df = df.set_index("value_tier").reindex([t for t in VALUE_TIERS if t in set(df["value_tier"])])
    if "customers_controlled" not in df.columns:  # a plan published before the control groups
        df["customers_controlled"] = None
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    positions = range(len(df))
    ax.bar([p - 0.2 for p in positions], df["spend"], width=0.4, label="spend", color=charts.NEUTRAL)
    ax.bar([p + 0.2 for p in positions], df["expected_saved_value"], width=0.4, label="expected saved value",
           color=[TIER_COLOURS[t] for t in df.index])
    ax.set_xticks(list(positions), [f"{t}\n{r.treatment}" for t, r in df.iterrows()], fontsize=8)
    ax.set(ylabel="amount", title="Retention plan: spend and expected saved value per tier")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    budget, spend = float(df["budget"].iloc[0]), df["spend"].sum()
    return {"budget": budget, "spend": spend, "spend_share": spend / budget if budget else None,
            "targeted": df["customers_targeted"].sum(), "saved": df["expected_saved_value"].sum(),
            "controlled": None if df["customers_controlled"].isna().all() else df["customers_controlled"].sum(),
            "plan": _chart("retention-plan", fig, "Retention budget and expected saved value per tier"),
            "tiers": _records(df, "tier")}


def _outcomes(ctx: Context) -> Values:
    """The plans measured by this snapshot: treated against control per tier with intervals, and the uplift's
    history."""
    if "retention_outcomes" not in ctx.tables:
        raise Missing("no plan has been measured yet: a plan is measured by the first run on or after its snapshot "
                      "+ churn.horizon_days")
    df = ctx.query(f"""
        SELECT * FROM retention_outcomes__delta WHERE measured_on <= DATE '{ctx.snapshot.isoformat()}'
        ORDER BY snapshot_date, value_tier""")
    if df.empty:
        raise Missing(f"no plan had been measured by {ctx.snapshot}: a plan is measured by the first run on or "
                      "after its snapshot + churn.horizon_days")
    plt = charts.pyplot()
    tiers = [t for t in VALUE_TIERS if t in set(df["value_tier"])]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for k, tier in enumerate(tiers):
        rows = df[(df["value_tier"] == tier) & df["incremental_retention"].notna()]
        x = (pd.to_datetime(rows["snapshot_date"]) + pd.to_timedelta(6 * (k - 1), unit="D")).to_numpy()
        measured, low, high = (rows[c].to_numpy(dtype=float) for c in (
            "incremental_retention", "incremental_retention_low", "incremental_retention_high"))
        ax.errorbar(x, measured, yerr=[measured - low, high - measured], fmt="o", capsize=3,
                    color=TIER_COLOURS[tier], label=f"{tier}: measured")
        ax.scatter(x, rows["expected_incremental_retention"].to_numpy(dtype=float), marker="_", s=160,
                   color=TIER_COLOURS[tier], label=f"{tier}: expected")
    ax.axhline(0, color=charts.NEUTRAL, linewidth=0.8)
    ax.set(ylabel="treated − control retention", title="Incremental retention per plan (with intervals)")
    ax.legend(fontsize=7, ncol=2)
    ax.spines[["top", "right"]].set_visible(False)
    measured = _chart("retention-outcomes", fig, "Incremental retention of each measured plan, treated against the "
                                                 "randomized control group, per tier")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for tier in tiers:
        rows = df[(df["value_tier"] == tier) & df["learned_uplift"].notna()]
        x = pd.to_datetime(rows["snapshot_date"])
        ax.plot(x, rows["learned_uplift"], marker="o", color=TIER_COLOURS[tier], label=f"{tier}: learned")
        ax.fill_between(x, rows["learned_uplift_low"], rows["learned_uplift_high"], color=TIER_COLOURS[tier],
                        alpha=0.15)
        ax.plot(x, rows["uplift_planned"], linestyle="--", color=TIER_COLOURS[tier], alpha=0.7,
                label=f"{tier}: planned with")
    ax.set(ylabel="uplift (relative churn reduction)", title="Uplift learned from the measured plans")
    ax.legend(fontsize=7, ncol=2)
    ax.spines[["top", "right"]].set_visible(False)
    history = _chart("uplift-history", fig, "The uplift learned after each measured plan, with its interval, and "
                                            "the uplift each plan used")
    return {"plans": df["snapshot_date"].nunique(), "rows": df.to_dict("records"), "measured": measured,
            "history": history, "model": _uplift_model(ctx)}


def _uplift_model(ctx: Context) -> Values | None:
    """The latest per-customer uplift model fitted by the snapshot, with its Qini curve against random targeting;
    None without one (retention.uplift_model is off by default)."""
    if "uplift_models" not in ctx.tables:
        return None
    df = ctx.query(f"""
        SELECT * FROM uplift_models__delta WHERE snapshot_date <= DATE '{ctx.snapshot.isoformat()}'
        ORDER BY snapshot_date DESC LIMIT 1""")
    if df.empty:
        return None
    model = df.iloc[0].to_dict()
    qini = None
    if model["qini_coefficient"] is not None and not pd.isna(model["qini_coefficient"]):
        depths, gains = list(model["qini_depths"]), list(model["qini_gains"])
        plt = charts.pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        ax.plot(depths, gains, marker="o", color=TIER_COLOURS["potential"], label="uplift model")
        ax.plot([0, 1], [0, gains[-1]], linestyle="--", color=charts.NEUTRAL, label="random targeting")
        ax.set(xlabel="share of evaluated customers targeted, by predicted uplift",
               ylabel="incremental retained per customer", title="Qini curve on held-out customers")
        ax.legend(fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        qini = _chart("uplift-qini", fig, "Qini curve of the per-customer uplift model on the customers held out of "
                                          "its fit, against random targeting")
    return {**model, "plans": list(model["plans"]), "qini": qini}


def _economics(ctx: Context) -> Values:
    """Per tier: revenue against cost to serve over the last year, margin, CLV per spend, changes, warnings."""
    df = ctx.query("SELECT * FROM tier_economics")
    if df.empty:
        raise Missing("no tier economics for this snapshot (written with the retention plan)")
    df = df.set_index("value_tier").reindex([t for t in VALUE_TIERS if t in set(df["value_tier"])])
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    positions = range(len(df))
    ax.bar([p - 0.2 for p in positions], df["revenue_365d"], width=0.4, label="revenue, last 365 days",
           color=[TIER_COLOURS[t] for t in df.index])
    ax.bar([p + 0.2 for p in positions], df["interaction_cost_365d"], width=0.4, label="interaction costs",
           color=charts.NEUTRAL)
    ax.bar([p + 0.2 for p in positions], df["treatment_spend_365d"], width=0.4, bottom=df["interaction_cost_365d"],
           label="retention spend", color="#5a5a5a")
    ax.set_xticks(list(positions), list(df.index), fontsize=8)
    ax.set(ylabel="amount", title="Revenue and cost to serve per tier, last 365 days")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return {"tiers": _records(df, "tier"), "warnings": [w for w in df["warning"] if isinstance(w, str)],
            "previous": next((p for p in df["previous_snapshot"] if not _absent(p)), None),
            "chart": _chart("tier-economics", fig, "Revenue against cost to serve per value tier")}


DRIFT_ROWS = 15  # features in the PSI chart, the most drifting first


def _monitoring(ctx: Context) -> Values:
    """Alerts and retrain decisions; PSI of the churn model's features and scores against its training rows;
    backtests of the snapshots that matured by this one: churn metrics, calibration by decile, CLV expected
    against realized."""
    rows = ctx.query("SELECT * FROM model_monitoring")
    if rows.empty:
        raise Missing("no model monitoring for this snapshot (monitoring.enabled is false, or the snapshot was "
                      "published before monitoring)")
    alerts = rows[rows["alert"] & (rows["kind"] != "decision")]
    decisions = rows[rows["kind"] == "decision"][["model", "model_version", "alert", "note"]]
    values: Values = {"alerts": alerts.to_dict("records"), "decisions": decisions.to_dict("records"),
                      "drift": None, "calibration": None}
    drift = rows[rows["kind"] == "drift"].sort_values("value", ascending=False).head(DRIFT_ROWS)
    plt = charts.pyplot()
    if not drift.empty:
        fig, ax = plt.subplots(figsize=(6.5, 0.25 * len(drift) + 1.2))
        ax.barh(drift["subject"], drift["value"], color=[charts.RISK if a else charts.COUNT for a in drift["alert"]])
        ax.axvline(drift["threshold"].iloc[0], color=charts.REFERENCE, linestyle="--", label="alert above")
        ax.invert_yaxis()
        ax.set(xlabel="population stability index against the training rows", title="Drift of the churn model")
        ax.legend(fontsize=8)
        values["drift"] = _chart("monitoring-drift", fig, "Population stability index of each churn model input")
    churn = rows[(rows["kind"] == "backtest") & (rows["model"] == "churn")]
    values["churn"] = [{"reference_date": day, **dict(zip(group["metric"], group["value"], strict=True))}
                       for day, group in churn.groupby("reference_date")]
    deciles = rows[rows["kind"] == "calibration"]
    if not deciles.empty:
        latest = deciles[deciles["reference_date"] == deciles["reference_date"].max()]
        table = latest.pivot(index="subject", columns="metric", values="value")
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], linestyle="--", color=charts.REFERENCE, label="perfect calibration")
        ax.plot(table["mean_predicted"], table["observed"], marker="o", color=charts.RISK, label="deciles")
        ax.set(xlabel="mean predicted churn probability", ylabel="observed churn rate",
               title=f"Calibration of the scores of {latest['reference_date'].iloc[0]}")
        ax.legend(fontsize=8)
        values["calibration"] = _chart("monitoring-calibration", fig, "Calibration by decile on matured labels")
    clv = rows[(rows["kind"] == "backtest") & (rows["model"] == "clv")]
    values["clv"] = [{"reference_date": day, "tier": tier, **dict(zip(group["metric"], group["value"], strict=True))}
                     for (day, tier), group in clv.groupby(["reference_date", "subject"])]
    return values


QUEUE_ROWS = 20  # of at_risk_queue, the highest value at risk first


def _queue(ctx: Context) -> Values:
    """The top of the account managers' queue with each customer's three reasons, and the reasons most often
    first."""
    top = ctx.query(f"""
        SELECT customer_id, value_tier, churn_probability, clv, value_at_risk, treatment_group, planned_treatment,
               reason_1, reason_2, reason_3
        FROM at_risk_queue ORDER BY value_at_risk DESC NULLS LAST, customer_id LIMIT {QUEUE_ROWS}""")
    if top.empty:
        raise Missing("no customer in the at-risk queue for this snapshot (no churn model scored it, "
                      "queue.enabled is false, or nobody in queue.tiers is at risk)")
    totals = ctx.query("""
        SELECT count(*) AS customers, sum(value_at_risk) AS value_at_risk, count_if(on_request) AS on_request
        FROM at_risk_queue""").iloc[0]
    common = ctx.query("""
        SELECT reason_features[1] AS feature, count(*) AS customers FROM at_risk_queue
        WHERE len(reason_features) > 0 GROUP BY ALL ORDER BY customers DESC, feature LIMIT 8""")
    return {"rows": _records(top.set_index("customer_id"), "customer_id"), "customers": totals["customers"],
            "value_at_risk": totals["value_at_risk"], "on_request": totals["on_request"],
            "common": common.to_dict("records")}


def _regions(ctx: Context) -> Values:
    """Tiers, the high-value customers at risk, value and the plan per region (customer_attributes)."""
    tiers = ", ".join(f"count(*) FILTER (WHERE s.value_tier = '{t}') AS {t}" for t in VALUE_TIERS)
    df = ctx.query(f"""
        SELECT a.region, count(*) AS customers, {tiers},
               count(*) FILTER (WHERE s.value_tier = '{HIGH_VALUE}' AND s.lifecycle_stage = '{AT_RISK}')
                   AS high_value_at_risk,
               sum(s.clv) AS clv
        FROM customer_scores s JOIN customer_attributes a USING (customer_id)
        GROUP BY ALL ORDER BY customers DESC""")
    if df["region"].isna().all():
        raise Missing("the input gives no region for its customers (customers.region)")
    if "retention_plan" in ctx.tables:
        plan = ctx.query("""
            SELECT a.region, count(*) AS targeted, sum(p.cost) AS spend, sum(p.expected_saved_value) AS saved
            FROM retention_plan p JOIN customer_attributes a USING (customer_id)
            WHERE p.selected GROUP BY ALL""")
        df = df.merge(plan, on="region", how="left").fillna({"targeted": 0, "spend": 0.0, "saved": 0.0})
    else:  # no plan published: its columns stay empty
        df = df.assign(targeted=None, spend=None, saved=None)
    df["region"] = df["region"].fillna("(none)")
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(df) + 1.4))
    left = pd.Series(0.0, index=df.index)
    for tier in reversed(VALUE_TIERS):  # regular first, high value at the right end
        ax.barh(df["region"], df[tier], left=left, color=TIER_COLOURS[tier], label=tier)
        left += df[tier]
    ax.set(xlabel="customers", title="Value tiers per region")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return {"chart": _chart("region-tiers", fig, "Customers per value tier and region"),
            "regions": df.to_dict("records")}


def _quality(ctx: Context) -> Values:
    df = ctx.query("""
        SELECT source_table, reason, count(*) AS rows FROM quarantine GROUP BY ALL
        ORDER BY source_table, rows DESC""")
    if df.empty:
        return {"reasons": [], "chart": None}
    labels = [f"{r.source_table}: {r.reason}" for r in df.itertuples()]
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(df) + 1.2))
    ax.barh(labels, df["rows"], color=charts.QUALITY)
    for y, value in enumerate(df["rows"]):
        ax.text(value, y, f" {value:,}", va="center", fontsize=8)
    ax.set(xlabel="quarantined rows", title="Quarantined rows per table and reason")
    ax.invert_yaxis()
    ax.spines[["top", "right"]].set_visible(False)
    return {"reasons": df.to_dict("records"), "chart": _chart("quarantine-reasons", fig, "Quarantined rows per reason")}


def _lineage(ctx: Context) -> Values:
    day = ctx.snapshot.isoformat()
    store = DeltaStore(None, DeltaSettings())
    commits, segment_meta, scores_meta = [], {}, {}
    for name, table in ctx.tables.items():
        history = [c for c in store.history(table.table_uri)  # newest first, up to the version the report reads
                   if c.version <= table.version() and c.metadata.get("snapshot_date") == day]
        if not history:
            continue
        newest = history[0]
        if name == catalog.CUSTOMER_SCORES.name:
            scores_meta = newest.metadata
            # `segscale score` re-writes the partition without the segment stage's details: find those.
            segment_meta = next((c.metadata for c in history if c.metadata.get("stage") == "segment"), {})
        commits.append({"table": name, "version": newest.version, "timestamp": newest.timestamp,
                        "metadata": newest.metadata})
    models = ctx.query("""
        SELECT any_value(model_name) AS churn_name, max(model_version) AS churn_version,
               max(clv_model_version) AS clv_version FROM customer_scores""").iloc[0]
    extra = segment_meta.get("extra", {})
    return {
        "commits": commits, "scores": scores_meta,
        "churn_model": None if _absent(models.churn_version)
        else f"models:/{models.churn_name}/{int(models.churn_version)}",
        "clv_model": None if _absent(models.clv_version)
        else extra.get("clv_model") or f"version {int(models.clv_version)}",
        "thresholds": json.dumps(extra["tier_thresholds"]) if extra.get("tier_thresholds") else None,
    }


def _notes(ctx: Context) -> Values:
    """The models the snapshot was scored with and what its run worked around, from the `runs` table."""
    runs = ctx.query("""
        SELECT command, started_at, summary_json FROM runs
        WHERE run_id = (SELECT any_value(run_id) FROM customer_scores)""")
    if runs.empty:
        raise Missing("the run that published this snapshot's scores is not in the runs table")
    run = runs.iloc[0]
    summary = json.loads(run.summary_json)
    return {"command": run.command, "started_at": pd.Timestamp(run.started_at), "outcomes": summary.get("models", {}),
            "warnings": summary.get("warnings", [])}


SECTIONS: Sequence[tuple[str, str, Callable[[Context], Values]]] = (
    ("headline", "Headline numbers", _headline),
    ("notes", "Models and warnings of the run", _notes),
    ("tiers", "Value tiers " + " / ".join(TIER_LABELS[t] for t in VALUE_TIERS), _tiers),
    ("rfm", "RFM scores and segments", _rfm),
    ("lifecycle", "Lifecycle", _lifecycle),
    ("churn", "Churn risk", _churn),
    ("clv", "Customer lifetime value", _clv),
    ("migration", "Migration since the previous snapshot", _migration),
    ("retention", "Retention plan", _retention),
    ("queue", "At-risk queue: who to call first, and why", _queue),
    ("monitoring", "Model monitoring: do the models still work?", _monitoring),
    ("outcomes", "Retention outcomes: treated against control", _outcomes),
    ("economics", "Tier economics", _economics),
    ("regions", "Regions", _regions),
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
def render(template: str, **values: Any) -> str:
    """templates/`template` rendered with `values`; every value is HTML-escaped unless it is Markup."""
    return _templates().get_template(template).render(**values)


@functools.cache
def _templates() -> jinja2.Environment:
    # autoescape: the page shows names, reasons and warnings taken from the data. StrictUndefined: a template that
    # names a value its builder does not give fails the report instead of printing nothing.
    env = jinja2.Environment(loader=jinja2.PackageLoader("segscale.analyst", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(number=_int, money=_money, pct=_pct, fixed=_fixed, tier=_tier, utc=_utc)
    return env


def _records(df: pd.DataFrame, index: str) -> list[dict[str, Any]]:
    """The rows of a small frame as dicts, its index as `index`."""
    return df.rename_axis(index).reset_index().to_dict("records")


def _sql_list(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# ---- formatting (the templates' filters) ----------------------------------------------------------------------------
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


def _fixed(value: Any, digits: int) -> str:
    return "—" if _absent(value) else f"{float(value):.{digits}f}"


def _utc(value: dt.datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"
