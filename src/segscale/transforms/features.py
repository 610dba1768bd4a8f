"""Per-customer features as of a snapshot date (end of that day, UTC, inclusive).

Every customer in `customers` gets exactly one row per cutoff, prospects included. Transactions are read in one
pass for all cutoffs: one shuffle by customer_id, one window over each customer's rows ordered by day (for the
gaps between purchase days, the first purchase day and each category's first purchase), then one hash aggregation
with conditional sums for every cutoff and time window. Interactions take one more aggregation. Definitions:
docs/features.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segscale.config import FeatureSettings

PURCHASE = "purchase"
RETURN = "return"
SECONDS_PER_DAY = 86_400
EPOCH = dt.date(1970, 1, 1)
# "Last N days" windows: the snapshot day and the N - 1 days before it.
ACTIVITY_WINDOWS_DAYS = (30, 90, 365)
TREND_WINDOW_DAYS = 90
INTERACTION_WINDOW_DAYS = 365

# Amounts are summed exactly in units of 1/10,000 of the currency (finer digits of an input amount are rounded).
MONEY_UNITS = 10_000
# The output schema, in order. Counts are long, day differences int, amounts and ratios double.
FEATURE_TYPES: dict[str, T.DataType] = {
    "customer_id": T.StringType(),
    "snapshot_date": T.DateType(),
    "recency_days": T.IntegerType(),
    "frequency": T.LongType(),
    "monetary": T.DoubleType(),
    "avg_order_value": T.DoubleType(),
    "tenure_days": T.IntegerType(),
    "days_since_first_purchase": T.IntegerType(),
    "mean_days_between_purchases": T.DoubleType(),
    "std_days_between_purchases": T.DoubleType(),
    **{f"purchases_{n}d": T.LongType() for n in ACTIVITY_WINDOWS_DAYS},
    **{f"spend_{n}d": T.DoubleType() for n in ACTIVITY_WINDOWS_DAYS},
    "spend_trend_90d": T.DoubleType(),
    "distinct_categories": T.LongType(),
    "return_rate": T.DoubleType(),
    "online_share": T.DoubleType(),
    "interactions_365d": T.LongType(),
    "interaction_cost_365d": T.DoubleType(),
    "complaints_365d": T.LongType(),
    "last_satisfaction": T.IntegerType(),
    "bgnbd_frequency": T.LongType(),
    "bgnbd_recency": T.IntegerType(),
    "bgnbd_T": T.IntegerType(),
    "bgnbd_monetary": T.DoubleType(),
}
INTERACTION_FEATURES = ("interactions_365d", "interaction_cost_365d", "complaints_365d", "last_satisfaction")
# The per-customer aggregates the feature columns are computed from (one set per cutoff).
TRANSACTION_AGGREGATES = (
    "purchases", "purchase_amount", "returns", "online_purchases", "lookback_purchases", "lookback_net_amount",
    "first_day", "last_day", "purchase_days", "sum_squared_gaps", "repeat_day_amount", "categories",
    *(f"window_purchases_{n}" for n in ACTIVITY_WINDOWS_DAYS), *(f"window_spend_{n}" for n in ACTIVITY_WINDOWS_DAYS),
    "previous_trend_spend",
)
INTERACTION_AGGREGATES = ("window_interactions", "window_cost", "window_complaints", "satisfaction")
# Purchases in the days after a cutoff (features_as_of's purchases_after_days): what churn labels are made of.
PURCHASES_AFTER = "purchases_after"


def snapshot_end(snapshot_date: dt.date) -> Column:
    """The first instant after the snapshot day: events strictly before it belong to the snapshot."""
    return F.lit(dt.datetime.combine(snapshot_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC))


def filter_as_of(events_df: DataFrame, snapshot_date: dt.date) -> DataFrame:
    """Keep the events on or before the snapshot date; later ones belong to later snapshots."""
    return events_df.where(F.col("ts") < snapshot_end(snapshot_date))


def filter_signed_up_by(customers_df: DataFrame, snapshot_date: dt.date) -> DataFrame:
    """The snapshot's population: customers who had signed up by the end of the snapshot date."""
    return customers_df.where(F.col("signup_date") <= F.lit(snapshot_date))


