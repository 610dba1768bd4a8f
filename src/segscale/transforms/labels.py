"""Churn labels and the out-of-time training set (definitions: docs/models.md).

A buyer at a cutoff c (at least one purchase by the end of c, UTC) is churned when they make no purchase in
(c, c + horizon]: the horizon days after c, the last one included. Training rows are the features as of the
cutoffs D - h, D - 2h, ..., computed by the same transform that publishes `customer_features` (all cutoffs in one
pass over the events), so nothing after a cutoff enters its features; only the label looks past it. The most
recent cutoff is the holdout.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segscale.config import ChurnSettings, Settings
from segscale.errors import ModelSkipped
from segscale.transforms.features import FEATURE_TYPES, PURCHASES_AFTER, features_as_of, snapshot_end

LABEL = "churned"
CUTOFF = "cutoff_date"
TRUE_LABEL = "true_churned"


@dataclass(frozen=True)
class TrainingSet:
    """Labelled buyers of the earlier cutoffs (train) and of the most recent one (holdout), before sampling; both
    are views of `rows`, every cutoff's labelled buyers."""

    rows: DataFrame
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


def labelled_rows(customers_df: DataFrame, transactions_df: DataFrame, interactions_df: DataFrame | None,
                  cutoffs: Sequence[dt.date], settings: Settings) -> DataFrame:
    """The buyers at each cutoff: their features as of the cutoff, `cutoff_date` and the `churned` label, all
    cutoffs from one pass over the events."""
    rows_df = features_as_of(customers_df, transactions_df, interactions_df, cutoffs, settings.features,
                             settings.rfm.lookback_days, purchases_after_days=settings.churn.horizon_days)
    # tenure_days is null exactly for customers not signed up by the cutoff (signup_date is required).
    is_signed_up = F.col("tenure_days").isNotNull()
    is_buyer = F.col("recency_days").isNotNull()
    is_churned = F.col(PURCHASES_AFTER) == 0
    return rows_df.where(is_signed_up & is_buyer).select(
        *FEATURE_TYPES,
        F.col("snapshot_date").alias(CUTOFF),
        is_churned.alias(LABEL),
    )


def training_set(customers_df: DataFrame, transactions_df: DataFrame, interactions_df: DataFrame | None,
                 snapshot_date: dt.date, settings: Settings) -> TrainingSet:
    """Labelled rows of every cutoff: the most recent cutoff is the holdout, the earlier ones are stacked to train.
    Both sides are views of `rows`, so persisting `rows` computes every cutoff once."""
    cutoffs = labelled_cutoffs(snapshot_date, settings.churn)
    rows_df = labelled_rows(customers_df, transactions_df, interactions_df, cutoffs, settings)
    def at(cutoff: dt.date) -> DataFrame:
        return rows_df.where(F.col(CUTOFF) == F.lit(cutoff))

    # The order the fit sees is set where the rows are pulled (segscale.models.churn: latest cutoff, customer).
    train_df = functools.reduce(DataFrame.unionByName, [at(c) for c in cutoffs[1:]])
    return TrainingSet(rows=rows_df, train=train_df, holdout=at(cutoffs[0]), cutoffs=tuple(cutoffs))


def with_true_dropout(rows_df: DataFrame, truth_df: DataFrame, cutoff: dt.date) -> DataFrame:
    """Adds `true_churned` from the generator's ground truth: the customer had already dropped out (made their
    last purchase ever) by the end of the cutoff. Only generated data has a truth table."""
    dropped = F.coalesce(F.col("dropout_ts") < snapshot_end(cutoff), F.lit(False))  # null: never dropped out
    dropped_df = truth_df.select("customer_id", dropped.alias(TRUE_LABEL))
    return rows_df.join(dropped_df, "customer_id", how="left")


def side_counts(data: TrainingSet) -> tuple[dict[bool, int], dict[bool, int]]:
    """Labelled rows per label of the train side and of the holdout side, from one aggregation of `data.rows`."""
    is_holdout = (F.col(CUTOFF) == F.lit(data.holdout_cutoff)).alias("is_holdout")
    found = {(row["is_holdout"], row[LABEL]): row["count"]
             for row in data.rows.groupBy(is_holdout, LABEL).count().collect()}  # small: 4 rows
    return tuple({label: found.get((side, label), 0) for label in (False, True)}  # type: ignore[return-value]
                 for side in (False, True))


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


