"""Row-level validation of the input tables: every row is clean or quarantined with exactly one reason.

Each table's rules are checked in a fixed order (`RULE_ORDER`, docs/validation.md) and the first failing rule is
the row's reason. Duplicate keys are decided last, among the rows that passed every other rule, so a bad row
never makes a good duplicate disappear. One flagged frame per table (its rows plus `reason`, null when clean) is
the single definition from which the clean rows, the quarantine rows and the counts are derived.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segscale.config import ValidationSettings
from segscale.contract import CONTRACT
from segscale.errors import InputError
from segscale.transforms.conform import InputTables, original_record, without_raw
from segscale.transforms.features import utc_day

# ---- reason codes ------------------------------------------------------------------------------------------
NULL_TRANSACTION_ID = "null_transaction_id"  # transaction_id null, empty or whitespace only
NULL_INTERACTION_ID = "null_interaction_id"  # interaction_id null, empty or whitespace only
NULL_CUSTOMER_ID = "null_customer_id"  # customer_id null, empty or whitespace only
INVALID_SIGNUP_DATE = "invalid_signup_date"  # signup_date null (or text that is not a date)
INVALID_TIMESTAMP = "invalid_timestamp"  # ts null (or text that is not a timestamp)
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"  # ts before validation.min_timestamp or after the run's clock
INVALID_AMOUNT = "invalid_amount"  # amount null, NaN, infinite or negative
AMOUNT_ABOVE_CEILING = "amount_above_ceiling"  # amount above validation.amount_ceiling
UNKNOWN_TRANSACTION_TYPE = "unknown_transaction_type"  # transaction_type null or not in validation.transaction_types
UNKNOWN_INTERACTION_KIND = "unknown_interaction_kind"  # kind null or not in validation.interaction_kinds
INVALID_SATISFACTION = "invalid_satisfaction"  # satisfaction given but outside 1..5
INVALID_COST = "invalid_cost"  # cost given but NaN, infinite or negative
MISSING_PLAN_DATE = "missing_plan_date"  # a treatment with neither snapshot_date nor treated_on
UNKNOWN_CUSTOMER = "unknown_customer"  # customer_id not among the clean customers (validation.unknown_customer)
DUPLICATE_CUSTOMER_ID = "duplicate_customer_id"  # a later copy of a customer_id (earliest signup_date is kept)
DUPLICATE_TRANSACTION_ID = "duplicate_transaction_id"  # a later copy of a transaction_id (earliest ts is kept)
DUPLICATE_INTERACTION_ID = "duplicate_interaction_id"  # a later copy of an interaction_id (earliest ts is kept)

# The order in which each table's rules are checked: a row's reason is the first rule it fails.
RULE_ORDER: dict[str, tuple[str, ...]] = {
    "customers": (NULL_CUSTOMER_ID, INVALID_SIGNUP_DATE, DUPLICATE_CUSTOMER_ID),
    "transactions": (
        NULL_TRANSACTION_ID, NULL_CUSTOMER_ID, INVALID_TIMESTAMP, TIMESTAMP_OUT_OF_RANGE, INVALID_AMOUNT,
        AMOUNT_ABOVE_CEILING, UNKNOWN_TRANSACTION_TYPE, UNKNOWN_CUSTOMER, DUPLICATE_TRANSACTION_ID,
    ),
    "interactions": (
        NULL_INTERACTION_ID, NULL_CUSTOMER_ID, INVALID_TIMESTAMP, TIMESTAMP_OUT_OF_RANGE, UNKNOWN_INTERACTION_KIND,
        INVALID_SATISFACTION, INVALID_COST, UNKNOWN_CUSTOMER, DUPLICATE_INTERACTION_ID,
    ),
    "treatments": (NULL_CUSTOMER_ID, MISSING_PLAN_DATE, INVALID_COST),
}
SATISFACTION_RANGE = (1, 5)


REASON = "reason"
_HAS_CUSTOMER = "has_known_customer"
# Repeated keys, at most this many, are decided with their hashes broadcast (8 bytes each).
MAX_BROADCAST_KEYS = 2_000_000
# Working columns of the duplicate rule (`_flag_events`).
_COPY, _KEY_HASH, _HELD_BY_OTHERS = "copy_number", "key_hash", "keys_held_by_others"

Rule = tuple[str, Column]  # (reason code, condition that is true when the row fails the rule)
EventFrames = tuple[DataFrame, list[DataFrame]]  # the flagged rows, and the frames they read that validation persists


@dataclass(frozen=True)
class Validated:
    """Clean rows per table (contract columns only), every table's bad rows, and the flagged frames they come from.

    `flagged` maps each present table to its rows with a `reason` column (null when clean); `customers`,
    `transactions`, `interactions`, `quarantine` and `reason_counts` all derive from it. The flagged frames are
    cheap projections of the frames in `kept` (the customers with their rules; each events table shuffled by
    customer_id with the reason of its row rules; the hashes of keys more than one of its rows holds, and those
    keys' rows with the duplicate rule decided), which validation persists and computes (one shuffle of each
    events table); unpersist them when done. The flagged
    events stay partitioned by customer_id, so the features read them without shuffling them again.
    """

    customers: DataFrame  # derived from the transactions when the input has no customers table
    transactions: DataFrame
    interactions: DataFrame | None
    quarantine: DataFrame
    flagged: Mapping[str, DataFrame]
    kept: tuple[DataFrame, ...]
    treatments: DataFrame | None = None


class TableCounts(TypedDict):
    """One input table's rows and bad rows per reason (in rule order, only reasons that occurred); JSON-ready for
    the run summary and commit metadata."""

    rows: int
    bad: dict[str, int]


def bad_share(counts: TableCounts) -> float:
    """Bad rows over rows; 0 for an empty table."""
    return sum(counts["bad"].values()) / counts["rows"] if counts["rows"] else 0.0


# ---- column functions --------------------------------------------------------------------------------------
def is_blank(column: Column) -> Column:
    """Null, empty, or only whitespace (Unicode whitespace included)."""
    return column.isNull() | column.rlike(r"(?U)^\s*$")


def is_non_finite_or_negative(column: Column) -> Column:
    """NaN, +/-infinity or below zero; null when the value is null (rules decide what null means)."""
    return F.isnan(column) | (F.abs(column) == float("inf")) | (column < 0)


def is_outside_time_range(column: Column, earliest: dt.datetime, latest: dt.datetime) -> Column:
    return (column < F.lit(earliest)) | (column > F.lit(latest))


def is_not_in(column: Column, allowed: Sequence[str]) -> Column:
    """Null or not one of `allowed` (exact, case-sensitive match)."""
    return column.isNull() | ~column.isin(*allowed)


def first_failing(rules: Sequence[Rule]) -> Column:
    """The reason code of the first rule whose condition is true; null when every rule passes."""
    (first_reason, first_failed), *rest = rules
    reason = F.when(first_failed, F.lit(first_reason))
    for code, failed in rest:
        reason = reason.when(failed, F.lit(code))
    return reason


# ---- transforms --------------------------------------------------------------------------------------------
def validate_inputs(inputs: InputTables, settings: ValidationSettings, snapshot_date: dt.date, run_id: str,
                    now: dt.datetime) -> Validated:
    """Split every input table into clean rows and quarantined rows (with reason, original record and run).
    Without a customers table, the customers are derived from the clean transactions (`derived_customers`).
    Runs a Spark job per events table (its shuffle and the count of repeated keys; one more when keys repeat) and keeps
    what later reads need persisted (`Validated.kept`)."""
    flagged, kept = flag_inputs(inputs, settings, now)
    clean = {name: without_raw(df.where(F.col(REASON).isNull()).drop(REASON)) for name, df in flagged.items()}
    customers_df = clean["customers"] if inputs.customers is not None else derived_customers(clean["transactions"])
    quarantine_df = functools.reduce(DataFrame.unionByName, [
        quarantine_rows(name, df, snapshot_date, run_id) for name, df in flagged.items()
    ])
    return Validated(customers_df, clean["transactions"], clean.get("interactions"), quarantine_df, flagged,
                     tuple(kept), clean.get("treatments"))


def derived_customers(transactions_df: DataFrame) -> DataFrame:
    """One customer per customer_id of the clean transactions, signed up on the UTC day of their first
    transaction (of any type), with the contract's other customer columns null."""
    first_day = F.date_from_unix_date(F.min(utc_day(F.col("ts"))))
    signups_df = transactions_df.groupBy("customer_id").agg(first_day.alias("signup_date"))
    return signups_df.select(*[F.col(c.name) if c.name in signups_df.columns else F.lit(None).cast(c.data_type)
                               .alias(c.name) for c in CONTRACT["customers"]])