def customer_attributes(customers_df: DataFrame, snapshot_date: dt.date, run_id: str) -> DataFrame:
    """customer_attributes: what the input says about each customer of the snapshot's population."""
    return customers_df.select(
        "customer_id", F.lit(snapshot_date).alias("snapshot_date"), "signup_date",
        F.date_format("signup_date", "yyyy-MM").alias("signup_cohort"), "region", "city_tier", "channel",
        F.lit(run_id).alias("run_id"))


def utc_day(ts: Column) -> Column:
    """Days since 1970-01-01 of the UTC calendar day of `ts`, whatever the session time zone."""
    return F.floor(F.unix_seconds(ts) / F.lit(SECONDS_PER_DAY)).cast(T.IntegerType())


def epoch_day(day: dt.date) -> int:
    """Days since 1970-01-01 of `day`, the same numbering as `utc_day`."""
    return (day - EPOCH).days


def customer_features(
    customers_df: DataFrame,
    transactions_df: DataFrame,
    interactions_df: DataFrame | None,
    snapshot_date: dt.date,
    settings: FeatureSettings,
    lookback_days: int | None = None,
) -> DataFrame:
    """One row per customer of `customers_df` with the columns of FEATURE_TYPES, as of the end of `snapshot_date`.

    Inputs are clean contract frames. `lookback_days` (rfm.lookback_days; None = all history) bounds frequency and
    monetary only. Without an interactions table the interaction features are null (unknown), not 0.
    """
    return features_as_of(customers_df, transactions_df, interactions_df, (snapshot_date,), settings, lookback_days)


def features_as_of(
    customers_df: DataFrame,
    transactions_df: DataFrame,
    interactions_df: DataFrame | None,
    cutoffs: Sequence[dt.date],
    settings: FeatureSettings,
    lookback_days: int | None = None,
    purchases_after_days: int | None = None,
) -> DataFrame:
    """One row per customer of `customers_df` and cutoff: the columns of FEATURE_TYPES as of the end of the cutoff
    (`snapshot_date` is the cutoff), computed for every cutoff in one pass over each events table.

    Each customer's events are shuffled and sorted once; every cutoff's sums are conditional aggregates of the
    same rows (one column set per cutoff), and the rows are split per cutoff only after the aggregation. With
    `purchases_after_days` = n, a column PURCHASES_AFTER counts the purchases in the n days after each cutoff
    (cutoff, cutoff + n] (the events up to the last cutoff + n are read; features never look past their cutoff).
    """
    if lookback_days is not None and lookback_days <= 0:
        raise ValueError(f"lookback_days must be positive or None, got {lookback_days}")
    if not cutoffs:
        raise ValueError("features_as_of needs at least one cutoff")
    read_until = max(cutoffs) + dt.timedelta(days=purchases_after_days or 0)
    features_df = customers_df.select("customer_id", "signup_date").join(
        transaction_aggregates(transactions_df, cutoffs, settings, lookback_days, purchases_after_days,
                               read_until), "customer_id", how="left")
    if interactions_df is not None:
        features_df = features_df.join(
            interaction_aggregates(interactions_df, cutoffs, settings), "customer_id", how="left")
    names = [*TRANSACTION_AGGREGATES, *(INTERACTION_AGGREGATES if interactions_df is not None else ()),
             *((PURCHASES_AFTER,) if purchases_after_days is not None else ())]
    if len(cutoffs) == 1:
        per_cutoff_df = features_df.select(
            "customer_id", "signup_date", F.lit(cutoffs[0]).alias("snapshot_date"),
            *[F.col(_at(name, 0)).alias(name) for name in names])
    else:  # one row per cutoff, each with its own column set
        per_cutoff_df = features_df.select("customer_id", "signup_date", F.inline(F.array(*[
            F.struct(F.lit(cutoff).alias("snapshot_date"), *[F.col(_at(name, k)).alias(name) for name in names])
            for k, cutoff in enumerate(cutoffs)])))
    columns = _feature_columns(F.col("snapshot_date"), has_interactions=interactions_df is not None)
    extra = [PURCHASES_AFTER] if purchases_after_days is not None else []
    return per_cutoff_df.select(*[columns[name].cast(data_type).alias(name)
                                  for name, data_type in FEATURE_TYPES.items()], *extra)


