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
# # Churn and retention review
#
# Is the churn model that scored the latest snapshot any good, did its earlier predictions come true, and is the
# retention budget spent where it saves the most value?
#
# Reads the published Delta tables with `segscale.analyst.sql.run_query` (DuckDB over delta-rs) and the model registry
# from the MLflow store that segscale uses (`MLFLOW_TRACKING_URI`, or `mlflow.db` beside the warehouse); it writes
# nothing. Set `SEGSCALE_WAREHOUSE` to your warehouse directory (default: the `make demo` warehouse).

# %%
import os

import matplotlib.pyplot as plt
import pandas as pd
from mlflow import MlflowClient

from segscale.analyst.sql import published_snapshots, run_query
from segscale.models.registry import tracking_uri
from segscale.transforms.segments import VALUE_TIERS

WAREHOUSE = os.environ.get("SEGSCALE_WAREHOUSE", "../warehouse")


def sql(query: str, **options) -> pd.DataFrame:
    """A read-only query over the published tables, as a pandas frame (keep results small)."""
    return run_query(WAREHOUSE, query, **options).to_pandas()


snapshots = published_snapshots(WAREHOUSE)
SNAPSHOT = snapshots[-1]
PREVIOUS = snapshots[-2] if len(snapshots) > 1 else None
print(f"reviewing {SNAPSHOT}; previous snapshot {PREVIOUS}")

# %% [markdown]
# ## The model that scored the snapshot
# `customer_scores` names the registered version; its MLflow run holds the holdout metrics and the baselines.

# %%
scored_by = sql("""SELECT model_name, model_version, count(*) AS customers FROM customer_scores
                   WHERE churn_probability IS NOT NULL GROUP BY ALL""", snapshot=SNAPSHOT)
assert not scored_by.empty, "this snapshot has no churn scores (churn.enabled: false?)"
name, version = scored_by["model_name"].iloc[0], int(scored_by["model_version"].iloc[0])
client = MlflowClient(tracking_uri(WAREHOUSE))
model_version = client.get_model_version(name, str(version))
metrics = client.get_run(model_version.run_id).data.metrics
aliases = client.get_registered_model(name).aliases  # e.g. champion → the version scoring now
print(f"models:/{name}/{version}; aliases now: {aliases}")
pd.Series({key: metrics[key] for key in sorted(metrics) if key.endswith("roc_auc")}, name="holdout ROC-AUC")

# %% [markdown]
# ## Churn risk by tier and lifecycle stage

# %%
risk = sql("""
    SELECT value_tier, lifecycle_stage, count(*) AS customers, avg(churn_probability) AS mean_churn_probability,
           sum(churn_probability * clv) AS value_at_risk
    FROM customer_scores WHERE churn_probability IS NOT NULL GROUP BY ALL ORDER BY value_at_risk DESC""",
           snapshot=SNAPSHOT)
risk.round(3)

# %%
bands = sql("""SELECT value_tier, churn_risk_band, count(*) AS customers FROM customer_scores
               WHERE churn_risk_band IS NOT NULL GROUP BY ALL""", snapshot=SNAPSHOT)
bands = bands.pivot(index="value_tier", columns="churn_risk_band", values="customers").fillna(0)
bands = bands.reindex(index=[t for t in VALUE_TIERS if t in bands.index],
                      columns=[b for b in ("low", "medium", "high", "critical") if b in bands.columns])
bands.div(bands.sum(axis=1), axis=0).plot.barh(stacked=True, figsize=(7, 2.5), title="Risk bands per tier")
plt.gca().invert_yaxis()
plt.show()

# %% [markdown]
# ## Do the models still work?
# Every run monitors the models (`model_monitoring`): drift of the churn model's inputs and scores against its
# training rows, and, once a published snapshot's churn horizon has passed, its scores and CLV predictions against
# what happened (docs/models.md, "Monitoring").

# %%
monitoring = sql("SELECT * FROM model_monitoring", snapshot=SNAPSHOT)
if monitoring.empty:
    print("no monitoring published for this snapshot")