def flag_inputs(inputs: InputTables, settings: ValidationSettings, now: dt.datetime
                ) -> tuple[dict[str, DataFrame], list[DataFrame]]:
    """Each present table's rows (contract and raw-text columns) with `reason`: null for clean rows; and the
    frames they derive from that are read more than once (`Validated.kept`). Without a customers table every
    transaction's customer is known, and an interaction's customer is known when it has a clean transaction."""
    now = now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)  # a naive clock is read as UTC
    earliest = dt.datetime.combine(settings.min_timestamp, dt.time(), tzinfo=dt.UTC)
    quarantine_unknown = settings.unknown_customer == "quarantine"
    flagged, kept = {}, []
    known_df = None
    if inputs.customers is not None:
        flagged["customers"] = flag_customers(inputs.customers).persist(StorageLevel.MEMORY_AND_DISK)
        kept.append(flagged["customers"])
        if quarantine_unknown:
            # Clean customers have unique, non-null ids, so the left joins below add no rows.
            known_df = (flagged["customers"].where(F.col(REASON).isNull())
                        .select("customer_id", F.lit(True).alias(_HAS_CUSTOMER)))
    flagged["transactions"], parts = flag_transactions(inputs.transactions, settings, earliest, now, known_df)
    kept += parts
    if inputs.interactions is not None:
        if inputs.customers is None and quarantine_unknown:
            known_df = (flagged["transactions"].where(F.col(REASON).isNull()).select("customer_id").distinct()
                        .select("customer_id", F.lit(True).alias(_HAS_CUSTOMER)))
        flagged["interactions"], parts = flag_interactions(inputs.interactions, settings, earliest, now, known_df)
        kept += parts
    if inputs.treatments is not None:
        flagged["treatments"] = flag_treatments(inputs.treatments).persist(StorageLevel.MEMORY_AND_DISK)
        kept.append(flagged["treatments"])
    return flagged, kept