def _at(name: str, k: int) -> str:
    """The aggregate column `name` of the k-th cutoff."""
    return f"{name}__{k}"


def transaction_aggregates(transactions_df: DataFrame, cutoffs: Sequence[dt.date], settings: FeatureSettings,
                           lookback_days: int | None, purchases_after_days: int | None = None,
                           read_until: dt.date | None = None) -> DataFrame:
    """Per-customer sums and counts over the transactions up to each cutoff (columns `_at(name, k)` for the k-th
    cutoff; one row per customer with any transaction up to `read_until`, by default the last cutoff)."""
    is_purchase = F.col("transaction_type") == PURCHASE
    is_return = F.col("transaction_type") == RETURN
    rows_df = transactions_df.transform(filter_as_of, read_until or max(cutoffs)).select(
        "customer_id",
        utc_day(F.col("ts")).alias("day"),
        is_purchase.alias("is_purchase"),
        is_return.alias("is_return"),
        "amount",
        F.when(is_purchase, F.col("category")).alias("purchase_category"),
        F.col("channel").isin(list(settings.online_channels)).alias("is_online"),
    )

    # The window sorts each customer's rows by day: the gaps between distinct purchase days need the order, and
    # the first purchase day and each category's first purchase ride along on the same sort instead of costing
    # another shuffle. None of them depends on the cutoff: a row sees only earlier rows, which are in every
    # cutoff the row is in, and the first purchase day is the same for every cutoff that has a purchase.
    purchase_day = F.when(F.col("is_purchase"), F.col("day"))
    by_day = Window.partitionBy("customer_id").orderBy("day")
    earlier_rows = by_day.rowsBetween(Window.unboundedPreceding, -1)
    all_rows = by_day.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    category = F.col("purchase_category")
    ordered_df = rows_df.select(
        "*",
        F.max(purchase_day).over(earlier_rows).alias("previous_purchase_day"),
        F.min(purchase_day).over(all_rows).alias("first_purchase_day"),
        (category.isNotNull() & ~F.coalesce(F.array_contains(F.collect_set(category).over(earlier_rows), category),
                                            F.lit(False))).alias("is_new_category"),
    )
    aggregates = [aggregate.alias(_at(name, k)) for k, cutoff in enumerate(cutoffs)
                  for name, aggregate in _transaction_sums(epoch_day(cutoff), lookback_days).items()]
    if purchases_after_days is not None:
        day = F.col("day")
        aggregates += [F.count(F.when(F.col("is_purchase") & (day > epoch_day(cutoff))
                                      & (day <= epoch_day(cutoff) + purchases_after_days), 1))
                       .alias(_at(PURCHASES_AFTER, k)) for k, cutoff in enumerate(cutoffs)]
    return ordered_df.groupBy("customer_id").agg(*aggregates)