else:
    display(monitoring[monitoring["alert"] | (monitoring["kind"] == "decision")][
        ["model", "kind", "subject", "metric", "value", "threshold", "note"]])
    drift = monitoring[monitoring["kind"] == "drift"].sort_values("value", ascending=False).head(10)
    display(drift[["subject", "value", "alert"]].rename(columns={"subject": "feature", "value": "psi"}).round(3))
    deciles = monitoring[monitoring["kind"] == "calibration"]
    if deciles.empty:
        print("no backtest yet: no published snapshot is a churn horizon older than this one")
    else:
        table = deciles.pivot_table(index="subject", columns="metric", values="value")
        ax = table.plot(x="mean_predicted", y="observed", marker="o", figsize=(4, 4), legend=False,
                        title="Predicted vs observed churn, by decile")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
        plt.show()

# %% [markdown]
# ## Who to call first, and why
# The account managers' queue (`at_risk_queue`): at-risk high-value and potential customers by value at risk, with
# the plan's treatment and the three strongest reasons behind their churn probability.

# %%
sql("""SELECT customer_id, value_tier, round(churn_probability, 2) AS churn, round(value_at_risk) AS value_at_risk,
              coalesce(planned_treatment, treatment_group) AS plan, reason_1, reason_2, reason_3
       FROM at_risk_queue ORDER BY value_at_risk DESC LIMIT 15""", snapshot=SNAPSHOT)

# %% [markdown]
# ## The retention plan
# Spend and expected saved value per tier, as published in `retention_summary`.

# %%
summary = sql("SELECT * FROM retention_summary", snapshot=SNAPSHOT)
assert not summary.empty, "no retention plan for this snapshot"
summary[["value_tier", "treatment", "scored_customers", "candidates", "customers_targeted", "spend",
         "share_of_budget", "expected_saved_value", "roi"]].round(2)

# %% [markdown]
# ### What a different budget would buy
# The plan ranks every candidate, so the saved value at any budget is a prefix of the same ranking (of the
# candidates whose lot is to be treated: the held-out ones cost nothing and save nothing; tier limits aside).

# %%
budget = float(summary["budget"].iloc[0])
budgets = sorted({budget * f for f in (0.25, 0.5, 1, 2, 4)})
curve = pd.concat([sql(f"""
    SELECT {b} AS budget, count(*) AS customers, coalesce(sum(cost), 0) AS spend,
           coalesce(sum(expected_saved_value), 0) AS expected_saved_value
    FROM retention_plan WHERE cumulative_cost <= {b} AND NOT held_out""", snapshot=SNAPSHOT) for b in budgets])
curve.plot(x="budget", y="expected_saved_value", marker="o", figsize=(5, 3), legend=False,
           title="Expected saved value by budget")
plt.show()
curve.round(0)

# %% [markdown]
# ### The top targets

# %%
sql("""SELECT priority_rank, customer_id, value_tier, lifecycle_stage, treatment, cost, churn_probability, clv,
              expected_saved_value FROM retention_plan WHERE selected ORDER BY priority_rank LIMIT 15""",
    snapshot=SNAPSHOT).round(3)

# %% [markdown]
# ## What the plans achieved
# A plan is measured by the first run after its horizon: its treated group against its randomized control group
# (`retention_outcomes`), and the uplift learned from it, which the next plans use.

# %%
measured = sql("SELECT * FROM retention_summary WHERE uplift_source IN ('learned', 'model')")
if measured.empty:
    print("no plan measured yet: a plan is measured by the first run on or after its snapshot + churn.horizon_days")
else:
    outcomes = sql("""SELECT snapshot_date AS plan, value_tier, customers_treated, customers_controlled,
                             incremental_retention, incremental_retention_low, incremental_retention_high,
                             expected_incremental_retention, uplift_planned, learned_uplift
                      FROM retention_outcomes ORDER BY plan, value_tier""")
    display(outcomes.round(3))