def flag_customers(customers_df: DataFrame) -> DataFrame:
    """Customers with their reason; of several rows with one id the earliest signup_date is kept."""
    is_missing_id = is_blank(F.col("customer_id"))
    is_missing_signup = F.col("signup_date").isNull()
    rules = [(NULL_CUSTOMER_ID, is_missing_id), (INVALID_SIGNUP_DATE, is_missing_signup)]
    return customers_df.select(
        *customers_df.columns,
        _with_duplicate_rule(rules, customers_df.columns, "customer_id", "signup_date", DUPLICATE_CUSTOMER_ID)
        .alias(REASON),
    )


def flag_transactions(transactions_df: DataFrame, settings: ValidationSettings, earliest: dt.datetime,
                      now: dt.datetime, known_customers_df: DataFrame | None) -> EventFrames:
    """Transactions with their reason; `known_customers_df` None keeps rows of unknown customers."""
    amount = F.col("amount")
    is_missing_id = is_blank(F.col("transaction_id"))
    is_missing_customer = is_blank(F.col("customer_id"))
    is_missing_ts = F.col("ts").isNull()
    is_ts_out_of_range = is_outside_time_range(F.col("ts"), earliest, now)
    is_invalid_amount = amount.isNull() | is_non_finite_or_negative(amount)
    # Checked after the invalid-amount rule: Spark orders NaN above every number.
    is_above_ceiling = amount > F.lit(settings.amount_ceiling)
    is_unknown_type = is_not_in(F.col("transaction_type"), settings.transaction_types)
    rules = [
        (NULL_TRANSACTION_ID, is_missing_id),
        (NULL_CUSTOMER_ID, is_missing_customer),
        (INVALID_TIMESTAMP, is_missing_ts),
        (TIMESTAMP_OUT_OF_RANGE, is_ts_out_of_range),
        (INVALID_AMOUNT, is_invalid_amount),
        (AMOUNT_ABOVE_CEILING, is_above_ceiling),
        (UNKNOWN_TRANSACTION_TYPE, is_unknown_type),
    ]
    return _flag_events(transactions_df, rules, known_customers_df, "transaction_id", DUPLICATE_TRANSACTION_ID)