def _transaction_sums(snapshot_day: int, lookback_days: int | None) -> dict[str, Column]:
    """The aggregates of TRANSACTION_AGGREGATES over the ordered rows on or before `snapshot_day`."""
    days_ago = F.lit(snapshot_day) - F.col("day")
    as_of = days_ago >= 0
    purchase = as_of & F.col("is_purchase")
    amount = exact_units(F.col("amount"))
    # Same-day purchases share a day: only the first purchase row of each day opens it (the row order within a
    # day does not matter, since the earlier same-day row makes the later ones' previous day equal to the day).
    opens_purchase_day = purchase & (F.col("previous_purchase_day").isNull()
                                     | (F.col("previous_purchase_day") < F.col("day")))
    gap = F.when(opens_purchase_day, F.col("day") - F.col("previous_purchase_day")).cast(T.LongType())
    in_lookback = F.lit(True) if lookback_days is None else days_ago < lookback_days
    signed_amount = F.when(purchase, amount).when(as_of & F.col("is_return"), -amount)
    purchase_day = F.when(purchase, F.col("day"))
    in_trend_previous = (days_ago >= TREND_WINDOW_DAYS) & (days_ago < 2 * TREND_WINDOW_DAYS)
    return {
        "purchases": F.count(F.when(purchase, 1)),
        "purchase_amount": money_sum(F.when(purchase, amount)),
        "returns": F.count(F.when(as_of & F.col("is_return"), 1)),
        "online_purchases": F.count(F.when(purchase & F.col("is_online"), 1)),
        "lookback_purchases": F.count(F.when(purchase & in_lookback, 1)),
        "lookback_net_amount": money_sum(F.when(in_lookback, signed_amount)),
        "first_day": F.min(purchase_day),
        "last_day": F.max(purchase_day),
        "purchase_days": F.count(F.when(opens_purchase_day, 1)),
        "sum_squared_gaps": F.sum(gap * gap),
        "repeat_day_amount": money_sum(F.when(purchase & (F.col("day") > F.col("first_purchase_day")), amount)),
        "categories": F.count(F.when(as_of & F.col("is_new_category"), 1)),
        **{f"window_purchases_{n}": F.count(F.when(purchase & (days_ago < n), 1)) for n in ACTIVITY_WINDOWS_DAYS},
        **{f"window_spend_{n}": money_sum(F.when(purchase & (days_ago < n), amount)) for n in ACTIVITY_WINDOWS_DAYS},
        "previous_trend_spend": money_sum(F.when(purchase & in_trend_previous, amount)),
    }


def exact_units(amount: Column) -> Column:
    """An amount as a whole number of 1/MONEY_UNITS: sums of these are exact, so they do not depend on the order
    Spark adds the rows in, and the same input gives bit-identical features on any cluster."""
    return F.round(amount.cast(T.DoubleType()) * MONEY_UNITS).cast(T.LongType())


def money_sum(units: Column) -> Column:
    """The exact sum of `exact_units` amounts, back in currency (null when no row counts)."""
    return F.sum(units) / F.lit(float(MONEY_UNITS))


def interaction_aggregates(interactions_df: DataFrame, cutoffs: Sequence[dt.date],
                           settings: FeatureSettings) -> DataFrame:
    """Per-customer interaction counts, cost and last satisfaction up to each cutoff (columns `_at(name, k)`)."""
    day = utc_day(F.col("ts"))
    is_complaint = F.col("kind").isin(list(settings.complaint_kinds))
    rated = latest_rated_first(F.col("ts"), F.col("satisfaction"))
    aggregates = []
    for k, cutoff in enumerate(cutoffs):
        days_ago = F.lit(epoch_day(cutoff)) - day
        in_window = (days_ago >= 0) & (days_ago < INTERACTION_WINDOW_DAYS)
        aggregates += [
            F.count(F.when(in_window, 1)).alias(_at("window_interactions", k)),
            money_sum(F.when(in_window, exact_units(F.col("cost")))).alias(_at("window_cost", k)),
            F.count(F.when(in_window & is_complaint, 1)).alias(_at("window_complaints", k)),
            F.max_by("satisfaction", F.when(days_ago >= 0, rated)).alias(_at("satisfaction", k)),
        ]
    return interactions_df.transform(filter_as_of, max(cutoffs)).groupBy("customer_id").agg(*aggregates)


