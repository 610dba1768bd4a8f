# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Segment exploration
#
# Who the customers are at the latest snapshot: value tiers (高价值 / 潜力 / 普通), RFM segments, lifecycle
# stages, what sets the segments apart, and who moved between tiers since the previous snapshot.
#
# The notebook reads the published Delta tables only, with `segscale.analyst.sql.run_query` (DuckDB over delta-rs, the
# engine behind `segscale sql`): every query is an aggregate or a short list, so it runs on a laptop for any size
# of customer base. Open it with Jupyter and jupytext (`pip install jupyterlab jupytext`), or run it as a script.
# Set `SEGSCALE_WAREHOUSE` to your warehouse directory (default: the `make demo` warehouse).

# %%
import os

import matplotlib.pyplot as plt
import pandas as pd

from segscale.analyst.sql import published_snapshots, published_tables, run_query
from segscale.transforms.segments import TIER_LABELS, VALUE_TIERS

WAREHOUSE = os.environ.get("SEGSCALE_WAREHOUSE", "../warehouse")


def sql(query: str, **options) -> pd.DataFrame:
    """A read-only query over the published tables, as a pandas frame (keep results small)."""
    return run_query(WAREHOUSE, query, **options).to_pandas()


snapshots = published_snapshots(WAREHOUSE)
SNAPSHOT = snapshots[-1]
PREVIOUS = snapshots[-2] if len(snapshots) > 1 else None
print(f"snapshots: {[str(s) for s in snapshots]}; exploring {SNAPSHOT}, previous {PREVIOUS}")

# %% [markdown]
# ## Value tiers over time
# Customers, revenue (`monetary`, net of returns) and predicted CLV per tier and snapshot.

# %%
tiers = sql("""
    SELECT snapshot_date, value_tier, count(*) AS customers, sum(monetary) AS revenue, sum(clv) AS clv
    FROM customer_scores GROUP BY ALL ORDER BY snapshot_date, value_tier""")
tiers["customer_share"] = tiers["customers"] / tiers.groupby("snapshot_date")["customers"].transform("sum")
tiers["revenue_share"] = tiers["revenue"] / tiers.groupby("snapshot_date")["revenue"].transform("sum")
tiers["label"] = tiers["value_tier"].map(TIER_LABELS)
tiers

# %%
latest = tiers[tiers["snapshot_date"] == SNAPSHOT].set_index("value_tier").reindex(VALUE_TIERS)
fig, ax = plt.subplots(figsize=(6, 3))
latest[["customer_share", "revenue_share"]].plot.barh(ax=ax)
ax.set(xlabel="share", title=f"Customers and revenue per tier on {SNAPSHOT}")
ax.invert_yaxis()
plt.show()

# %% [markdown]
# ## RFM segments inside the tiers
# How the named RFM segments spread over the value tiers (prospects have no RFM segment).

# %%
crosstab = sql("""
    SELECT coalesce(rfm_segment, '(prospect)') AS rfm_segment, value_tier, count(*) AS customers
    FROM customer_scores GROUP BY ALL""", snapshot=SNAPSHOT)
crosstab = crosstab.pivot(index="rfm_segment", columns="value_tier", values="customers").fillna(0).astype(int)
crosstab = crosstab.reindex(columns=[t for t in VALUE_TIERS if t in crosstab.columns])
crosstab.sort_values(crosstab.columns[0], ascending=False)

# %% [markdown]
# ## Segment profiles
# What distinguishes the segments: means of a few features from `customer_features`, joined on the customer.

# %%
profiles = sql("""
    SELECT s.rfm_segment, count(*) AS customers, avg(f.recency_days) AS recency_days,
           avg(f.frequency) AS frequency, avg(f.monetary) AS monetary, avg(f.avg_order_value) AS avg_order_value,
           avg(f.online_share) AS online_share, avg(f.complaints_365d) AS complaints_365d,
           avg(s.churn_probability) AS churn_probability, avg(s.clv) AS clv
    FROM customer_scores s JOIN customer_features f USING (customer_id, snapshot_date)
    WHERE s.rfm_segment IS NOT NULL GROUP BY ALL ORDER BY clv DESC NULLS LAST""", snapshot=SNAPSHOT)
assert profiles["customers"].sum() > 0, "no buyers in this snapshot"
profiles.round(2)

# %% [markdown]
# ## Lifecycle stages per tier

# %%
stages = sql("""
    SELECT lifecycle_stage, value_tier, count(*) AS customers FROM customer_scores GROUP BY ALL""",
             snapshot=SNAPSHOT)
stages = stages.pivot(index="lifecycle_stage", columns="value_tier", values="customers").fillna(0).astype(int)
order = ["prospect", "new", "repeat", "loyal", "at_risk", "churned"]
stages = stages.reindex([s for s in order if s in stages.index])
stages.plot.bar(stacked=True, figsize=(7, 3), title=f"Lifecycle stages by value tier on {SNAPSHOT}")
plt.show()
stages

# %% [markdown]
# ## Tier migration since the previous snapshot
# `segment_migration` counts customers per (previous tier, current tier); null means not a customer then / now.

# %%
if PREVIOUS is None:
    print("Only one snapshot is published: no migration yet.")
else:
    migration = sql("""
        SELECT coalesce(from_value_tier, '(new)') AS from_tier, coalesce(to_value_tier, '(gone)') AS to_tier,
               sum(customers) AS customers
        FROM segment_migration GROUP BY ALL""", snapshot=SNAPSHOT)
    matrix = migration.pivot(index="from_tier", columns="to_tier", values="customers").fillna(0).astype(int)
    display(matrix)

# %% [markdown]
# ### Who dropped out of high_value
# The customers who were high_value at the previous snapshot and are not now, with what changed.

# %%
if PREVIOUS is not None:
    dropped = sql(f"""
        SELECT now.customer_id, now.value_tier, now.lifecycle_stage, before.monetary AS monetary_before,
               now.monetary AS monetary_now, now.recency_days, now.churn_probability, now.clv
        FROM customer_scores now JOIN customer_scores before USING (customer_id)
        WHERE now.snapshot_date = DATE '{SNAPSHOT}' AND before.snapshot_date = DATE '{PREVIOUS}'
          AND before.value_tier = 'high_value' AND now.value_tier <> 'high_value'
        ORDER BY before.monetary DESC LIMIT 20""")
    print(f"top {len(dropped)} former high_value customers by their previous monetary")
    display(dropped)

# %% [markdown]
# ## Tiers and the high-value customers at risk by region
# `customer_attributes` holds what the input says about each customer (region, city tier, signup channel and
# cohort); joined to the scores on (customer_id, snapshot_date). An input without regions shows one null region.

# %%
if "customer_attributes" in published_tables(WAREHOUSE):
    regions = sql("""
        SELECT a.region, s.value_tier, count(*) AS customers,
               count(*) FILTER (WHERE s.lifecycle_stage = 'at_risk') AS at_risk, round(sum(s.clv)) AS clv
        FROM customer_scores s JOIN customer_attributes a USING (customer_id, snapshot_date)
        GROUP BY ALL ORDER BY a.region, s.value_tier""", snapshot=SNAPSHOT)
    display(regions.pivot(index="region", columns="value_tier", values="customers").fillna(0).astype(int))
    display(regions[regions["value_tier"] == "high_value"].sort_values("at_risk", ascending=False))
else:
    print("This warehouse was published before customer_attributes existed: rerun a snapshot to get it.")