def flag_interactions(interactions_df: DataFrame, settings: ValidationSettings, earliest: dt.datetime,
                      now: dt.datetime, known_customers_df: DataFrame | None) -> EventFrames:
    """Interactions with their reason; `known_customers_df` None keeps rows of unknown customers."""
    cost = F.col("cost")
    satisfaction = F.col("satisfaction")
    low, high = SATISFACTION_RANGE
    is_missing_id = is_blank(F.col("interaction_id"))
    is_missing_customer = is_blank(F.col("customer_id"))
    is_missing_ts = F.col("ts").isNull()
    is_ts_out_of_range = is_outside_time_range(F.col("ts"), earliest, now)
    is_unknown_kind = is_not_in(F.col("kind"), settings.interaction_kinds)
    # Null satisfaction (not asked) and null cost (not known) are allowed.
    is_invalid_satisfaction = (satisfaction < low) | (satisfaction > high)
    is_invalid_cost = is_non_finite_or_negative(cost)
    rules = [
        (NULL_INTERACTION_ID, is_missing_id),
        (NULL_CUSTOMER_ID, is_missing_customer),
        (INVALID_TIMESTAMP, is_missing_ts),
        (TIMESTAMP_OUT_OF_RANGE, is_ts_out_of_range),
        (UNKNOWN_INTERACTION_KIND, is_unknown_kind),
        (INVALID_SATISFACTION, is_invalid_satisfaction),
        (INVALID_COST, is_invalid_cost),
    ]
    return _flag_events(interactions_df, rules, known_customers_df, "interaction_id", DUPLICATE_INTERACTION_ID)


def flag_treatments(treatments_df: DataFrame) -> DataFrame:
    """Treatments with their reason. A customer may have several rows for one plan (several touches): their costs
    add up, so repeated rows are not duplicates; a treatment of a customer outside the plan is not an error either
    (the outcome measurement counts only the plan's customers)."""
    rules = [
        (NULL_CUSTOMER_ID, is_blank(F.col("customer_id"))),
        (MISSING_PLAN_DATE, F.col("snapshot_date").isNull() & F.col("treated_on").isNull()),
        (INVALID_COST, is_non_finite_or_negative(F.col("cost"))),
    ]
    return treatments_df.select(*treatments_df.columns, first_failing(rules).alias(REASON))


def quarantine_rows(source_table: str, flagged_df: DataFrame, snapshot_date: dt.date, run_id: str) -> DataFrame:
    """A flagged table's bad rows as the quarantine table holds them (segscale.catalog.QUARANTINE)."""
    input_df = flagged_df.drop(REASON)
    return flagged_df.where(F.col(REASON).isNotNull()).select(
        F.lit(source_table).alias("source_table"),
        F.col(REASON).alias("reason"),
        original_record(input_df).alias("record"),
        F.lit(snapshot_date).cast(T.DateType()).alias("snapshot_date"),
        F.lit(run_id).alias("run_id"),
    )


