"""Churn labels and the out-of-time training set (definitions: docs/models.md).

A buyer at a cutoff c (at least one purchase by the end of c, UTC) is churned when they make no purchase in
(c, c + horizon]: the horizon days after c, the last one included. Training rows are the features as of the
cutoffs D - h, D - 2h, ..., computed by the same transform that publishes `customer_features`, so nothing after a
cutoff enters its features; only the label looks past it. The most recent cutoff is the holdout.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segscale.config import ChurnSettings, Settings
from segscale.errors import ModelSkipped
from segscale.transforms.features import PURCHASE, customer_features, filter_signed_up_by, snapshot_end

LABEL = "churned"
CUTOFF = "cutoff_date"
TRUE_LABEL = "true_churned"


@dataclass(frozen=True)
class TrainingSet:
    """Labelled buyers of the earlier cutoffs (train) and of the most recent one (holdout), before sampling."""

    train: DataFrame
    holdout: DataFrame
    cutoffs: tuple[dt.date, ...]  # most recent (the holdout's) first

    @property
    def holdout_cutoff(self) -> dt.date:
        return self.cutoffs[0]


def labelled_cutoffs(snapshot_date: dt.date, settings: ChurnSettings) -> list[dt.date]:
    """D - h, D - 2h, ...: every cutoff whose whole horizon has been observed by the snapshot, most recent first."""
    horizon = dt.timedelta(days=settings.horizon_days)
    return [snapshot_date - k * horizon for k in range(1, settings.labelled_cutoffs + 1)]


def retained_customers(transactions_df: DataFrame, cutoff: dt.date, horizon_days: int) -> DataFrame:
    """customer_id of everyone with a purchase in (cutoff, cutoff + horizon_days], one row each."""
    after_cutoff = F.col("ts") >= snapshot_end(cutoff)
    in_horizon = F.col("ts") < snapshot_end(cutoff + dt.timedelta(days=horizon_days))
    purchases_df = transactions_df.where((F.col("transaction_type") == PURCHASE) & after_cutoff & in_horizon)
    return purchases_df.select("customer_id").distinct()


def labelled_rows(customers_df: DataFrame, transactions_df: DataFrame, interactions_df: DataFrame | None,
                  cutoff: dt.date, settings: Settings) -> DataFrame:
    """The buyers at `cutoff`: their features as of the cutoff, `cutoff_date` and the `churned` label."""
    # customer_features reads only events on or before the cutoff.
    features_df = customer_features(customers_df.transform(filter_signed_up_by, cutoff), transactions_df,
                                    interactions_df, cutoff, settings.features, settings.rfm.lookback_days)
    buyers_df = features_df.where(F.col("recency_days").isNotNull())
    retained_df = retained_customers(transactions_df, cutoff, settings.churn.horizon_days).select(
        "customer_id", F.lit(True).alias("_retained"))
    return buyers_df.join(retained_df, "customer_id", how="left").select(
        *buyers_df.columns,
        F.lit(cutoff).alias(CUTOFF),
        F.col("_retained").isNull().alias(LABEL),
    )


def training_set(customers_df: DataFrame, transactions_df: DataFrame, interactions_df: DataFrame | None,
                 snapshot_date: dt.date, settings: Settings) -> TrainingSet:
    """Labelled rows of every cutoff: the most recent cutoff is the holdout, the earlier ones are stacked to train."""
    cutoffs = labelled_cutoffs(snapshot_date, settings.churn)
    rows = [labelled_rows(customers_df, transactions_df, interactions_df, c, settings) for c in cutoffs]
    return TrainingSet(train=functools.reduce(DataFrame.unionByName, rows[1:]), holdout=rows[0],
                       cutoffs=tuple(cutoffs))


def with_true_dropout(rows_df: DataFrame, truth_df: DataFrame, cutoff: dt.date) -> DataFrame:
    """Adds `true_churned` from the generator's ground truth: the customer had already dropped out (made their
    last purchase ever) by the end of the cutoff. Only generated data has a truth table."""
    dropped = F.coalesce(F.col("dropout_ts") < snapshot_end(cutoff), F.lit(False))  # null: never dropped out
    dropped_df = truth_df.select("customer_id", dropped.alias(TRUE_LABEL))
    return rows_df.join(dropped_df, "customer_id", how="left")


def label_counts(rows_df: DataFrame) -> dict[bool, int]:
    """Labelled rows per label (False: retained, True: churned), both keys present."""
    found = {row[LABEL]: row["count"] for row in rows_df.groupBy(LABEL).count().collect()}  # small: 2 rows
    return {False: found.get(False, 0), True: found.get(True, 0)}


def check_trainable(train: Mapping[bool, int], holdout: Mapping[bool, int], data: TrainingSet,
                    settings: ChurnSettings) -> None:
    """ModelSkipped unless the training rows and the holdout rows each hold churn.min_rows_per_class churned and
    as many retained buyers: fewer cannot train, calibrate and evaluate a model honestly."""
    least = settings.min_rows_per_class
    if min(*train.values(), *holdout.values()) >= least:
        return
    sides = [(f"the training cutoffs {', '.join(c.isoformat() for c in data.cutoffs[1:])}", train),
             (f"the holdout cutoff {data.holdout_cutoff.isoformat()}", holdout)]
    found = "; ".join(f"{side}: {counts[True]:,} churned and {counts[False]:,} retained"
                      for side, counts in sides)
    raise ModelSkipped("churn", f"it needs at least churn.min_rows_per_class = {least} churned and {least} retained "
                                f"buyers on each side of the out-of-time split, and found {found} (labels look "
                                f"churn.horizon_days = {settings.horizon_days} days ahead of each cutoff; a later "
                                f"snapshot or a longer history gives more labelled buyers)")


def capped_sample(rows_df: DataFrame, counts: Mapping[bool, int], max_rows: int, seed: int) -> DataFrame:
    """At most `max_rows` rows, sampled with one fraction in every label so the label shares are kept (`counts`:
    rows per label, from `label_counts`); seeded."""
    total = sum(counts.values())
    if total <= max_rows:
        return rows_df
    fraction = max_rows / total
    return rows_df.sampleBy(LABEL, {label: fraction for label in counts}, seed).limit(max_rows)


