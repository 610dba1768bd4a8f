"""The synthetic data generator: determinism, schemas, clean-data invariants, behaviour, injected bad rows."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segscale.config import GenerateSettings
from segscale.synthetic.generator import generate_frames

CUSTOMERS = 3_000
# Small blocks so that a few thousand customers still span several blocks and partitions.
BLOCK_SIZE = 1_000
START, END = dt.date(2022, 1, 1), dt.date(2024, 12, 31)
WINDOW_START = dt.datetime(2022, 1, 1, tzinfo=dt.UTC)
WINDOW_END = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)  # exclusive: the end day is included
DIRTY_RATE = 0.05
TABLES = ("customers", "transactions", "interactions", "customer_truth")


def _settings(**overrides: object) -> GenerateSettings:
    values: dict[str, object] = {"customers": CUSTOMERS, "seed": 11, "start": START, "end": END}
    values.update(overrides)
    return GenerateSettings(**values)


def _frames(spark: SparkSession, settings: GenerateSettings,
            partitions: int | None = None) -> dict[str, DataFrame]:
    return generate_frames(spark, settings, partitions, block_size=BLOCK_SIZE)


@pytest.fixture(scope="module")
def clean(spark: SparkSession):
    frames = {name: df.cache() for name, df in _frames(spark, _settings(dirty_rate=0.0)).items()}
    yield frames
    for df in frames.values():
        df.unpersist()


@pytest.fixture(scope="module")
def dirty(spark: SparkSession):
    frames = {name: df.cache() for name, df in _frames(spark, _settings(dirty_rate=DIRTY_RATE)).items()}
    yield frames
    for df in frames.values():
        df.unpersist()


def _sorted_rows(df: DataFrame) -> pd.DataFrame:
    """All rows (test-sized frames only), in an order that depends on their values alone."""
    rows = df.toPandas()
    return rows.sort_values(list(rows.columns), na_position="last", kind="stable", ignore_index=True)


def _same_rows(a_df: DataFrame, b_df: DataFrame) -> bool:
    """Equal as multisets of rows (nulls and NaNs compare equal), whatever the order and partitioning."""
    return _sorted_rows(a_df).equals(_sorted_rows(b_df))


# ---- determinism -------------------------------------------------------------------------------------------
def test_same_seed_gives_same_tables_for_any_partition_count(spark: SparkSession) -> None:
    settings = _settings(dirty_rate=DIRTY_RATE)
    one = _frames(spark, settings, partitions=1)
    three = _frames(spark, settings, partitions=3)
    assert one["transactions"].rdd.getNumPartitions() == 1
    assert three["transactions"].rdd.getNumPartitions() == 3
    for name in TABLES:
        assert _same_rows(one[name], three[name]), name


def test_another_seed_gives_other_tables(spark: SparkSession) -> None:
    first = _frames(spark, _settings(seed=1))
    second = _frames(spark, _settings(seed=2))
    for name in TABLES:
        assert not _same_rows(first[name], second[name]), name


# ---- schemas -----------------------------------------------------------------------------------------------
def _schema(*fields: tuple[str, T.DataType, bool]) -> T.StructType:
    return T.StructType([T.StructField(name, data_type, nullable) for name, data_type, nullable in fields])


EXPECTED_SCHEMAS = {
    "customers": _schema(
        ("customer_id", T.StringType(), False), ("signup_date", T.DateType(), False),
        ("region", T.StringType(), False), ("city_tier", T.IntegerType(), False),
        ("channel", T.StringType(), False), ("birth_year", T.IntegerType(), False),
        ("gender", T.StringType(), False)),
    "transactions": _schema(
        ("transaction_id", T.StringType(), False), ("customer_id", T.StringType(), True),
        ("ts", T.TimestampType(), True), ("amount", T.DoubleType(), False),
        ("quantity", T.IntegerType(), False), ("category", T.StringType(), False),
        ("channel", T.StringType(), False), ("transaction_type", T.StringType(), False)),
    "interactions": _schema(
        ("interaction_id", T.StringType(), False), ("customer_id", T.StringType(), True),
        ("ts", T.TimestampType(), False), ("kind", T.StringType(), False),
        ("cost", T.DoubleType(), False), ("satisfaction", T.IntegerType(), True)),
    "customer_truth": _schema(
        ("customer_id", T.StringType(), False), ("is_prospect", T.BooleanType(), False),
        ("purchase_rate_per_day", T.DoubleType(), False), ("dropout_probability", T.DoubleType(), False),
        ("dissatisfaction", T.DoubleType(), False), ("dropout_ts", T.TimestampType(), True),
        ("mean_order_value", T.DoubleType(), False)),
}


@pytest.mark.parametrize("name", TABLES)
def test_schemas(clean: dict[str, DataFrame], name: str) -> None:
    assert clean[name].schema == EXPECTED_SCHEMAS[name]


# ---- bad rows ----------------------------------------------------------------------------------------------
def _count_if(condition: F.Column) -> F.Column:
    return F.sum(F.when(condition, 1).otherwise(0))


def _with_is_known(df: DataFrame, truth_df: DataFrame) -> DataFrame:
    known_df = truth_df.select("customer_id", F.lit(True).alias("is_known"))
    return df.join(known_df, "customer_id", how="left")


def _bad_transactions(frames: dict[str, DataFrame]) -> dict[str, int]:
    """Rows of each fault, and all bad rows (each duplicate counts once: the extra copy)."""
    tx_df = _with_is_known(frames["transactions"], frames["customer_truth"])
    is_blank = F.trim(F.col("customer_id")) == ""
    faults = {
        "null_customer": F.col("customer_id").isNull(),
        "blank_customer": is_blank,
        "unknown_customer": F.col("customer_id").isNotNull() & ~is_blank & F.col("is_known").isNull(),
        "negative_amount": F.col("amount") < 0,
        "nan_amount": F.isnan("amount"),
        "null_ts": F.col("ts").isNull(),
        "impossible_ts": F.year("ts").isin(1970, 2099),
        "unknown_type": ~F.col("transaction_type").isin("purchase", "return"),
    }
    any_fault = F.lit(False)
    for condition in faults.values():
        any_fault = any_fault | F.coalesce(condition, F.lit(False))
    row = tx_df.agg(
        *[_count_if(c).alias(k) for k, c in faults.items()],
        _count_if(any_fault).alias("in_place"),
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("transaction_id").alias("ids"),
    ).first().asDict()
    row["duplicate_id"] = row["rows"] - row["ids"]
    row["bad"] = row["in_place"] + row["duplicate_id"]
    return row


def _bad_customers(frames: dict[str, DataFrame]) -> dict[str, int]:
    is_blank = F.trim(F.col("customer_id")) == ""
    row = frames["customers"].agg(
        _count_if(is_blank).alias("blank_customer"),
        _count_if(~is_blank).alias("named"),
        F.countDistinct(F.when(~is_blank, F.col("customer_id"))).alias("distinct_named"),
        F.count(F.lit(1)).alias("rows"),
    ).first().asDict()
    row["duplicate_row"] = row["named"] - row["distinct_named"]
    row["bad"] = row["blank_customer"] + row["duplicate_row"]
    return row


def _bad_interactions(frames: dict[str, DataFrame]) -> dict[str, int]:
    int_df = _with_is_known(frames["interactions"], frames["customer_truth"])
    row = int_df.agg(
        _count_if(F.col("customer_id").isNull()).alias("null_customer"),
        _count_if(F.col("customer_id").isNotNull() & F.col("is_known").isNull()).alias("unknown_customer"),
        F.count(F.lit(1)).alias("rows"),
    ).first().asDict()
    row["bad"] = row["null_customer"] + row["unknown_customer"]
    return row


def test_no_bad_rows_without_dirty_rate(clean: dict[str, DataFrame]) -> None:
    for counts in (_bad_transactions(clean), _bad_customers(clean), _bad_interactions(clean)):
        assert counts["bad"] == 0, counts
        totals = ("rows", "ids", "named", "distinct_named")
        assert all(v == 0 for k, v in counts.items() if k not in totals), counts


def test_dirty_rate_injects_every_kind_of_bad_row(dirty: dict[str, DataFrame]) -> None:
    tx = _bad_transactions(dirty)
    for kind in ("null_customer", "blank_customer", "unknown_customer", "negative_amount", "nan_amount",
                 "duplicate_id", "null_ts", "impossible_ts", "unknown_type"):
        assert tx[kind] > 0, (kind, tx)
    customers = _bad_customers(dirty)
    assert customers["blank_customer"] > 0 and customers["duplicate_row"] > 0, customers
    interactions = _bad_interactions(dirty)
    assert interactions["null_customer"] > 0 and interactions["unknown_customer"] > 0, interactions
    for counts in (tx, customers, interactions):
        assert 0.035 < counts["bad"] / counts["rows"] < 0.065, counts


def test_duplicate_transactions_differ_only_slightly_in_time(dirty: dict[str, DataFrame]) -> None:
    dup_df = (
        dirty["transactions"].groupBy("transaction_id")
        .agg(F.count(F.lit(1)).alias("copies"), F.countDistinct("customer_id", "amount").alias("versions"),
             (F.max("ts").cast("long") - F.min("ts").cast("long")).alias("spread_s"))
        .where(F.col("copies") > 1)
    )
    row = dup_df.agg(F.count(F.lit(1)).alias("ids"), F.max("copies").alias("copies"),
                     F.max("versions").alias("versions"), F.min("spread_s").alias("min_spread"),
                     F.max("spread_s").alias("max_spread")).first()
    assert row["ids"] > 0
    assert row["copies"] == 2 and row["versions"] == 1
    assert row["min_spread"] > 0 and row["max_spread"] <= 120


# ---- clean-data invariants ---------------------------------------------------------------------------------
def test_clean_ids_are_unique_and_consistent(clean: dict[str, DataFrame]) -> None:
    customers_df, truth_df = clean["customers"], clean["customer_truth"]
    assert customers_df.count() == CUSTOMERS == customers_df.select("customer_id").distinct().count()
    assert customers_df.select("customer_id").exceptAll(truth_df.select("customer_id")).isEmpty()
    for name, id_column in (("transactions", "transaction_id"), ("interactions", "interaction_id")):
        df = clean[name]
        assert df.count() == df.select(id_column).distinct().count(), name
        orphans_df = df.join(customers_df, "customer_id", how="left_anti")
        assert orphans_df.isEmpty(), name


def test_clean_transactions_are_valid(clean: dict[str, DataFrame]) -> None:
    row = clean["transactions"].agg(
        _count_if(F.isnan("amount") | (F.col("amount") <= 0)).alias("bad_amount"),
        _count_if(F.col("ts").isNull() | (F.col("ts") < F.lit(WINDOW_START))
                  | (F.col("ts") >= F.lit(WINDOW_END))).alias("outside_window"),
        _count_if(~F.col("transaction_type").isin("purchase", "return")).alias("bad_type"),
        _count_if(F.col("quantity") < 1).alias("bad_quantity"),
        F.min("ts").alias("first_ts"),
        F.max("ts").alias("last_ts"),
    ).first()
    assert (row["bad_amount"], row["outside_window"], row["bad_type"], row["bad_quantity"]) == (0, 0, 0, 0)
    assert row["first_ts"].year == 2022 and row["last_ts"].year == 2024


def test_every_return_follows_its_purchase(clean: dict[str, DataFrame]) -> None:
    tx_df = clean["transactions"]
    returns_df = tx_df.where(F.col("transaction_type") == "return").select(
        F.regexp_replace("transaction_id", "R$", "").alias("transaction_id"),
        F.col("customer_id").alias("return_customer_id"),
        F.col("ts").alias("return_ts"),
        F.col("amount").alias("return_amount"),
        F.col("quantity").alias("return_quantity"),
    )
    purchases_df = tx_df.where(F.col("transaction_type") == "purchase")
    pairs_df = returns_df.join(purchases_df, "transaction_id", how="left")
    row = pairs_df.agg(
        F.count(F.lit(1)).alias("returns"),
        _count_if(F.col("customer_id").isNull()).alias("unmatched"),
        _count_if(F.col("return_customer_id") != F.col("customer_id")).alias("other_customer"),
        _count_if(F.col("return_ts") <= F.col("ts")).alias("before_purchase"),
        _count_if((F.col("return_amount") <= 0)
                  | (F.col("return_amount") > F.col("amount"))).alias("bad_amount"),
        _count_if(F.col("return_quantity") > F.col("quantity")).alias("bad_quantity"),
    ).first()
    assert row["returns"] > 0
    assert (row["unmatched"], row["other_customer"], row["before_purchase"], row["bad_amount"],
            row["bad_quantity"]) == (0, 0, 0, 0, 0)


def test_prospects_never_buy(clean: dict[str, DataFrame]) -> None:
    buyers_df = clean["transactions"].select("customer_id").distinct().select(
        "customer_id", F.lit(True).alias("has_purchase"))
    row = clean["customer_truth"].join(buyers_df, "customer_id", how="left").agg(
        _count_if(F.col("is_prospect") & F.col("has_purchase").isNotNull()).alias("buying_prospects"),
        F.avg(F.col("has_purchase").isNull().cast("double")).alias("share_without_purchase"),
        F.avg(F.col("is_prospect").cast("double")).alias("prospect_share"),
    ).first()
    assert row["buying_prospects"] == 0
    assert abs(row["prospect_share"] - 0.15) < 0.03
    assert 0.12 < row["share_without_purchase"] < 0.20


def test_dropout_ts_is_the_last_purchase_of_dead_customers(clean: dict[str, DataFrame]) -> None:
    last_df = (clean["transactions"].where(F.col("transaction_type") == "purchase")
               .groupBy("customer_id").agg(F.max("ts").alias("last_purchase_ts")))
    row = clean["customer_truth"].join(last_df, "customer_id", how="left").agg(
        _count_if(F.col("dropout_ts").isNotNull()).alias("dead"),
        _count_if(F.col("dropout_ts").isNotNull()
                  & ~F.col("dropout_ts").eqNullSafe(F.col("last_purchase_ts"))).alias("mismatched"),
        _count_if(F.col("dropout_ts") > F.lit(WINDOW_END)).alias("after_end"),
        F.count(F.lit(1)).alias("customers"),
    ).first()
    assert row["mismatched"] == 0 and row["after_end"] == 0
    assert 0.05 < row["dead"] / row["customers"] < 0.6


def test_clean_interactions_are_valid(clean: dict[str, DataFrame]) -> None:
    is_survey = F.col("kind") == "survey"
    kinds = ("service_call", "complaint", "campaign_touch", "survey")
    row = clean["interactions"].agg(
        _count_if(~F.col("kind").isin(*kinds)).alias("bad_kind"),
        _count_if(~is_survey & F.col("satisfaction").isNotNull()).alias("scored_non_survey"),
        _count_if(~F.col("satisfaction").between(1, 5)).alias("bad_score"),
        _count_if(is_survey & F.col("satisfaction").isNotNull()).alias("scored_surveys"),
        _count_if((F.col("ts") < F.lit(WINDOW_START)) | (F.col("ts") >= F.lit(WINDOW_END))).alias("outside"),
        _count_if(F.isnan("cost") | (F.col("cost") <= 0)).alias("bad_cost"),
    ).first()
    assert (row["bad_kind"], row["scored_non_survey"], row["bad_score"], row["outside"], row["bad_cost"]) == (
        0, 0, 0, 0, 0)
    assert row["scored_surveys"] > 0


# ---- behaviour ---------------------------------------------------------------------------------------------
def test_dissatisfaction_drives_complaints_scores_and_dropout(clean: dict[str, DataFrame]) -> None:
    per_customer_df = clean["interactions"].groupBy("customer_id").agg(
        _count_if(F.col("kind") == "complaint").alias("complaints"),
        F.avg("satisfaction").alias("mean_satisfaction"),
    )
    row = clean["customer_truth"].join(per_customer_df, "customer_id", how="left").agg(
        F.corr("dissatisfaction", F.coalesce(F.col("complaints"), F.lit(0))).alias("complaints"),
        F.corr("dissatisfaction", "mean_satisfaction").alias("satisfaction"),
        F.corr("dissatisfaction", "dropout_probability").alias("dropout"),
    ).first()
    assert row["complaints"] > 0.2
    assert row["satisfaction"] < -0.2
    assert row["dropout"] > 0.2


def test_purchases_peak_in_november_and_december(clean: dict[str, DataFrame]) -> None:
    purchases_df = clean["transactions"].where(F.col("transaction_type") == "purchase")
    days = (END - START).days + 1
    holiday_days = 3 * (30 + 31)
    row = purchases_df.agg(
        F.count(F.lit(1)).alias("all"),
        _count_if(F.month("ts").isin(11, 12)).alias("holiday"),
    ).first()
    assert (row["holiday"] / holiday_days) / (row["all"] / days) > 1.2


def test_volumes_and_spend_are_plausible(clean: dict[str, DataFrame]) -> None:
    row = clean["transactions"].agg(
        F.count(F.lit(1)).alias("rows"),
        _count_if(F.col("transaction_type") == "return").alias("returns"),
        F.avg(F.when(F.col("transaction_type") == "purchase", F.col("amount"))).alias("mean_amount"),
        F.countDistinct("category").alias("categories"),
        F.countDistinct("channel").alias("channels"),
    ).first()
    assert 5 < row["rows"] / CUSTOMERS < 20
    purchases = row["rows"] - row["returns"]
    # return_share 0.05, less the returns that would fall after the end
    assert 0.02 < row["returns"] / purchases < 0.06
    assert 64 < row["mean_amount"] < 100  # mean_order_value 80
    assert row["categories"] == 8 and row["channels"] == 3