def latest_rated_first(ts: Column, satisfaction: Column) -> Column:
    """An ordering key for rated interactions: later `ts` first, ties broken by the higher score; null if unrated.

    Equivalent to struct(ts, satisfaction), but a long keeps max_by in a hash aggregation (a struct key forces a
    sort-based one): microseconds since the epoch times 8, plus the score, which the input contract bounds to
    1..5 (validation quarantines anything else, so the score always fits in the low 3 bits).
    """
    return F.when(satisfaction.isNotNull(), F.unix_micros(ts) * F.lit(8) + satisfaction.cast(T.LongType()))


def _feature_columns(snapshot_date: Column, *, has_interactions: bool) -> dict[str, Column]:
    """Each output column from the joined customer and aggregate rows of one cutoff (`snapshot_date`, a date
    column); prospects have null aggregates."""
    snapshot_day = F.unix_date(snapshot_date)
    purchases = F.coalesce(F.col("purchases"), F.lit(0))
    purchase_days = F.col("purchase_days")
    gaps = purchase_days - 1
    span = F.col("last_day") - F.col("first_day")
    has_purchase = purchases > 0
    has_gap = has_purchase & (purchase_days >= 2)
    has_two_gaps = has_purchase & (purchase_days >= 3)
    signed_up = F.col("signup_date") <= snapshot_date
    # Sample variance of the gaps from exact integer sums: (k * sum(g^2) - (sum g)^2) / (k (k - 1)), sum g = span.
    gap_variance = ((gaps * F.col("sum_squared_gaps") - span * span).cast(T.DoubleType())
                    / (gaps * (gaps - 1)).cast(T.DoubleType()))

    def zero_if_null(name: str, zero: float | int) -> Column:
        return F.coalesce(F.col(name), F.lit(zero))

    columns = {
        "customer_id": F.col("customer_id"),
        "snapshot_date": snapshot_date,
        "recency_days": snapshot_day - F.col("last_day"),
        "frequency": zero_if_null("lookback_purchases", 0),
        "monetary": zero_if_null("lookback_net_amount", 0.0),
        "avg_order_value": F.when(has_purchase, F.col("purchase_amount") / purchases),
        "tenure_days": F.when(signed_up, F.datediff(snapshot_date, F.col("signup_date"))),
        "days_since_first_purchase": snapshot_day - F.col("first_day"),
        "mean_days_between_purchases": F.when(has_gap, span / gaps),
        "std_days_between_purchases": F.when(has_two_gaps, F.sqrt(gap_variance)),
        **{f"purchases_{n}d": zero_if_null(f"window_purchases_{n}", 0) for n in ACTIVITY_WINDOWS_DAYS},
        **{f"spend_{n}d": zero_if_null(f"window_spend_{n}", 0.0) for n in ACTIVITY_WINDOWS_DAYS},
        "spend_trend_90d": (zero_if_null(f"window_spend_{TREND_WINDOW_DAYS}", 0.0)
                            - zero_if_null("previous_trend_spend", 0.0)),
        "distinct_categories": zero_if_null("categories", 0),
        "return_rate": F.when(has_purchase, zero_if_null("returns", 0) / purchases),
        "online_share": F.when(has_purchase, F.col("online_purchases") / purchases),
        "bgnbd_frequency": F.when(has_purchase, gaps),
        "bgnbd_recency": F.when(has_purchase, span),
        "bgnbd_T": F.when(has_purchase, snapshot_day - F.col("first_day")),
        "bgnbd_monetary": F.when(has_gap, F.col("repeat_day_amount") / gaps),
    }
    if has_interactions:
        columns.update({
            "interactions_365d": zero_if_null("window_interactions", 0),
            "interaction_cost_365d": zero_if_null("window_cost", 0.0),
            "complaints_365d": zero_if_null("window_complaints", 0),
            "last_satisfaction": F.col("satisfaction"),
        })
    else:
        columns.update({name: F.lit(None) for name in INTERACTION_FEATURES})
    return columns
