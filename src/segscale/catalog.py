"""The table catalog: one declaration per published table (its columns with their types, nullability and meaning,
its partitioning, write mode and key, and its documentation), used by the writers (`Warehouse`, `Run.publish`),
`segscale sql`, the report, the tests and the data dictionary, which is generated from it:
`python -m segscale.catalog --update docs` (`make docs`) rewrites docs/data-dictionary.md.

The input tables' contract stays in `segscale.contract`: it declares what segscale accepts (required and optional
columns, mapped by `input.columns`, read from Delta, Parquet or CSV), not what it publishes, and the config reads
it, which must not import the table layer.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from segscale.errors import InputError, SchemaMismatchError

WriteMode = Literal["replace_partition", "append"]
DICTIONARY_FILE = "data-dictionary.md"
# The Spark SQL type names a column may have (`array<...>` of any of them too).
TYPES: dict[str, T.DataType] = {
    "string": T.StringType(), "int": T.IntegerType(), "long": T.LongType(), "double": T.DoubleType(),
    "boolean": T.BooleanType(), "date": T.DateType(), "timestamp": T.TimestampType(),
}


def data_type(name: str) -> T.DataType:
    """The Spark type of a catalog type name: `long`, `array<string>`, ..."""
    array = re.fullmatch(r"array<(.+)>", name)
    if array:
        return T.ArrayType(data_type(array.group(1)))
    if name not in TYPES:
        raise ValueError(f"unknown column type {name!r}; use one of {sorted(TYPES)} or array<...>")
    return TYPES[name]


@dataclass(frozen=True)
class Column:
    """One column: its Spark type name, whether a value can be null (the Delta schema itself is nullable
    everywhere), what it means. `added`: newer than its table, so a table written by an older segscale gains it
    (null in its earlier rows) at its next write."""

    name: str
    type: str
    doc: str
    nullable: bool = True
    added: bool = False

    def __post_init__(self) -> None:
        data_type(self.type)

    @property
    def data_type(self) -> T.DataType:
        return data_type(self.type)


def alike(names: str, types: str, doc: str, nullable: bool = True) -> tuple[Column, ...]:
    """Columns described together (the dictionary shows them in one row): space-separated names and either one
    type for all or one type each."""
    names_, types_ = names.split(), types.split()
    types_ = types_ * len(names_) if len(types_) == 1 else types_
    return tuple(Column(n, t, doc, nullable) for n, t in zip(names_, types_, strict=True))


@dataclass(frozen=True)
class Table:
    """One published table. `write`: `replace_partition` replaces one partition (a snapshot) per commit, `append`
    adds rows. `key`: the columns that identify a row (empty when rows have no identity of their own).
    `cluster_by`: the columns `segscale maintain` Z-orders each partition's files by, so a lookup by them reads few
    files (empty: the files are only compacted). `outlives_retention`: snapshot retention
    (`maintenance.keep_snapshots`, `keep_days`) never deletes its rows."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...]
    write: WriteMode
    key: tuple[str, ...]
    written_by: str
    cadence: str
    commit_metadata: str
    notes: str = ""
    cluster_by: tuple[str, ...] = ()
    outlives_retention: bool = False

    def __post_init__(self) -> None:
        names = self.column_names
        unknown = [c for c in (*self.partition_by, *self.key, *self.cluster_by) if c not in names]
        if len(set(names)) != len(names) or unknown:
            raise ValueError(f"table {self.name}: duplicate columns or unknown partition/key columns {unknown}")
        if (self.write == "replace_partition") != bool(self.partition_by):
            raise ValueError(f"table {self.name}: replace_partition needs partition columns, append none")

    def __str__(self) -> str:
        return self.name

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def spark_schema(self) -> T.StructType:
        """The schema rows are written with: every column nullable, as the Delta tables store it."""
        return T.StructType([T.StructField(c.name, c.data_type, True) for c in self.columns])

    @property
    def added_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.added)

    def mismatches(self, schema: T.StructType) -> list[str]:
        """How `schema` differs from the declaration (names and types; nullability and order aside)."""
        declared = {c.name: c.data_type for c in self.columns}
        given = {f.name: f.dataType for f in schema.fields}
        problems = [f"missing {n}" for n in declared if n not in given]
        problems += [f"undeclared {n} ({given[n].simpleString()})" for n in given if n not in declared]
        problems += [f"{n} is {given[n].simpleString()}, declared {declared[n].simpleString()}"
                     for n in declared if n in given and _type_key(given[n]) != _type_key(declared[n])]
        return problems

    def conform(self, df: DataFrame) -> DataFrame:
        """`df` with the declared columns in declared order; SchemaMismatchError naming the table and the differing
        columns when its columns or types are not the declared ones."""
        problems = self.mismatches(df.schema)
        if problems:
            raise SchemaMismatchError(f"the frame for table {self.name} does not match its catalog declaration "
                                      f"(segscale.catalog): {'; '.join(problems)}. Nothing was written.")
        return df.select(*self.column_names)


def _type_key(data_type: T.DataType) -> T.DataType:
    """A type without its nullability (arrays and their elements)."""
    if isinstance(data_type, T.ArrayType):
        return T.ArrayType(_type_key(data_type.elementType), True)
    return data_type


