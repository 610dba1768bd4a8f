"""Carrying out a retention plan on generated data, with a treatment effect the test knows (docs/generator.md).

The generated customers' histories do not know about any plan. `carry_out` takes a published plan and makes its
treatment work on the generated world with a true per-tier effect e (`generate.treatment_effects`): every customer
of the plan draws a "saved" lot with probability e (a hash of the seed, the plan's snapshot and the customer); a
treated customer who is saved and would have made no purchase in the plan's horizon gets one purchase in it, of
their usual order value. So a treated customer churns with probability churn × (1 − e): e is exactly the relative
reduction of churn that `retention.treatments.<tier>.uplift` stands for. Control customers' histories are left as
they were; their lots are drawn all the same, so both potential outcomes of every customer are known
(`treatment_truth`).

Every step is a Spark transformation of the plan and the transactions; nothing is collected.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segscale.config import GenerateSettings
from segscale.contract import CONTRACT
from segscale.transforms.features import PURCHASE, snapshot_end
from segscale.transforms.outcomes import window_purchases
from segscale.transforms.plan import CONTROL, DRAWS, TREATED, lot

TREATMENT_TRUTH_SCHEMA = ("customer_id string, snapshot_date date, value_tier string, treatment_group string, "
                          "saved boolean, retained_untreated boolean, retained_if_treated boolean")


def _lot(seed: int, plan_date: dt.date, salt: str) -> Column:
    """A uniform draw in [0, 1) per customer, from (seed, plan date, customer, salt)."""
    return lot(F.lit(seed), F.lit(plan_date), F.col("customer_id"), F.lit(salt)) / F.lit(float(DRAWS))


def carry_out(plan_df: DataFrame, transactions_df: DataFrame, plan_date: dt.date, horizon_days: int,
              settings: GenerateSettings) -> tuple[DataFrame, DataFrame, DataFrame]:
    """For the plan of `plan_date` (its retention_plan rows): the purchases the treatment adds (rows of the
    transactions contract), the treatments carried out (rows of the treatments contract: the treated group, at the
    plan's cost), and each treated or control customer's truth (TREATMENT_TRUTH_SCHEMA)."""
    effects = settings.treatment_effects
    effect = F.lit(0.0)
    for tier, value in effects.model_dump().items():
        effect = F.when(F.col("value_tier") == F.lit(tier), F.lit(value)).otherwise(effect)
    purchases = transactions_df.where(F.col("transaction_type") == F.lit(PURCHASE))
    usual_df = purchases.where(F.col("ts") < snapshot_end(plan_date)).groupBy("customer_id").agg(
        F.avg("amount").alias("_usual"), F.max_by("category", "ts").alias("_category"))
    groups_df = (plan_df.where(F.col("treatment_group").isin(TREATED, CONTROL))
                 .join(window_purchases(transactions_df, plan_date, horizon_days), "customer_id", how="left")
                 .join(usual_df, "customer_id", how="left")
                 .withColumn("_saved", _lot(settings.seed, plan_date, "saved") < effect)
                 .withColumn("_retained", F.coalesce(F.col("_purchases"), F.lit(0)) > 0))
    treated = F.col("treatment_group") == F.lit(TREATED)
    truth_df = groups_df.select(
        "customer_id", F.lit(plan_date).alias("snapshot_date"), "value_tier", "treatment_group",
        F.col("_saved").alias("saved"), F.col("_retained").alias("retained_untreated"),
        (F.col("_retained") | F.col("_saved")).alias("retained_if_treated"))
    day = F.floor(_lot(settings.seed, plan_date, "day") * F.lit(horizon_days)).cast("int") + F.lit(1)
    added_df = groups_df.where(treated & F.col("_saved") & ~F.col("_retained")).select(
        *[_transaction_column(name, plan_date, day, settings) for name in (c.name for c in CONTRACT["transactions"])])
    treatments_df = groups_df.where(treated).select(
        "customer_id", F.lit(plan_date).alias("snapshot_date"),
        F.lit(plan_date + dt.timedelta(days=1)).alias("treated_on"), "treatment", "cost")
    return added_df, treatments_df, truth_df


def _transaction_column(name: str, plan_date: dt.date, day: Column, settings: GenerateSettings) -> Column:
    """The column `name` of a purchase the treatment adds: on day `day` of the horizon at noon UTC, of the
    customer's usual order value, in the category of their last purchase."""
    noon = F.lit(dt.datetime.combine(plan_date, dt.time(12), tzinfo=dt.UTC))
    columns = {
        "transaction_id": F.concat(F.lit(f"S{plan_date:%Y%m%d}-"), F.col("customer_id")),
        "customer_id": F.col("customer_id"),
        "ts": noon + F.make_dt_interval(day),
        "amount": F.round(F.coalesce(F.col("_usual"), F.lit(settings.mean_order_value)), 2),
        "quantity": F.lit(1),
        "category": F.col("_category"),
        "channel": F.lit("online"),
        "transaction_type": F.lit(PURCHASE),
    }
    spec = next(c for c in CONTRACT["transactions"] if c.name == name)
    return columns.get(name, F.lit(None)).cast(spec.data_type).alias(name)