def _flag_events(events_df: DataFrame, rules: list[Rule], known_customers_df: DataFrame | None, key: str,
                 duplicate_reason: str) -> EventFrames:
    """Add the unknown-customer rule (one join) and the duplicate rule to a table's row rules, with the table
    shuffled once, by customer_id: the flagged rows, and the frames they read, persisted here (the rows by
    customer_id with the reason of their row rules, the hashes of repeated keys and those keys' rows with the
    duplicate rule decided; `Validated.kept`).

    The flagged rows stay partitioned by customer_id, so the features and the training set, which group each
    customer's events, read them without shuffling the events again. Duplicate keys are rare: one narrow
    aggregation (a 64-bit hash of the key and a count per row that passes the row rules) finds the hashes of keys
    more than one such row holds, and only the rows of those keys are ranked (`_decided_copies`); every other row
    keeps the reason of its row rules, without a sort.
    """
    columns = events_df.columns
    partitions = int(events_df.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    events_df = events_df.repartition(partitions, "customer_id")
    if known_customers_df is not None:
        # A hash join keeps the events where the repartition put them, unsorted (a sort-merge join sorts them).
        events_df = events_df.join(known_customers_df.hint("shuffle_hash"), "customer_id", how="left")
        rules = [*rules, (UNKNOWN_CUSTOMER, F.col(_HAS_CUSTOMER).isNull())]
    checked_df = (events_df.select(*columns, first_failing(rules).alias(REASON))
                  .persist(StorageLevel.MEMORY_AND_DISK))
    passes_rules = F.col(REASON).isNull()
    repeated_df = _repeated_key_hashes(checked_df.where(passes_rules), key).persist(StorageLevel.MEMORY_AND_DISK)
    repeated = repeated_df.count()  # runs the table's shuffle into checked_df's cache
    if not repeated:
        return checked_df, [checked_df, repeated_df]
    if repeated <= MAX_BROADCAST_KEYS:  # the common case: the hashes are broadcast, the rows stay where they are
        hashes_df = F.broadcast(repeated_df)
        is_repeated = passes_rules & (F.xxhash64(F.col(key)) == F.col(_KEY_HASH))
        contested_df = checked_df.join(hashes_df, is_repeated, how="left_semi")
        settled_df = checked_df.join(hashes_df, is_repeated, how="left_anti")
    else:  # too many to broadcast: every row that passes is ranked, and only the first copies are joined by a shuffle
        hashes_df = repeated_df
        contested_df, settled_df = checked_df.where(passes_rules), checked_df.where(~passes_rules)
    # Decided once for every reader (a window, a shuffle by key and a join; usually over a few rows).
    decided_df = (_decided_copies(contested_df, hashes_df, columns, key, duplicate_reason)
                  .persist(StorageLevel.MEMORY_AND_DISK))
    # Materialized now: until its adaptive plan has run, a cached frame reports no partitioning, and the union
    # below would then lose the customer_id partitioning for every plan built on it.
    decided_df.count()
    # Both sides keep the customer_id partitioning, and so does their union.
    return settled_df.unionByName(decided_df), [checked_df, repeated_df, decided_df]


def _repeated_key_hashes(passing_df: DataFrame, key: str) -> DataFrame:
    """The 64-bit hashes of the keys that more than one row passing the row rules holds (a superset of those keys:
    a hash collision only adds a key's rows to the exact step of `_decided_copies`, which decides them correctly).
    One narrow aggregation: a hash and a count per row."""
    return (passing_df.groupBy(F.xxhash64(F.col(key)).alias(_KEY_HASH)).count()
            .where(F.col("count") > 1).select(_KEY_HASH))


def _decided_copies(contested_df: DataFrame, hashes_df: DataFrame, columns: Sequence[str], key: str,
                    duplicate_reason: str) -> DataFrame:
    """The rows passing the row rules whose key may be repeated, with `reason` the duplicate rule's (null: kept).

    Copies at one customer are ranked in place (the rows are partitioned by customer_id); of each key's first
    copies, one per customer, the earliest `ts` is kept, the remaining columns breaking ties, as if the key had
    been decided over all its rows at once. Only those first copies of keys in `hashes_df` move, by key."""
    copies = Window.partitionBy("customer_id", key).orderBy(*_keep_first(columns, key, "ts"))
    ranked_df = contested_df.select(*columns, F.row_number().over(copies).alias(_COPY))
    first_copies_df = ranked_df.where(F.col(_COPY) == 1).join(
        hashes_df, F.xxhash64(F.col(key)) == F.col(_KEY_HASH), how="left_semi")
    by_key = Window.partitionBy(key).orderBy(*_keep_first(columns, key, "ts"))
    held_df = (first_copies_df.select("customer_id", key, F.row_number().over(by_key).alias(_COPY))
               .where(F.col(_COPY) > 1).groupBy("customer_id").agg(F.collect_set(key).alias(_HELD_BY_OTHERS)))
    is_later_copy = (F.col(_COPY) > 1) | F.coalesce(F.array_contains(F.col(_HELD_BY_OTHERS), F.col(key)),
                                                    F.lit(False))
    return ranked_df.join(held_df, "customer_id", how="left").select(
        *columns, F.when(is_later_copy, F.lit(duplicate_reason)).alias(REASON))


def _keep_first(columns: Sequence[str], key: str, first_by: str) -> list[Column]:
    """The order in which copies of a key are kept: the earliest `first_by`, then the remaining columns (raw text
    included), so which copy is kept never depends on partitioning or input order."""
    tie_break = [F.col(c).asc_nulls_last() for c in columns if c not in (key, first_by)]
    return [F.col(first_by).asc_nulls_last(), *tie_break]


def _with_duplicate_rule(rules: list[Rule], columns: Sequence[str], key: str, first_by: str,
                         duplicate_reason: str) -> Column:
    """The reason over `rules` and, last, a duplicate-key rule among the rows that pass all of them (rows
    passing every other rule come first, then `_keep_first`)."""
    is_candidate = first_failing(rules).isNull()
    by_key = Window.partitionBy(key).orderBy(is_candidate.desc(), *_keep_first(columns, key, first_by))
    is_later_duplicate = F.row_number().over(by_key) > 1
    return first_failing([*rules, (duplicate_reason, is_later_duplicate)])


# ---- counts and the stop rule ------------------------------------------------------------------------------
def reason_counts(validated: Validated) -> dict[str, TableCounts]:
    """Rows and bad rows per reason for every validated table, from one small aggregate over the flagged frames."""
    per_table = [df.select(F.lit(name).alias("source_table"), F.col(REASON)) for name, df in validated.flagged.items()]
    counts_df = functools.reduce(DataFrame.unionByName, per_table).groupBy("source_table", REASON).count()
    found = counts_df.collect()  # small: one row per (table, reason), at most a few dozen
    result: dict[str, TableCounts] = {}
    for name in validated.flagged:
        per_reason = {row[REASON]: row["count"] for row in found if row["source_table"] == name}
        bad = {code: per_reason[code] for code in RULE_ORDER[name] if code in per_reason}
        result[name] = TableCounts(rows=sum(per_reason.values()), bad=bad)
    return result


def check_bad_ratios(counts: Mapping[str, TableCounts], max_bad_ratio: float) -> None:
    """Stop the run (InputError) when any table's bad share exceeds `max_bad_ratio`; a share at the limit passes."""
    tripped = [(name, c) for name, c in counts.items() if bad_share(c) > max_bad_ratio]
    if not tripped:
        return
    lines = []
    for name, c in tripped:
        rules = ", ".join(f"{code} {n:,}" for code, n in sorted(c["bad"].items(), key=lambda item: -item[1]))
        lines.append(f"{name}: {sum(c['bad'].values()):,} of {c['rows']:,} rows bad ({bad_share(c):.2%}, limit "
                     f"{max_bad_ratio:.2%}); rules: {rules}")
    raise InputError("input validation failed, nothing was published:\n  " + "\n  ".join(lines)
                     + "\nsee docs/validation.md; fix the inputs or raise validation.max_bad_ratio")