# ---- the declarations -------------------------------------------------------------------------------------------
QUARANTINE = Table(
    name="quarantine",
    doc=('The input rows validation rejected, one row per bad row of `customers`, `transactions` and '
         '`interactions` together, each with its reason code; written by the validate stage (rules: '
         '[docs/validation.md](validation.md)).'),
    columns=(
        Column("source_table", "string", nullable=False,
               doc='the input table the row came from: `customers`, `transactions` or `interactions`. Never null'),
        Column("reason", "string", nullable=False,
               doc="the reason code of the first rule the row fails, in the table's rule order (`null_customer_id`, "
                   '`invalid_amount`, `duplicate_transaction_id`, ...: [docs/validation.md](validation.md)); exactly '
                   'one per row. Never null'),
        Column("record", "string", nullable=False,
               doc="the row as it arrived, as a JSON object of the table's contract columns in contract order "
                   '(columns outside the contract are not kept; a missing optional column and a null value appear as '
                   '`null`). For CSV input the original text of converted columns (an unparseable timestamp such as '
                   '`"yesterday"` is kept verbatim); for typed inputs the values (NaN as `"NaN"`, timestamps in UTC).'
                   ' Never null'),
        Column("snapshot_date", "date", nullable=False,
               doc="the run's snapshot date (the partition), not a date of the row. Never null"),
        Column("run_id", "string", nullable=False,
               doc='the run that found the row (`runs.run_id`). Never null'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=(),
    written_by=('the validate stage (`stage: validate`) of `segscale run`, `segscale features` and `segscale '
                "validate`; replace_partition per snapshot: a rerun replaces that snapshot's partition, so a "
                'rerun on clean input leaves it without rows. `segscale train` validates the inputs but '
                'publishes no quarantine rows. A run that stops on `validation.max_bad_ratio` writes nothing.'),
    cadence=('every run of those commands for a snapshot. Validation does not look at the snapshot date, so a '
             "snapshot's partition holds the bad rows of the whole input as read at run time (events after the "
             "snapshot included); `timestamp_out_of_range` compares with the run's own clock, so a rerun can "
             'differ.'),
    commit_metadata=('`run_id`, `stage` (`validate`), `config_hash`, `snapshot_date`, `package_version`, and '
                     '`extra.quarantined`: per input table read, `{"rows": N, "bad": {reason: count}}` (reasons '
                     'in rule order, only those that occurred). No `model_version`.'),
)

CUSTOMER_FEATURES = Table(
    name="customer_features",
    doc=('One row per customer per snapshot with the behaviour features as of the end of the snapshot date (UTC); '
         'written by the features stage (conventions and edge cases: [docs/features.md](features.md)).'),
    columns=(
        Column("customer_id", "string", nullable=False,
               doc='the customer. Never null'),
        Column("snapshot_date", "date", nullable=False,
               doc='D, the snapshot date (events with `ts` before D + 1 day, UTC, count). Never null'),
        Column("recency_days", "int",
               doc='days from the last purchase day to D (0 = bought on D), all history. Null when the customer has '
                   'no purchase (a prospect)'),
        Column("frequency", "long", nullable=False,
               doc='number of purchases in the lookback window: the last `rfm.lookback_days` days, all history when '
                   'it is null (the default). Never null (0)'),
        Column("monetary", "double", nullable=False,
               doc='purchase amounts minus return amounts in the lookback window; can be negative when returns of '
                   'older purchases fall inside the window or exceed the purchases. Never null (0.0)'),
        Column("avg_order_value", "double",
               doc='purchase amounts / number of purchases, all history, not net of returns. Null when the customer '
                   'has no purchase'),
        Column("tenure_days", "int",
               doc='days from `signup_date` to D. Null when the customer signed up after D, which the published table'
                   ' never holds (its population is the customers signed up by D)'),
        Column("days_since_first_purchase", "int",
               doc='days from the first purchase day to D. Null when the customer has no purchase'),
        Column("mean_days_between_purchases", "double",
               doc='mean gap between consecutive purchase days = (last purchase day - first purchase day) / (purchase'
                   ' days - 1), all history. Null when there are fewer than 2 purchase days'),
        Column("std_days_between_purchases", "double",
               doc='sample standard deviation (n - 1 denominator) of those gaps, from exact integer sums. Null when '
                   'there are fewer than 3 purchase days (fewer than 2 gaps)'),
        *alike("purchases_30d purchases_90d purchases_365d", "long", nullable=False,
               doc='number of purchases in the last 30 / 90 / 365 days. Never null (0)'),
        *alike("spend_30d spend_90d spend_365d", "double", nullable=False,
               doc='purchase amounts in the last 30 / 90 / 365 days, returns not subtracted. Never null (0.0)'),
        Column("spend_trend_90d", "double", nullable=False,
               doc='`spend_90d` minus the purchase amounts of the 90 days before them (days D-179 .. D-90); > 0 means'
                   ' rising spend. A difference, not a ratio, so it is defined for everyone. Never null (0.0)'),
        Column("distinct_categories", "long", nullable=False,
               doc='number of distinct non-null `category` values among purchases, all history. Never null (0)'),
        Column("return_rate", "double",
               doc='number of returns / number of purchases, all history; a return counts even when its purchase is '
                   'older than the history, so the rate can exceed 1. Null when the customer has no purchase'),
        Column("online_share", "double",
               doc='share of purchases whose `channel` is in `features.online_channels` (default `online`, `app`; a '
                   'null channel is not online), all history. Null when the customer has no purchase'),
        Column("interactions_365d", "long",
               doc='interactions of any kind in the last 365 days; 0 for a customer without any. Null for every '
                   'customer when the run had no interactions table'),
        Column("interaction_cost_365d", "double",
               doc='summed `cost` of those interactions (null costs count as 0); 0.0 for a customer without any. Null'
                   ' for every customer when the run had no interactions table'),
        Column("complaints_365d", "long",
               doc='interactions in the last 365 days whose `kind` is in `features.complaint_kinds` (default '
                   '`complaint`); 0 for a customer without any. Null for every customer when the run had no '
                   'interactions table'),
        Column("last_satisfaction", "int",
               doc='`satisfaction` (1..5) of the latest interaction that has one, all history up to D. Interactions '
                   'without a score are skipped; when two scored interactions share the latest `ts`, the higher score'
                   ' wins. Null when the customer has no scored interaction, or the run had no interactions table'),
        Column("bgnbd_frequency", "long",
               doc='BG/NBD x: purchase days - 1, the number of repeat purchase days, all history. Null when the '
                   'customer has no purchase (prospects are not x = 0)'),
        Column("bgnbd_recency", "int",
               doc='BG/NBD t_x: days from the first to the last purchase day (0 with one purchase day), all history. '
                   'Null when the customer has no purchase'),
        Column("bgnbd_T", "int",
               doc='BG/NBD T: days from the first purchase day to D (equal to `days_since_first_purchase`). Null when'
                   ' the customer has no purchase'),
        Column("bgnbd_monetary", "double",
               doc='zbar: purchase amounts on the repeat purchase days / `bgnbd_frequency`, that is the mean spend '
                   'per purchase day excluding the first purchase day; returns not subtracted. Null when '
                   '`bgnbd_frequency` is 0 or null (`lifetimes` reports 0 there)'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("customer_id", "snapshot_date"),
    written_by=('the features stage (`stage: features`) of `segscale run` and `segscale features`, from the '
                "validated inputs; replace_partition per snapshot: a rerun replaces that snapshot's partition. "
                '`segscale train` computes the same features as of its cutoffs but publishes none.'),
    cadence=('every run of those commands for a snapshot. A rerun for the same date gives the same rows unless '
             'the clean inputs up to the end of that date, the customers who had signed up by it, or the '
             '`features` and `rfm.lookback_days` settings changed.'),
    commit_metadata=('`run_id`, `stage` (`features`), `config_hash`, `snapshot_date`, `package_version`; no '
                     '`model_version`, no `extra`.'),
    notes=('Population: the customers who had signed up by the end of D (prospects included), one row each. "D" is '
          'the snapshot date; "last N days" is D and the N - 1 days before it; a purchase day is a UTC day with at'
          ' least one purchase; "spend" is purchase amounts, returns not subtracted. Counts are long, day '
          'differences int, amounts and ratios double. For a customer with no purchase, counts are 0, sums 0.0, '
          'and features undefined without a purchase are null: a null never stands for 0.'),
)

CUSTOMER_ATTRIBUTES = Table(
    name="customer_attributes",
    doc=("One row per customer per snapshot with what the input says about the customer (region, city tier, signup "
         "channel and cohort): the dimension to break scores and plans down by, e.g. high-value customers at risk "
         "by region ([docs/querying.md](querying.md)); written by the features stage beside `customer_features`."),
    columns=(
        Column("customer_id", "string", nullable=False,
               doc="the customer; the same customers as the snapshot's `customer_features`. Never null"),
        Column("snapshot_date", "date", nullable=False,
               doc='D, the snapshot date. Never null'),
        Column("signup_date", "date", nullable=False,
               doc="`customers.signup_date` (without a customers table: the day of the customer's first transaction"
                   ', as validation derives it). Never null'),
        Column("signup_cohort", "string", nullable=False,
               doc="the signup month, `YYYY-MM` (UTC). Never null"),
        Column("region", "string",
               doc='`customers.region` as the input has it. Null when the input has no region (no such column, or '
                   'no customers table) or the customer has none'),
        Column("city_tier", "int",
               doc='`customers.city_tier` as the input has it (1 = the largest cities, in the generated data). Null '
                   'as `region`'),
        Column("channel", "string",
               doc='`customers.channel`, the channel the customer signed up through. Null as `region`'),
        Column("run_id", "string", nullable=False,
               doc='the run that published the row. Never null'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("customer_id", "snapshot_date"),
    written_by=("the features stage (`stage: features`) of `segscale run` and `segscale features`, from the "
                "validated customers, right after `customer_features`; replace_partition per snapshot: a rerun "
                "replaces that snapshot's partition."),
    cadence="every run of those commands for a snapshot.",
    commit_metadata=('`run_id`, `stage` (`features`), `config_hash`, `snapshot_date`, `package_version`; no '
                     '`model_version`, no `extra`.'),
    notes=('Population: the customers who had signed up by the end of D, as `customer_features`. Join it to any '
           'snapshot table on `(customer_id, snapshot_date)`. The attributes are as the input holds them when the '
           "snapshot is run: a customer who moved region shows the new one in the snapshots run after the move."),
)

CUSTOMER_SCORES = Table(
    name="customer_scores",
    doc=('One row per customer per snapshot with RFM scores and segment, value tier, lifecycle stage, churn score '
         "and CLV; written by the segment stage from the snapshot's published `customer_features`, and re-written "
         'by `segscale score` (definitions: [docs/segmentation.md](segmentation.md), models: '
         '[docs/models.md](models.md)).'),
    columns=(
        Column("customer_id", "string", nullable=False,
               doc="the customer; the same customers as the snapshot's `customer_features`. Never null"),
        Column("snapshot_date", "date", nullable=False,
               doc='D, the snapshot date. Never null'),
        Column("recency_days", "int",
               doc="copied from `customer_features` (see there): null for prospects"),
        *alike("frequency monetary", "long double", nullable=False,
               doc="copied from `customer_features` (see there). Never null"),
        *alike("r_score f_score m_score", "int",
               doc='1..`rfm.bins` (default 5) from the cut points of `recency_days`, `frequency` and `monetary`: bin '
                   '= 1 + number of cut points strictly below the value, reversed for recency (`bins + 1 - bin`), so '
                   '5 = most recent / most frequent / highest spend. Cut points are laid out over buyers on a '
                   'quantile sketch without splitting ties, or fixed by `rfm.cut_points`; a dimension with fewer '
                   'distinct values than bins gets fewer scores (the lowest for f and m, the highest for r). Equal '
                   'values score equally. Null for prospects (`recency_days` null)'),
        Column("rfm_segment", "string",
               doc="name of the first rule of `rfm.segments` whose inclusive r, f and m score ranges hold the buyer's"
                   ' scores (defaults: Champions, Loyal Customers, Cannot Lose Them, At Risk, Potential Loyalists, '
                   'New Customers, Promising, Need Attention, About To Sleep, Hibernating, Lost). Null for prospects'),
        Column("value_tier", "string", nullable=False,
               doc='`high_value` (高价值) for buyers whose `tiers.basis` (`clv` by default, else `monetary`) is '
                   'strictly above its `1 - tiers.high_value_share` quantile over buyers (default top 20 %); '
                   '`potential` (潜力) above the `1 - high_value_share - potential_share` quantile (the next 30 %); '
                   '`regular` (普通) otherwise: the rest of the buyers, buyers with a null basis, every prospect, '
                   'and everyone when there are no buyers. Ties at a boundary go to the lower tier. Never null'),
        Column("lifecycle_stage", "string", nullable=False,
               doc='first match wins: `prospect` (no purchase by D), `churned` (`recency_days` > '
                   '`lifecycle.churned_after_days`, 365), `at_risk` (`recency_days` > `lifecycle.at_risk_after_days`,'
                   ' 120), `new` (`frequency` = 1), `loyal` (`frequency` >= `lifecycle.loyal_min_purchases`, 5), '
                   '`repeat` otherwise. Never null'),
        Column("churn_probability", "double",
               doc='calibrated P(no purchase in the next `churn.horizon_days` days, default 90) from the churn model '
                   "(`model_name` / `model_version`) on the snapshot's features. Null for prospects and for every "
                   'customer when `churn.enabled` is false'),
        Column("churn_risk_band", "string",
               doc='from `churn_probability` and the inclusive lower bounds `churn.risk_bands`: `critical` >= 0.7, '
                   '`high` >= 0.5, `medium` >= 0.3, `low` below. Null when `churn_probability` is null'),
        Column("model_name", "string",
               doc='registered name of the churn model that scored the snapshot (`churn.model_name`, default '
                   '`segscale_churn`); the same on every row, prospects included. Null when no churn model scored '
                   '(`churn.enabled: false`)'),
        Column("model_version", "int",
               doc='registered version number of that churn model (the champion when the stage started, or `segscale '
                   "score --model-version`); the commit metadata's `model_version` is the matching URI. Null when no "
                   'churn model scored'),
        Column("p_alive", "double",
               doc='BG/NBD P(the buyer is still active at D given x, t_x, T) (Fader, Hardie & Lee 2005, eq. 11); 1 '
                   'for buyers with a single purchase day. Null for prospects, when the prediction is not a finite '
                   'number, and for every customer when `clv.enabled` is false'),
        Column("expected_purchases", "double",
               doc='BG/NBD expected purchase days in the next `clv.horizon_days` days (default 365) (eq. 10). Null as'
                   ' `p_alive`'),
        Column("expected_avg_spend", "double",
               doc='Gamma-Gamma conditional mean spend per purchase day given x and `bgnbd_monetary` (Fader & Hardie '
                   '2013, eq. 5); the population mean `p * gamma / (q - 1)` for buyers without a repeat purchase day '
                   'or without positive repeat spend. Null as `p_alive`'),
        Column("clv", "double",
               doc='`expected_avg_spend` × the expected purchases of each 30-day step of the `clv.horizon_days` '
                   'horizon (the last step shorter), each step discounted by `(1 + clv.annual_discount_rate) ^ (-end '
                   'of step / 365)` (default rate 0.10). Null as `p_alive`'),
        Column("expected_purchases_p10", "double",
               doc='the 10th percentile of `expected_purchases` under the fitted BG/NBD parameters\' uncertainty '
                   '(Laplace approximation of the fit, delta method on the log scale; docs/models.md, '
                   '"Intervals"). A band of what the model expects, not of what the customer will do. Null as '
                   '`p_alive`, and when the fit has no covariance (a flat or boundary curvature; versions '
                   'registered before segscale recorded it)'),
        Column("expected_purchases_p90", "double", doc='the 90th percentile, as `expected_purchases_p10`'),
        Column("clv_p10", "double",
               doc='the 10th percentile of `clv` under both fits\' parameter uncertainty (BG/NBD and Gamma-Gamma, '
                   'independent fits, variances of the log added); the conservative CLV a plan may rank on '
                   '(`retention.clv_quantile`). Null as `expected_purchases_p10`'),
        Column("clv_p90", "double", doc='the 90th percentile, as `clv_p10`'),
        Column("clv_model_version", "int",
               doc='registered version of `segscale_clv` (`clv.model_name`) that predicted the eight columns above; '
                   'the same on every row, prospects included. Null when `clv.enabled` is false'),
        Column("run_id", "string", nullable=False,
               doc='the run that published the row, or the `segscale score` run that last re-scored it. Never null'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("customer_id", "snapshot_date"),
    written_by=('the segment stage (`stage: segment`) of `segscale run` and `segscale segment`, which scores '
                'every customer with the champion churn and CLV models pinned when the stage starts; `segscale '
                'score` (`stage: score`) re-scores churn with the champion or `--model-version` and re-writes '
                'the partition with new `churn_probability`, `churn_risk_band`, `model_name`, `model_version` '
                'and `run_id`, every other column kept. replace_partition per snapshot: a rerun replaces that '
                "snapshot's partition."),
    cadence=('every run of `run` or `segment` for a snapshot, and every `score` of it (e.g. after a promotion or'
             ' a rollback of the churn model). It reads only published features, never the transactions.'),
    commit_metadata=('`run_id`, `stage`, `config_hash`, `snapshot_date`, `package_version`, and `model_version`:'
                     ' the pinned churn model URI (e.g. `models:/segscale_churn/3`; left out when no churn model'
                     ' scored, i.e. `churn.enabled: false`). Segment commits also carry `extra.rfm_cut_points` '
                     '(`{"recency": [...], "frequency": [...], "monetary": [...]}`, the cut points used), '
                     '`extra.tier_thresholds` (`{"basis", "high_value_above", "potential_above"}`) and '
                     '`extra.clv_model` (the pinned CLV model URI, e.g. `models:/segscale_clv/2`; `null` with '
                     '`clv.enabled: false`). Score commits carry the same `extra` as the snapshot\'s segment '
                     'commit (the rows they keep were shaped by it) with their own `model_version`.'),
    cluster_by=("customer_id",),
)

SEGMENT_MIGRATION = Table(
    name="segment_migration",
    doc=('How many customers moved between each (value tier, lifecycle stage) of the previous snapshot and this '
         'one; written by the migration stage right after the segment stage.'),
    columns=(
        Column("snapshot_date", "date", nullable=False,
               doc='this snapshot (the "to" side). Never null'),
        Column("previous_snapshot_date", "date", nullable=False,
               doc="the latest `snapshot_date` of `customer_scores` before this snapshot, found from the Delta log's "
                   'partition values; the same on every row. Never null'),
        *alike("from_value_tier from_lifecycle_stage", "string",
               doc="the customer's `value_tier` and `lifecycle_stage` at the previous snapshot. Null for customers "
                   'who are not in the previous snapshot (new since then)'),
        *alike("to_value_tier to_lifecycle_stage", "string",
               doc="the customer's `value_tier` and `lifecycle_stage` at this snapshot. Null for customers of the "
                   'previous snapshot who are not in this one'),
        Column("customers", "long", nullable=False,
               doc='number of customers making that move: the two snapshots full-outer-joined on `customer_id`, '
                   'grouped by the four columns above; only moves that occur have a row (>= 1), and the rows sum to '
                   'the customers of either snapshot. Never null'),
        Column("run_id", "string", nullable=False,
               doc='the run that published the row. Never null'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("snapshot_date", "from_value_tier", "from_lifecycle_stage", "to_value_tier",
         "to_lifecycle_stage"),
    written_by=('the migration stage (`stage: migration`) of `segscale run` and `segscale segment`, after '
                '`customer_scores` is written, from the two snapshots of `customer_scores`; replace_partition '
                "per snapshot: a rerun replaces that snapshot's partition. Nothing is written for the snapshot "
                'when `customer_scores` has no earlier snapshot (the summary says `previous_snapshot: null`). '
                'When `customer_scores` has a later snapshot, the same stage also replaces the partition of the '
                'next later one with its migration from the new scores (in a commit whose `snapshot_date` is '
                "that later snapshot; the summary's `next_snapshot`). `segscale score` does not rewrite it (tiers "
                'and stages do not change on a rescore).'),
    cadence=('every run of `run` or `segment` for a snapshot that has an earlier one. The previous snapshot is '
             'the latest earlier partition of `customer_scores` at run time. A run (or `backfill`) of an older '
             'snapshot rewrites the migration of the next later snapshot, so each partition always compares '
             'that snapshot with the published scores of the one before it, also when the older snapshot was '
             'newly inserted between two others or rerun with other config or input.'),
    commit_metadata=('`run_id`, `stage` (`migration`), `config_hash`, `snapshot_date`, `package_version`; no '
                     '`model_version`, no `extra`.'),
)

RETENTION_PLAN = Table(
    name="retention_plan",
    doc=('Every retention candidate of the snapshot, ranked by expected saved value per unit cost, with the ones '
         "the plan treats selected and its randomized control group; written by the plan stage from the snapshot's "
         'published `customer_scores` (the plan to act on is `WHERE selected`; the control group, `WHERE '
         "treatment_group = 'control'`, must be left untreated; method: [docs/retention.md](retention.md))."),
    columns=(
        Column("customer_id", "string", nullable=False,
               doc='the candidate. Never null'),
        Column("snapshot_date", "date", nullable=False,
               doc='the snapshot of the scores. Never null'),
        *alike("value_tier lifecycle_stage", "string", nullable=False,
               doc='from `customer_scores`. Never null'),
        Column("treatment", "string", nullable=False,
               doc="the name of the value tier's treatment (`retention.treatments.<tier>.name`; defaults "
                   '`dedicated_account_manager`, `email_sms_cadence`, `automated_service`). Never null'),
        Column("cost", "double", nullable=False,
               doc="the tier's treatment cost per customer per planning period (`retention.treatments.<tier>.cost`; "
                   'defaults 25.0, 1.5, 0.05). Never null'),
        Column("churn_probability", "double", nullable=False,
               doc='from `customer_scores`; never null here (customers without it are not candidates)'),
        Column("clv", "double", nullable=False,
               doc='the CLV the plan valued the candidate at: `customer_scores.clv`, or with `retention.clv_quantile`'
                   ' other than 0.5 that quantile of its P10 / P90 band (log-normal; 0.1 is `clv_p10`; the '
                   'prediction where the band is null). Never null here (customers without a CLV are not '
                   'candidates)'),
        Column("value_at_risk", "double", nullable=False,
               doc='`churn_probability × clv`. Never null'),
        Column("expected_saved_value", "double", nullable=False,
               doc="`uplift × value_at_risk − cost`, net of the treatment's cost, with the tier's `uplift` (defaults "
                   '0.30, 0.10, 0.03); always > 0 (only those are candidates). Never null'),
        Column("priority_rank", "long", nullable=False,
               doc="1 = first in the ranking over all of the snapshot's candidates: by `expected_saved_value / cost` "
                   'descending (free treatments first), then larger `expected_saved_value`, then `customer_id` '
                   'ascending; exact, computed by a distributed prefix count. Never null'),
        Column("cumulative_cost", "double", nullable=False,
               doc="the plan's spend up to and including this candidate: the cost of every candidate ranked at or "
                   "before them who is drawn to be treated and whose tier still has budget and capacity, summed "
                   'exactly to 1/10,000 of the currency (a control adds nothing). Never null'),
        Column("selected", "boolean", nullable=False,
               doc="`treatment_group = 'treated'`: the customers to treat. The plan is the prefix of the ranking whose "
                   '`cumulative_cost <= retention.budget` (it does not skip ahead to cheaper candidates), less the '
                   "candidates of a tier past its own `budget` or `capacity` and the control group. Never null"),
        Column("run_id", "string", nullable=False,
               doc='the run that published the row. Never null'),
        Column("treatment_group", "string", added=True,
               doc="`treated`, `control` or `not selected`. Every candidate draws a lot from a hash of "
                   '(`retention.holdout_seed`, `snapshot_date`, `customer_id`): with probability '
                   '`retention.holdout_share` (default 0.10) the lot is control, the same in every tier, lifecycle '
                   'stage and churn-risk decile and on every rerun. A candidate inside the plan (within the budget, '
                   "and their tier's budget and capacity) is `treated` or `control` by their lot; a control costs "
                   'nothing and is not counted against the capacity. Null in rows written by a segscale before the '
                   'holdouts'),
        Column("held_out", "boolean", added=True,
               doc="the candidate's lot: true when it is control, whether or not the plan reached them (so a larger "
                   "budget's plan is `NOT held_out AND cumulative_cost <= budget`, tier limits aside). Null in rows "
                   'written by a segscale before the holdouts'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("customer_id", "snapshot_date"),
    written_by=('the plan stage (`stage: plan`) of `segscale run` and `segscale plan`, and of `segscale score` '
                'after it re-scores churn (from the new churn probabilities and the CLV published with the '
                "snapshot's scores); replace_partition per snapshot: a rerun replaces that snapshot's "
                "partition. When no customer has both a churn probability and a CLV "
                '(`churn.enabled` or `clv.enabled` false, or a model the data could not support: '
                '[docs/models.md](models.md#degraded-runs)), `run` publishes an empty partition, so no earlier '
                'plan of the snapshot stays behind, and `retention_summary.note` says why; `plan` alone stops '
                'with exit 2 when a model is disabled.'),
    cadence=('every run of `run`, `plan` or `score` for a snapshot. `segscale segment` alone does not rebuild '
             'it; a plan rerun with another `retention.budget` changes only `selected`, `treatment_group`, '
             '`cumulative_cost` (and `run_id`): no customer changes lot.'),
    commit_metadata=('`run_id`, `stage` (`plan`), `config_hash`, `snapshot_date`, `package_version`, and '
                     '`extra.budget`, `extra.holdout_share`, `extra.holdout_seed` (`retention.*`). No '
                     '`model_version`.'),
    notes=('Candidates are the customers of `customer_scores` with both `churn_probability` and `clv` whose '
          "expected saved value is positive; the tier's treatment (name, cost, uplift) comes from "
          '`retention.treatments`.'),
)

RETENTION_SUMMARY = Table(
    name="retention_summary",
    doc=('The retention plan per value tier: one row for each of the three tiers (also when a tier has no '
         'candidates); written by the plan stage together with `retention_plan`. The run summary prints the same '
         'figures.'),
    columns=(
        Column("snapshot_date", "date", nullable=False,
               doc='the snapshot of the plan. Never null'),
        Column("value_tier", "string", nullable=False,
               doc='`high_value`, `potential` or `regular`. Never null'),
        Column("treatment", "string", nullable=False,
               doc="the tier's treatment name (`retention.treatments.<tier>.name`). Never null"),
        Column("scored_customers", "long", nullable=False,
               doc='customers of the tier in `customer_scores` with both `churn_probability` and `clv`. Never null '
                   '(0)'),
        Column("candidates", "long", nullable=False,
               doc="of those, the ones with positive expected saved value: the tier's rows of `retention_plan`. Never"
                   ' null (0)'),
        Column("customers_targeted", "long", nullable=False,
               doc="the tier's selected (treated) candidates. Never null (0)"),
        Column("spend", "double", nullable=False,
               doc="total `cost` of the tier's selected candidates. Never null (0.0)"),
        Column("budget", "double", nullable=False,
               doc='`retention.budget`, the budget of the whole plan (the same on all three rows). Never null'),
        Column("share_of_budget", "double",
               doc='`spend / budget`. Null when the budget is 0'),
        Column("value_at_risk_targeted", "double", nullable=False,
               doc="total `value_at_risk` of the tier's selected candidates. Never null (0.0)"),
        Column("expected_saved_value", "double", nullable=False,
               doc="total `expected_saved_value` of the tier's selected candidates (net of cost). Never null (0.0)"),
        Column("roi", "double", nullable=False,
               doc='saved value per currency unit spent, the spend counted as at least one currency unit: '
                   '`expected_saved_value / max(spend, 1)`. So a tier whose targeted customers all have a free '
                   'treatment has the value it is expected to save as its ROI, and a tier with nobody targeted has '
                   '0. Never null (0.0); rows written by an earlier segscale hold null where `spend` was 0'),
        Column("run_id", "string", nullable=False,
               doc='the run that published the row. Never null'),
        Column("note", "string", added=True,
               doc='why the plan is empty when no customer has both a churn probability and a CLV: the config keys '
                   'that disable a model (`churn.enabled is false`), the model the run skipped and why (`no churn '
                   'model (...)`), or that nobody has a purchase. Null when there was something to plan (an empty '
                   'plan because of the budget has no note). A table written by an earlier segscale gains the column '
                   'at its next write, null in its earlier rows'),
        Column("customers_controlled", "long", added=True,
               doc="the tier's control group: candidates inside the plan whose lot kept them untreated. Null in rows "
                   'written by a segscale before the holdouts'),
        Column("tier_budget", "double", added=True,
               doc="`retention.treatments.<tier>.budget`, the tier's own spending limit within the plan's. Null when "
                   'the tier has none'),
        Column("capacity", "long", added=True,
               doc="`retention.treatments.<tier>.capacity`, the most customers the tier's treatment can take (one-to-"
                   'one service: accounts per manager × managers). Null when the tier has none'),
        Column("holdout_share", "double", added=True,
               doc='`retention.holdout_share`, the probability of a control lot. Null in rows written by a segscale '
                   'before the holdouts'),
        Column("uplift", "double", added=True,
               doc="the uplift the plan used for the tier's candidates: the configured one, or the one learned from "
                   'measured plans (`uplift_source`). Null when the per-customer uplift model valued the candidates '
                   '(`uplift_source` = `model`), and in rows written by a segscale before the learned uplift'),
        Column("uplift_source", "string", added=True,
               doc='`configured` (`retention.treatments.<tier>.uplift`: `retention.learn_uplift` is false, or no plan '
                   "of the tier's treatment had been measured by this snapshot) or `learned` (the posterior median "
                   'of [docs/retention.md](retention.md#learned-uplift)) or `model` (each candidate\'s own predicted '
                   'incremental retention, from the `uplift_models` row of the plan\'s snapshot or the latest before '
                   'it, with `retention.uplift_model`). Null in rows written before'),
        Column("uplift_plans", "array<string>", added=True,
               doc='the snapshots (ISO dates) of the measured plans a `learned` uplift pooled, or the uplift model '
                   'was fitted on; empty for `configured`'),
        Column("clv_quantile", "double", added=True,
               doc='`retention.clv_quantile`: the quantile of the CLV band the plan valued customers at (0.5: the '
                   'prediction). Null in rows written by a segscale before the CLV bands'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("snapshot_date", "value_tier"),
    written_by=('the plan stage (`stage: plan`) of `segscale run`, `segscale plan` and `segscale score`, right '
                'after `retention_plan` (from the counters gathered while the plan was written); '
                "replace_partition per snapshot: a rerun replaces that snapshot's partition. Three rows also "
                'when the plan is empty, with `note` saying why.'),
    cadence=('with `retention_plan`: every run of `run`, `plan` or `score` for a snapshot; three rows each time.'),
    commit_metadata=('`run_id`, `stage` (`plan`), `config_hash`, `snapshot_date`, `package_version`, and '
                     '`extra.budget` (`retention.budget`). No `model_version`.'),
)

RETENTION_OUTCOMES = Table(
    name="retention_outcomes",
    doc=('What each retention plan achieved, measured once its horizon had passed: per plan, value tier and '
         'treatment, the treated group against the randomized control group (retention and net revenue over the '
         'horizon, their differences with confidence intervals), what was spent, what the plan expected, and the '
         'uplift learned so far (method: [docs/retention.md](retention.md#measured-outcomes)).'),
    columns=(
        Column("snapshot_date", "date", nullable=False,
               doc="the plan's snapshot (the `retention_plan` partition measured). Never null"),
        Column("value_tier", "string", nullable=False,
               doc='`high_value`, `potential` or `regular`. Never null'),
        Column("treatment", "string", nullable=False,
               doc="the plan's treatment of the tier (`retention_plan.treatment`). Never null"),
        Column("horizon_days", "int", nullable=False,
               doc='`churn.horizon_days` when measured: the outcome window is (snapshot_date, horizon_end]. Never '
                   'null'),
        Column("horizon_end", "date", nullable=False,
               doc='`snapshot_date + horizon_days`, the last day of the window. Never null'),
        Column("measured_on", "date", nullable=False,
               doc="the snapshot of the run that measured the plan, on or after `horizon_end` (never before: a "
                   'window that has not ended is never measured). Never null'),
        *alike("customers_treated customers_controlled", "long", nullable=False,
               doc="the plan's `treated` and `control` groups of the tier (`retention_plan.treatment_group`): the "
                   'groups are compared as assigned (intention to treat). Never null (0 when a group is empty)'),
        *alike("treated_with_records controls_with_records", "long",
               doc='of each group, the customers the `treatments` input records a treatment of for this plan: how '
                   'much of the treated group was reached, and controls that were treated by mistake (which dilutes '
                   'the measured effect). Null without a `treatments` table, or when the group is empty'),
        *alike("retention_treated retention_control", "double",
               doc="the group's share of customers with a purchase in the window (the complement of churn, as the "
                   'churn labels define it). Null when the group is empty'),
        Column("incremental_retention", "double",
               doc='`retention_treated − retention_control`: the share of treated customers the treatment kept. Null '
                   'unless both groups have customers'),
        *alike("incremental_retention_low incremental_retention_high", "double",
               doc="its confidence interval at `retention.confidence` (Newcombe's hybrid score interval). Null "
                   'unless both groups have customers'),
        Column("predicted_churn_control", "double",
               doc="the control group's mean `churn_probability` at the plan, to set beside its measured churn "
                   '(`1 − retention_control`): how well the churn model predicted the untreated. Null when the group '
                   'is empty'),
        Column("expected_incremental_retention", "double",
               doc="what the plan expected: the treated group's mean of `uplift × churn_probability`. Null when the "
                   'group is empty'),
        Column("uplift_planned", "double",
               doc="the uplift the plan used (`retention_summary.uplift`). Null for a plan published before it was "
                   'recorded'),
        Column("realized_uplift", "double",
               doc='`incremental_retention / (1 − retention_control)`: the relative reduction of churn, what '
                   '`uplift` means. Null unless both groups have customers and some controls churned'),
        *alike("revenue_per_treated revenue_per_control", "double",
               doc="the group's mean net revenue in the window (purchases minus returns; 0 for a customer without "
                   'any). Null when the group is empty'),
        Column("incremental_revenue", "double",
               doc='`(revenue_per_treated − revenue_per_control) × customers_treated`: the revenue the treatment '
                   'added over the window. Null unless both groups have customers'),
        *alike("incremental_revenue_low incremental_revenue_high", "double",
               doc="its confidence interval at `retention.confidence` (Welch's t interval of the difference of "
                   'means, times `customers_treated`). Null unless both groups have at least two customers'),
        Column("spend", "double", nullable=False,
               doc="what the plan's treatment cost in this tier: the `treatments` table's costs for the plan's "
                   "customers (the plan's cost where a row gives none), or the plan's cost of the treated group "
                   'without the table. Never null'),
        Column("realized_roi", "double",
               doc='`(incremental_revenue − spend) / max(spend, 1)`, over the window. Null with `incremental_revenue`'),
        Column("expected_saved_value", "double", nullable=False,
               doc="the plan's expected saved value of the treated group (net of cost; `retention_summary`). Never "
                   'null'),
        Column("realized_saved_value", "double",
               doc="the same valuation with the measured effect: `incremental_retention × Σ clv of the treated − "
                   'spend`. Null unless both groups have customers'),
        Column("learned_uplift", "double",
               doc="the posterior median of the tier treatment's uplift after this plan's outcome and the earlier "
                   'plans measured so far (Beta-Binomial, from the configured uplift as prior). Null when no plan had '
                   'both groups'),
        *alike("learned_uplift_low learned_uplift_high", "double",
               doc='its central posterior interval at `retention.confidence`. Null with `learned_uplift`'),
        Column("uplift_plans", "long", nullable=False,
               doc='how many measured plans `learned_uplift` pooled. Never null'),
        Column("plan_run_id", "string", nullable=False,
               doc='the run that published the plan measured. Never null'),
        Column("run_id", "string", nullable=False,
               doc='the run that measured it. Never null'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("snapshot_date", "value_tier", "treatment"),
    written_by=("the outcomes stage (`stage: outcomes`) of `segscale run`, for every published plan whose horizon "
                'has ended by the run\'s snapshot and that has no outcome yet from its current rows (a plan '
                'published again, e.g. by `segscale score`, is measured again); replace_partition per plan snapshot.'),
    cadence=('once per plan, at the first `run` on or after its `horizon_end`; `segscale plan` and `score` read it '
             '(for the learned uplift) and never write it.'),
    commit_metadata=('`run_id`, `stage` (`outcomes`), `config_hash`, `snapshot_date` (the plan\'s), '
                     '`package_version`, and `extra.measured_on`.'),
    notes=('Without a `treatments` input table the treated group is taken as treated at the plan\'s cost. The '
           'comparison is within a tier: every candidate had the same chance of a control lot, so the control '
           'group is what the treated group would have done untreated. Snapshot retention (`segscale maintain`) '
           'keeps every row: the outcomes are what the learned uplift remembers, a few rows per plan.'),
    outlives_retention=True,
)

TIER_ECONOMICS = Table(
    name="tier_economics",
    doc=('What each value tier brings in, costs to serve and is worth, per snapshot: revenue and cost to serve over '
         'the last year, margin, CLV per unit of spend, the change since the previous snapshot, and a warning when '
         "a tier's cost share or the top tier's share of value crosses its limit (method: "
         '[docs/retention.md](retention.md#tier-economics)).'),
    columns=(
        Column("snapshot_date", "date", nullable=False, doc='the snapshot. Never null'),
        Column("value_tier", "string", nullable=False,
               doc='`high_value`, `potential` or `regular` (all three, also an empty tier). Never null'),
        Column("customers", "long", nullable=False,
               doc="the tier's customers in `customer_scores`. Never null (0)"),
        Column("revenue_365d", "double", nullable=False,
               doc="the sum of the tier's `customer_features.spend_365d`: purchases in the 365 days up to the "
                   'snapshot (returns not deducted). Never null (0.0)'),
        Column("interaction_cost_365d", "double", nullable=False,
               doc="the sum of the tier's `customer_features.interaction_cost_365d`: the input's interaction costs "
                   '(service calls, complaints, campaign touches) over the same year; 0 without interactions. Never '
                   'null'),
        Column("treatment_spend_365d", "double", nullable=False,
               doc="the retention spend on the tier (`retention_summary.spend`) of every plan with a snapshot in the "
                   'year up to this one, this one included: each plan spends its budget for one planning period. '
                   'Never null'),
        Column("cost_to_serve", "double", nullable=False,
               doc='`interaction_cost_365d + treatment_spend_365d`. Never null'),
        Column("margin", "double", nullable=False,
               doc='`revenue_365d − cost_to_serve` (before the cost of the goods, which the input does not give). '
                   'Never null'),
        Column("cost_share", "double",
               doc='`cost_to_serve / revenue_365d`. Null when the tier had no revenue'),
        Column("avg_clv", "double",
               doc="the tier's mean `clv` over the customers that have one. Null without CLV"),
        Column("clv_total", "double",
               doc="the tier's summed `clv`: the value it is predicted to bring over `clv.horizon_days`. Null "
                   'without CLV'),
        Column("clv_per_spend", "double",
               doc='`clv_total / cost_to_serve`: predicted value per unit of what the tier costs. Null without CLV '
                   'or cost'),
        Column("value_share", "double",
               doc="the tier's share of the snapshot's summed `clv`. Null without CLV"),
        *alike("customers_change revenue_365d_change cost_to_serve_change margin_change avg_clv_change "
               "value_share_change", "long double double double double double",
               doc='the change of the column since `previous_snapshot` (this value minus that one). Null for the first '
                   'snapshot, or when either value is null'),
        Column("previous_snapshot", "date",
               doc='the latest earlier snapshot of `tier_economics` the changes compare with. Null for the first'),
        Column("warning", "string",
               doc="why the tier needs a look, or null: its `cost_share` is above `retention.max_cost_share`, or (the "
                   "high-value tier) its `value_share` fell by more than `retention.max_value_share_drop`. The run's "
                   'warnings and the report show the same text'),
        Column("run_id", "string", nullable=False, doc='the run that published the row. Never null'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("snapshot_date", "value_tier"),
    written_by=('the economics stage (`stage: economics`) of `segscale run`, `plan` and `score`, right after the '
                "plan (whose spend it counts); replace_partition per snapshot."),
    cadence='with `retention_summary`: three rows per snapshot, every run of `run`, `plan` or `score`.',
    commit_metadata='`run_id`, `stage` (`economics`), `config_hash`, `snapshot_date`, `package_version`.',
)

UPLIFT_MODELS = Table(
    name="uplift_models",
    doc=('The per-customer uplift model fitted on the randomized rows of the plans measured so far, with '
         '`retention.uplift_model`: the two logistic regressions of a T-learner, its Qini curve and coefficient on '
         'the evaluation rows against random targeting, and whether plans use it (method: '
         '[docs/retention.md](retention.md#per-customer-uplift)).'),
    columns=(
        Column("snapshot_date", "date", nullable=False,
               doc="the snapshot of the run that fitted it; plans of this snapshot and later use it (the latest one "
                   'on or before their snapshot). Never null'),
        Column("plans", "array<string>", nullable=False,
               doc='the snapshots (ISO dates) of the measured plans whose treated and control customers it was '
                   'fitted and evaluated on. Never null'),
        Column("terms", "array<string>", nullable=False,
               doc='the covariates, in the order of the coefficients: `churn_probability`, `log_clv` (log(1 + clv)), '
                   'and an indicator per value tier and lifecycle stage (`tier_potential`, `stage_at_risk`, ...; '
                   '`high_value` and `prospect` are the baselines). Never null'),
        *alike("treated_intercept control_intercept", "double",
               doc='the intercept of the logistic regression of retention among the treated, among the controls. '
                   'Null when no model was fitted (`note`)'),
        *alike("treated_coefficients control_coefficients", "array<double>",
               doc='their coefficients, one per term: P(retained) = 1 / (1 + exp(−(intercept + Σ coefficient × '
                   'term))), and a customer\'s predicted incremental retention is the treated probability minus the '
                   'control one. Null when no model was fitted'),
        *alike("customers_fitted customers_evaluated", "long", nullable=False,
               doc="the plans' treated and control customers the regressions were fitted on, and those of the "
                   'evaluation lot they were measured on. Never null'),
        Column("qini_coefficient", "double",
               doc='the area between the Qini curve of the evaluation rows and the line of random targeting, in '
                   'incremental retained customers per evaluated customer: about 0 for a ranking no better than '
                   'random. Null when no model was fitted or the evaluation rows lack a group'),
        Column("qini_random_sd", "double",
               doc="the standard deviation of the Qini coefficient a random ranking of the same evaluated customers "
                   'would have: the noise the coefficient is judged against. Null with `qini_coefficient`'),
        *alike("qini_depths qini_gains", "array<double>",
               doc='the Qini curve: the share of evaluated customers targeted in order of predicted uplift (by '
                   'tenths, from 0), and the incremental retained customers among them per evaluated customer. Empty '
                   'without a coefficient'),
        Column("used_by_plans", "boolean", nullable=False,
               doc='whether plans use it: fitted, and `qini_coefficient` above `qini_random_sd` × the one-sided '
                   'normal quantile of `retention.confidence` (1.645 at 0.95). Never null'),
        Column("note", "string",
               doc='why no model was fitted, or why plans do not use it; null when they do'),
        Column("run_id", "string", nullable=False, doc='the run that fitted it. Never null'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("snapshot_date",),
    written_by=('the outcomes stage (`stage: outcomes`) of `segscale run` with `retention.uplift_model`, when it '
                'measured at least one plan; replace_partition per snapshot.'),
    cadence=('at most one row per snapshot, when a plan\'s horizon has just passed; `segscale plan` and `score` '
             'read it and never write it.'),
    commit_metadata=('`run_id`, `stage` (`outcomes`), `config_hash`, `snapshot_date`, `package_version`, and '
                     '`extra.qini_coefficient`.'),
    notes=('Snapshot retention (`segscale maintain`) keeps every row: a plan of a later snapshot may use a model '
           'fitted long before it.'),
    outlives_retention=True,
)

RUNS = Table(
    name="runs",
    doc=('The run log: one row per run of a snapshot command, succeeded or failed, with its effective '
         'configuration and summary; appended by every such run when it ends.'),
    columns=(
        Column("run_id", "string", nullable=False,
               doc="the run's id, `YYYYMMDDTHHMMSSZ-` (its UTC start time) followed by 8 random hex digits; the "
                   '`run_id` of every row and commit the run published. Never null'),
        Column("command", "string", nullable=False,
               doc='the command: `run`, `validate`, `features`, `segment`, `plan`, `score`, `train` or `maintain`. '
                   'Never null'),
        Column("snapshot_date", "date",
               doc="the run's snapshot date (`--snapshot-date`, default yesterday in UTC). Null for `maintain`, "
                   'which works on every snapshot'),
        Column("status", "string", nullable=False,
               doc='`succeeded` or `failed`. Never null'),
        Column("started_at", "timestamp", nullable=False,
               doc='when the run began (UTC), before its first stage. Never null'),
        Column("finished_at", "timestamp", nullable=False,
               doc='when the run was recorded (UTC), after its last stage or its failure. Never null'),
        Column("config_hash", "string", nullable=False,
               doc='the first 16 hex digits of the SHA-256 of the effective configuration as canonical JSON, without '
                   'the `paths`, `spark`, `generate`, `maintenance` and `metastore` sections (which do not change '
                   'what is computed); the same as in the commit metadata. Never null'),
        Column("config_json", "string", nullable=False,
               doc='the full effective configuration (every section, defaults included) as JSON with sorted keys. '
                   'Never null'),
        Column("summary_json", "string", nullable=False,
               doc='the run summary as JSON: `run_id`, `command`, `status`, `snapshot_date`, `config_hash`, '
                   '`package_version`, `stages` (per stage its seconds, the tables it published with rows and '
                   'versions, and its counts, e.g. quarantined rows per reason, RFM cut points, the models used, the '
                   'plan per tier), `models` (per model its `status`: `trained`, `champion`, `earlier champion`, '
                   '`skipped` or `disabled`, the `version` that scored, and `skipped`: why training was skipped), '
                   '`warnings`, and `failed_stage` (the stage that was running) for a failed run. Never null'),
        Column("package_version", "string", nullable=False,
               doc='the segscale version that ran. Never null'),
        Column("warnings", "array<string>", added=True,
               doc='what the run worked around and published anyway: a model skipped because the data could not '
                   'support it (and whether an earlier champion scored instead), value tiers on `monetary` for lack '
                   'of a CLV model, a boundary CLV fit, an empty plan, a churn model that does not beat its '
                   "baselines. Empty when there was nothing to say; the same list as `summary_json`'s `warnings`. A "
                   'table written by an earlier segscale gains the column at its next write, null in its earlier rows'),
        Column("table_versions", "string", added=True,
               doc='what a succeeded run published, as readers see it: a JSON object of every published table\'s '
                   'Delta version, `{"customer_scores": 7, ...}`, those the run wrote or read at the versions it '
                   'wrote or read, the others at the versions of the run completed before it. `segscale sql`, '
                   '`segscale report` and the notebooks read the tables at the versions of the newest succeeded run '
                   '(`--run-id`, `--as-of`: an older one), so a run that fails between two commits is never seen '
                   'half-published. Written last, after every table of the run. Null for a failed run, and in '
                   'the rows of an earlier segscale, which did not record it'),
    ),
    partition_by=(),
    write="append",
    key=("run_id",),
    written_by=('every run of `segscale run`, `validate`, `features`, `segment`, `plan`, `score`, `train` and '
                '`maintain` (and the spark-submit job `jobs/run_pipeline.py`, which is `run`), when it ends '
                '(`stage: record run`); the `runs` table is appended, never replaced. A failed run is recorded on a '
                'best-effort basis (when the warehouse is writable); when recording a succeeded run fails, the command '
                'fails. `generate`, `promote`, `history`, `sql` and `vacuum` are not recorded.'),
    cadence=('one new row per command run; existing rows never change (`segscale maintain` compacts the table\'s '
             'files, never its rows).'),
    commit_metadata=('`run_id`, `stage` (`record run`), `config_hash`, `snapshot_date`, `package_version`; no '
                     '`model_version`, no `extra`.'),
)

AT_RISK_QUEUE = Table(
    name="at_risk_queue",
    doc=('The account managers\' queue: the snapshot\'s at-risk customers of the `queue.tiers` (default high value '
         'and potential; at risk: `churn_probability` >= `queue.min_churn_probability`, default 0.5), the highest '
         'value at risk first and at most `queue.max_customers` of them, plus every customer listed in '
         '`queue.customers`, each with the three strongest reasons behind their churn probability (TreeSHAP values '
         'of the churn model, phrased with their own features: [docs/models.md](models.md#reason-codes)). Work it '
         '`ORDER BY value_at_risk DESC`.'),
    columns=(
        Column("customer_id", "string", nullable=False, doc='the customer. Never null'),
        Column("snapshot_date", "date", nullable=False, doc='the snapshot of the scores. Never null'),
        *alike("value_tier lifecycle_stage", "string", nullable=False, doc='from `customer_scores`. Never null'),
        Column("churn_probability", "double", doc='from `customer_scores`. Null only for a requested customer the '
                                                  'churn model did not score (a prospect)'),
        Column("clv", "double", doc='from `customer_scores`. Null as `churn_probability`, or without a CLV model'),
        Column("value_at_risk", "double", doc='`churn_probability × clv`; the queue\'s order. Null when either is'),
        Column("treatment_group", "string",
               doc='the customer\'s group in the snapshot\'s `retention_plan`: `treated`, `control` (leave untreated: '
                   'the plan\'s measurement needs it) or `not selected`; null when the customer is not a candidate'),
        Column("planned_treatment", "string",
               doc='the treatment the plan gives the customer (`retention_plan.treatment` of a treated row); null '
                   'for everyone else'),
        *[Column(f"reason_{k}", "string",
                 doc=f'the {nth} strongest reason the churn model puts the customer at risk, in words with their own '
                     'values ("no purchase for 94 days, 3.1× their usual gap"). Null when fewer features raise '
                     'their risk, and for every row when no reasons could be computed (the run summary says why)')
          for k, nth in ((1, "first,"), (2, "second"), (3, "third"))],
        Column("reason_features", "array<string>",
               doc='the model features behind `reason_1`, `reason_2`, `reason_3`, in that order'),
        Column("reason_contributions", "array<double>",
               doc="each reason's TreeSHAP value: its push on the churn model's log-odds (the mean over the "
                   'calibration folds), > 0, in the same order'),
        Column("on_request", "boolean", nullable=False,
               doc='true for a customer queued because `queue.customers` lists them. Never null'),
        Column("churn_model_version", "int", doc='the churn model version whose scores and reasons these are'),
        Column("run_id", "string", nullable=False, doc='the run that published the row. Never null'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("customer_id", "snapshot_date"),
    written_by=('the queue stage (`stage: queue`) of `segscale run`, `plan` and `score`, after the plan; '
                "replace_partition per snapshot: a rerun replaces that snapshot's partition. Empty, with the "
                'reason in the run summary, when no churn model scored the snapshot or `queue.enabled` is false.'),
    cadence='with `retention_plan`: every run of `run`, `plan` or `score` for a snapshot.',
    commit_metadata=('`run_id`, `stage` (`queue`), `config_hash`, `snapshot_date`, `package_version`, '
                     '`model_version` (the churn model explained).'),
)

MODEL_MONITORING = Table(
    name="model_monitoring",
    doc=('Whether the models still work, every run (method: [docs/models.md](models.md#monitoring)): the drift of '
         "the churn model's features and scores against its training rows (PSI), and, once a published snapshot's "
         'churn horizon has passed, backtests of its churn scores (ROC-AUC, PR-AUC, Brier, calibration by decile, '
         'top-decile lift) and CLV predictions (expected against realized purchases and spend, per tier and in '
         'total) on what happened; alerts where a threshold is crossed, and the retrain decision per model.'),
    columns=(
        Column("snapshot_date", "date", nullable=False,
               doc='the snapshot of the run that monitored. Never null'),
        Column("model", "string", nullable=False, doc='`churn` or `clv`. Never null'),
        Column("model_version", "int",
               doc='the registered version checked: for drift and decisions the one that scored this snapshot, '
                   'for a backtest the one that scored `reference_date`'),
        Column("kind", "string", nullable=False,
               doc='`drift` (PSI against the training rows), `backtest` (a matured snapshot against what '
                   'happened), `calibration` (a backtest\'s deciles of predicted risk) or `decision` (retrain or '
                   'not). Never null'),
        Column("reference_date", "date",
               doc='drift: the date of the training rows (the latest labelled cutoff); backtest and calibration: '
                   'the snapshot whose published scores are checked. Null for decisions'),
        Column("subject", "string", nullable=False,
               doc='drift: the feature, or `churn_probability`; churn backtest: `churn_probability`; calibration: '
                   'the decile (1 = highest predicted risk); CLV backtest: the value tier at `reference_date` or '
                   '`all`; decision: `retrain`. Never null'),
        Column("metric", "string", nullable=False,
               doc='`psi`; `roc_auc`, `pr_auc` (average precision), `brier`, `top_decile_lift`, `churn_rate`, '
                   '`calibration_gap` (|mean predicted − observed churn rate|); `mean_predicted`, `observed`; '
                   '`expected_purchases`, `realized_purchases`, `purchases_error` (realized / expected − 1), '
                   '`expected_spend`, `realized_spend`, `spend_error`; `retrain` (1 or 0). Never null'),
        Column("value", "double", doc='the metric. Null when it is undefined (an AUC when every customer has one '
                                      'label)'),
        Column("threshold", "double",
               doc='the configured limit the value is checked against (`monitoring.*`; for `roc_auc` the model\'s '
                   'holdout ROC-AUC minus `monitoring.max_auc_drop`). Null when the metric has none'),
        Column("alert", "boolean", nullable=False,
               doc='the value crossed its threshold (for a decision: retrain). Never null'),
        Column("customers", "long", doc='the customers behind the value'),
        Column("note", "string", doc='what the value is compared with, or why the decision was taken'),
        Column("run_id", "string", nullable=False, doc='the run that published the row. Never null'),
    ),
    partition_by=("snapshot_date",),
    write="replace_partition",
    key=("snapshot_date", "model", "kind", "reference_date", "subject", "metric"),
    written_by=('the monitor stage (`stage: monitor`) of `segscale run`, after the scores; replace_partition per '
                "snapshot: a rerun replaces that snapshot's partition. A snapshot's backtest is published once, by "
                'the first run whose snapshot is at least `churn.horizon_days` later (a rerun of that run '
                'recomputes it).'),
    cadence='every run of `run` with `monitoring.enabled`.',
    commit_metadata=('`run_id`, `stage` (`monitor`), `config_hash`, `snapshot_date`, `package_version`, '
                     '`model_version` (the churn model monitored).'),
)

TABLES: tuple[Table, ...] = (QUARANTINE, CUSTOMER_FEATURES, CUSTOMER_ATTRIBUTES, CUSTOMER_SCORES, SEGMENT_MIGRATION,
                             RETENTION_PLAN, RETENTION_SUMMARY, RETENTION_OUTCOMES, TIER_ECONOMICS, UPLIFT_MODELS,
                             AT_RISK_QUEUE, MODEL_MONITORING, RUNS)
BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}


def table(name: str) -> Table:
    """The catalog entry of a table name a user typed (`segscale history NAME`, ...)."""
    if name not in BY_NAME:
        raise InputError(f"{name!r} is not a segscale table; the catalog has {', '.join(BY_NAME)}")
    return BY_NAME[name]


def named_in(sql: str) -> list[Table]:
    """The tables a query names (a name inside a string literal counts too)."""
    return [t for t in TABLES if re.search(rf"\b{t.name}\b", sql, flags=re.IGNORECASE)]


# ---- the data dictionary -----------------------------------------------------------------------------------------
INTRO = """\
# Data dictionary

<!-- Generated from src/segscale/catalog.py by `make docs` (python -m segscale.catalog --update docs); edit the
catalog, not this file: tests/unit/test_catalog.py fails when the two differ. -->

Every table segscale publishes, with each column's meaning and how it is computed, as declared in the table
catalog (`segscale.catalog`), which the writers check every frame against before anything is written. All
columns are nullable in the Delta schema (schema checks ignore nullability), so the "null when" of each column
below says when a value is actually null; a column that is never null says so, and the tests check it on the
golden run. The `runs` table is the run log: one row per command run, with its effective configuration and
summary. The common commit metadata fields (`run_id`, `stage`, `config_hash`, `snapshot_date`,
`package_version`) are described under [Commit metadata](tables.md#commit-metadata); a top-level field whose
value is null or empty is left out of the commit's JSON (a null inside `extra` is kept). How the tables are
stored, written and read: [docs/tables.md](tables.md).
"""
WRITE_MODES = {
    "replace_partition": "`replace_partition`: each commit replaces one `{partition}` partition whole; the other "
                         "partitions are untouched",
    "append": "`append`: each commit adds rows; existing rows never change",
}


def _codes(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _rows(columns: tuple[Column, ...]) -> list[str]:
    """One row per column, or per run of consecutive columns described together."""
    rows, i = [], 0
    while i < len(columns):
        j = i + 1
        while j < len(columns) and (columns[j].doc, columns[j].nullable) == (columns[i].doc, columns[i].nullable):
            j += 1
        group = columns[i:j]
        types = [c.type for c in group]
        kind = types[0] if len(set(types)) == 1 else ", ".join(types)
        nullable = "yes" if group[0].nullable else "no"
        rows.append(f"| {_codes(c.name for c in group)} | {kind} | {nullable} | {group[0].doc} |")
        i = j
    return rows


def _wrapped(text: str, indent: str = "") -> str:
    return textwrap.fill(text, 115, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def table_section(entry: Table) -> str:
    partitioned = _codes(entry.partition_by) or "not partitioned"
    key = f"{_codes(entry.key)} (one row each)" if entry.key else "none: rows have no identity of their own"
    lines = [
        f"## `{entry.name}`", "", _wrapped(entry.doc), "",
        *(_wrapped(f"- **{label}:** {text}", "  ") for label, text in (
            ("Partitioned by", partitioned),
            *((("Clustered by", f"{_codes(entry.cluster_by)} (Z-order within each partition, by `segscale "
                                "maintain`)"),) if entry.cluster_by else ()),
            ("Write mode", WRITE_MODES[entry.write].format(partition=", ".join(entry.partition_by))),
            ("Key", key), ("Written by", entry.written_by), ("Cadence", entry.cadence),
            ("Commit metadata", entry.commit_metadata))),
        "", "| column | type | nullable | meaning and computation |", "| --- | --- | --- | --- |",
    ]
    lines += _rows(entry.columns)
    if entry.notes:
        lines += ["", _wrapped(entry.notes)]
    return "\n".join(lines) + "\n"


def dictionary() -> str:
    """The data dictionary (docs/data-dictionary.md) as the catalog declares it."""
    return "\n".join([INTRO, *(table_section(t) for t in TABLES)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segscale.catalog",
                                     description="Print the data dictionary, or rewrite it in a docs directory.")
    parser.add_argument("--update", metavar="DOCS_DIR", help=f"rewrite DOCS_DIR/{DICTIONARY_FILE}")
    args = parser.parse_args(argv)
    if args.update is None:
        print(dictionary(), end="")
        return 0
    docs = Path(args.update)
    if not docs.is_dir():
        parser.error(f"--update {args.update}: no such directory")
    (docs / DICTIONARY_FILE).write_text(dictionary(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
