"""Synthetic input tables (customers, transactions, interactions) and the generator's ground truth.

The generative model, per customer:

* A ``prospect_share`` of customers are prospects: they sign up but never buy.
* Signup dates fall between ``start`` and ``end`` (more of them early); a buyer's first purchase follows
  shortly after signup.
* Buyers follow a BG/NBD-like process: purchases arrive as a Poisson process with a personal rate
  lambda ~ Gamma(shape 0.8, mean 1 / mean_days_between_purchases), thinned by a yearly season (more purchases
  in November and December); after every purchase the customer drops out for good with a personal probability
  p ~ Beta. ``dropout_ts`` in the truth table is the time of the purchase after which the customer died.
* Spend follows the Gamma-Gamma model: a personal scale nu ~ Gamma(q, gamma), each order ~ Gamma(p = 4, nu),
  so a customer's mean order value is 4 / nu and the population mean is ``mean_order_value``.
* A latent ``dissatisfaction`` in [0, 1] raises the complaint and service-call rates, lowers survey scores and
  raises the dropout probability.
* A ``return_share`` of purchases are followed by a ``return`` row (positive amount, at most the purchase's);
  its ``transaction_id`` is the purchase's with an ``R`` appended.
* ``dirty_rate`` R turns about R of each table's rows into realistic bad rows (see ``_spoil_*``); R = 0 gives
  none.

Rows are made on the executors: customers come in fixed blocks of ``BLOCK_SIZE``, ``spark.range`` spreads the
block numbers over partitions and ``mapInArrow`` builds each block with numpy, seeded by (seed, block, stream)
with a separate stream per concern. A table therefore depends only on the seed and the settings, never on the
number of partitions, and each table is built without generating the others' rows.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from segscale.config import GenerateSettings

# ---- layout ------------------------------------------------------------------------------------------------
# Part of the data's identity: the same seed with another block size gives other (equally valid) tables.
BLOCK_SIZE = 10_000
# Without an explicit partition count, aim for this many blocks per Spark task (but use every core).
BLOCKS_PER_PARTITION = 20
CUSTOMER_ID_DIGITS = 9
SEQUENCE_DIGITS = 5

# RNG streams: one per concern, so a table never draws (or waits for) another table's numbers.
STREAM_CUSTOMER_PARAMS = 0
STREAM_CUSTOMER_PROFILE = 1
STREAM_PURCHASE_TIMES = 2
STREAM_PURCHASE_DETAILS = 3
STREAM_INTERACTIONS = 4
STREAM_DIRTY_CUSTOMERS = 5
STREAM_DIRTY_TRANSACTIONS = 6
STREAM_DIRTY_INTERACTIONS = 7

# ---- customers ---------------------------------------------------------------------------------------------
# Signup day = start + U ** SIGNUP_SKEW * window: skew > 1 puts more signups early in the window.
SIGNUP_SKEW = 3.0
FIRST_PURCHASE_MEAN_DAYS = 2.0
REGIONS = ("north", "south", "east", "west", "central", "capital")
REGION_WEIGHTS = (0.18, 0.2, 0.15, 0.15, 0.12, 0.2)
CITY_TIER_WEIGHTS = (0.25, 0.35, 0.25, 0.15)  # tiers 1..4
CHANNELS = ("online", "store", "app")
CHANNEL_WEIGHTS = (0.45, 0.35, 0.2)
GENDERS = ("F", "M", "U")
GENDER_WEIGHTS = (0.49, 0.47, 0.04)
AGE_MEAN, AGE_SD, AGE_MIN, AGE_MAX = 42.0, 14.0, 18, 90

# ---- purchasing --------------------------------------------------------------------------------------------
RATE_SHAPE = 0.8
DROPOUT_BETA = (1.0, 35.0)
# p = base * exp(DROPOUT_DISSATISFACTION_WEIGHT * (dissatisfaction - its mean)), clipped.
DROPOUT_DISSATISFACTION_WEIGHT = 4.0
DROPOUT_P_RANGE = (1e-4, 0.9)
DISSATISFACTION_BETA = (2.0, 5.0)
DISSATISFACTION_MEAN = DISSATISFACTION_BETA[0] / sum(DISSATISFACTION_BETA)
SPEND_SHAPE_P = 4.0
SPEND_SHAPE_Q = 6.0
# Relative purchase intensity by calendar month (January first); thinning turns it into the season.
MONTH_WEIGHTS = (0.9, 0.85, 0.95, 0.95, 1.0, 0.95, 0.95, 1.0, 0.95, 1.0, 1.5, 1.9)
QUANTITY_EXTRA_MEAN = 0.4  # quantity = 1 + Poisson
CATEGORIES = ("grocery", "electronics", "fashion", "home", "beauty", "sports", "toys", "books")
CATEGORY_WEIGHTS = (0.24, 0.1, 0.16, 0.14, 0.11, 0.09, 0.07, 0.09)
CATEGORY_LOYALTY = 0.5  # share of a customer's purchases in their favourite category
CHANNEL_LOYALTY = 0.75  # share of a customer's purchases in their signup channel
RETURN_MIN_HOURS = 1.0
RETURN_MEAN_DAYS = 10.0
RETURN_FULL_SHARE = 0.6  # the rest are partial refunds of 10..100 % of the amount
PURCHASE, RETURN = 0, 1
TRANSACTION_TYPES = ("purchase", "return")

# ---- interactions ------------------------------------------------------------------------------------------
INTERACTION_KINDS = ("service_call", "complaint", "campaign_touch", "survey")
SERVICE_CALL, COMPLAINT, CAMPAIGN_TOUCH, SURVEY = range(4)
# Events per day while a customer is active (signup until AFTER_DROPOUT_DAYS after dropout, or end).
SERVICE_CALLS_PER_DAY = 1 / 365  # times 0.5 + 0.5 * dissatisfaction / its mean
COMPLAINTS_PER_DAY = 1 / 900  # times (dissatisfaction / its mean) ** 2
CAMPAIGN_TOUCHES_PER_DAY = 1 / 180
SURVEYS_PER_DAY = 1 / 365
AFTER_DROPOUT_DAYS = 30
CAMPAIGN_TOUCH_COSTS = (0.05, 0.3, 1.5)  # email, sms, letter
CAMPAIGN_TOUCH_COST_WEIGHTS = (0.7, 0.2, 0.1)
SERVICE_CALL_COST_MEAN = 6.0
COMPLAINT_COST_MEAN = 18.0
COST_SHAPE = 3.0
SURVEY_COST = 0.5
SURVEY_RESPONSE_SHARE = 0.8  # unanswered surveys keep a null satisfaction
SATISFACTION_AT_ZERO_DISSATISFACTION = 5.0
SATISFACTION_SLOPE = 5.0
SATISFACTION_NOISE_SD = 0.7

# ---- dirty rows --------------------------------------------------------------------------------------------
(BAD_NULL_CUSTOMER, BAD_BLANK_CUSTOMER, BAD_UNKNOWN_CUSTOMER, BAD_NEGATIVE_AMOUNT, BAD_NAN_AMOUNT,
 BAD_DUPLICATE_ID, BAD_NULL_TS, BAD_IMPOSSIBLE_TS, BAD_UNKNOWN_TYPE) = range(9)
BAD_TRANSACTION_KINDS = 9
BAD_CUSTOMER_KINDS = 2  # blank customer_id, duplicate row
BAD_INTERACTION_KINDS = 2  # null customer_id, unknown customer
UNKNOWN_TRANSACTION_TYPES = ("refund?", "void")
BLANK_IDS = ("", "   ")
UNKNOWN_CUSTOMER_PREFIX = "X"
DUPLICATE_MAX_SHIFT_S = 120
IMPOSSIBLE_YEARS = (1970, 2099)
UNPARSEABLE_TS_TEXT = ("2024-13-45T25:61:00Z", "yesterday", "31/12/2024 10:00")

DAY_S = 86_400
_US = 1_000_000
# customer_id states: how a row's customer_id is written.
_ID_OK, _ID_NULL, _ID_EMPTY, _ID_SPACES, _ID_UNKNOWN = range(5)

_MONTH_ACCEPT = np.asarray(MONTH_WEIGHTS) / max(MONTH_WEIGHTS)
_DAYS_IN_MONTH = np.array([31, 28.25, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
# Candidate rate over the customer's mean rate, so that thinning leaves the mean rate over a year.
_SEASON_PEAK = max(MONTH_WEIGHTS) / float(np.average(MONTH_WEIGHTS, weights=_DAYS_IN_MONTH))

CUSTOMERS_SCHEMA = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("signup_date", T.DateType(), False),
    T.StructField("region", T.StringType(), False),
    T.StructField("city_tier", T.IntegerType(), False),
    T.StructField("channel", T.StringType(), False),
    T.StructField("birth_year", T.IntegerType(), False),
    T.StructField("gender", T.StringType(), False),
])
TRANSACTIONS_SCHEMA = T.StructType([
    T.StructField("transaction_id", T.StringType(), False),
    T.StructField("customer_id", T.StringType(), True),
    T.StructField("ts", T.TimestampType(), True),
    T.StructField("amount", T.DoubleType(), False),
    T.StructField("quantity", T.IntegerType(), False),
    T.StructField("category", T.StringType(), False),
    T.StructField("channel", T.StringType(), False),
    T.StructField("transaction_type", T.StringType(), False),
])
INTERACTIONS_SCHEMA = T.StructType([
    T.StructField("interaction_id", T.StringType(), False),
    T.StructField("customer_id", T.StringType(), True),
    T.StructField("ts", T.TimestampType(), False),
    T.StructField("kind", T.StringType(), False),
    T.StructField("cost", T.DoubleType(), False),
    T.StructField("satisfaction", T.IntegerType(), True),
])
CUSTOMER_TRUTH_SCHEMA = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("is_prospect", T.BooleanType(), False),
    T.StructField("purchase_rate_per_day", T.DoubleType(), False),
    T.StructField("dropout_probability", T.DoubleType(), False),
    T.StructField("dissatisfaction", T.DoubleType(), False),
    T.StructField("dropout_ts", T.TimestampType(), True),
    T.StructField("mean_order_value", T.DoubleType(), False),
])


def generate_frames(spark: SparkSession, settings: GenerateSettings, partitions: int | None = None, *,
                    block_size: int = BLOCK_SIZE) -> dict[str, DataFrame]:
    """Lazy frames "customers", "transactions", "interactions" and "customer_truth", built on the executors.

    The result depends on `settings` and `block_size` only; `partitions` (default: about BLOCKS_PER_PARTITION
    blocks per task, at least one task per core) changes how the work is spread, never the rows.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    plan = _Plan.from_settings(settings, block_size)
    num_blocks = math.ceil(settings.customers / block_size)
    if partitions is None:
        partitions = max(spark.sparkContext.defaultParallelism, math.ceil(num_blocks / BLOCKS_PER_PARTITION))
    blocks_df = spark.range(num_blocks, numPartitions=max(1, min(partitions, num_blocks)))

    def frame(build: Callable[[_Plan, int], pa.RecordBatch], schema: T.StructType) -> DataFrame:
        return blocks_df.mapInArrow(functools.partial(_map_blocks, plan=plan, build=build), schema)

    return {
        "customers": frame(_customers_block, CUSTOMERS_SCHEMA),
        "transactions": frame(_transactions_block, TRANSACTIONS_SCHEMA),
        "interactions": frame(_interactions_block, INTERACTIONS_SCHEMA),
        "customer_truth": frame(_truth_block, CUSTOMER_TRUTH_SCHEMA),
    }


# ---- executor side -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """Everything a block needs; small and picklable."""

    seed: int
    customers: int
    block_size: int
    start_day: int  # days since 1970-01-01
    end_day: int  # inclusive
    prospect_share: float
    mean_rate_per_day: float
    mean_order_value: float
    return_share: float
    dirty_rate: float

    @classmethod
    def from_settings(cls, settings: GenerateSettings, block_size: int) -> _Plan:
        epoch = dt.date(1970, 1, 1)
        return cls(
            # SeedSequence takes non-negative entropy; the modulus keeps distinct int64 seeds distinct.
            seed=settings.seed % 2**64,
            customers=settings.customers,
            block_size=block_size,
            start_day=(settings.start - epoch).days,
            end_day=(settings.end - epoch).days,
            prospect_share=settings.prospect_share,
            mean_rate_per_day=1.0 / settings.mean_days_between_purchases,
            mean_order_value=settings.mean_order_value,
            return_share=settings.return_share,
            dirty_rate=settings.dirty_rate,
        )

    @property
    def end_s(self) -> int:
        """The last second of the end day."""
        return (self.end_day + 1) * DAY_S - 1

    def rng(self, block: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, block, stream])


def _map_blocks(batches: Iterator[pa.RecordBatch], plan: _Plan,
                build: Callable[[_Plan, int], pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Executor task: build every block whose number arrives in `batches`."""
    for batch in batches:
        for block in batch.column(0).to_numpy():
            out = build(plan, int(block))
            if out.num_rows:
                yield out


@dataclass(frozen=True)
class _Customers:
    """One block's latent customer parameters (recomputed by every table: cheap next to the rows)."""

    block: int
    number: np.ndarray  # 1-based customer number, the digits of customer_id
    is_prospect: np.ndarray
    signup_day: np.ndarray
    rate: np.ndarray  # latent purchase rate per day (prospects never act on it)
    dropout_p: np.ndarray
    dissatisfaction: np.ndarray
    spend_scale: np.ndarray  # Gamma-Gamma nu
    channel: np.ndarray
    favourite_category: np.ndarray

    def __len__(self) -> int:
        return len(self.number)


def _customer_params(plan: _Plan, block: int) -> _Customers:
    first = block * plan.block_size
    n = min(plan.block_size, plan.customers - first)
    rng = plan.rng(block, STREAM_CUSTOMER_PARAMS)
    window_days = plan.end_day - plan.start_day + 1
    is_prospect = rng.random(n) < plan.prospect_share
    signup_day = plan.start_day + np.floor(rng.random(n) ** SIGNUP_SKEW * window_days).astype(np.int64)
    rate = rng.gamma(RATE_SHAPE, plan.mean_rate_per_day / RATE_SHAPE, n)
    dissatisfaction = rng.beta(*DISSATISFACTION_BETA, n)
    base_p = rng.beta(*DROPOUT_BETA, n)
    dissatisfaction_effect = np.exp(DROPOUT_DISSATISFACTION_WEIGHT * (dissatisfaction - DISSATISFACTION_MEAN))
    dropout_p = np.clip(base_p * dissatisfaction_effect, *DROPOUT_P_RANGE)
    # nu ~ Gamma(q, rate g) with g chosen so that E[p / nu] = p g / (q - 1) is the mean order value.
    spend_rate = plan.mean_order_value * (SPEND_SHAPE_Q - 1) / SPEND_SHAPE_P
    spend_scale = rng.gamma(SPEND_SHAPE_Q, 1.0 / spend_rate, n)
    channel = rng.choice(len(CHANNELS), n, p=CHANNEL_WEIGHTS)
    favourite_category = rng.choice(len(CATEGORIES), n, p=CATEGORY_WEIGHTS)
    number = np.arange(first + 1, first + n + 1, dtype=np.int64)
    return _Customers(block, number, is_prospect, signup_day, rate, dropout_p, dissatisfaction, spend_scale,
                      channel, favourite_category)


@dataclass(frozen=True)
class _Purchases:
    """One block's purchases, sorted by customer and time, and each customer's dropout time (-1: alive)."""

    customer: np.ndarray  # position in the block
    ts: np.ndarray  # epoch seconds
    sequence: np.ndarray  # 1-based within the customer
    dropout_s: np.ndarray


def _purchase_times(plan: _Plan, c: _Customers) -> _Purchases:
    rng = plan.rng(c.block, STREAM_PURCHASE_TIMES)
    n = len(c)
    first_s = c.signup_day * DAY_S + (rng.exponential(FIRST_PURCHASE_MEAN_DAYS * DAY_S, n)).astype(np.int64)
    buys = ~c.is_prospect & (first_s <= plan.end_s)
    # Purchases until (and including) the one after which the customer drops out.
    lifetime_purchases = rng.geometric(c.dropout_p)
    span_s = np.where(buys, plan.end_s - first_s, 0)
    candidates = rng.poisson(c.rate * _SEASON_PEAK * span_s / DAY_S)
    cand_customer = np.repeat(np.arange(n), candidates)
    offset_s = rng.random(len(cand_customer)) * span_s[cand_customer]
    cand_ts = first_s[cand_customer] + offset_s.astype(np.int64)
    accept = rng.random(len(cand_ts)) < _MONTH_ACCEPT[_month_index(cand_ts)]

    customer = np.concatenate([np.flatnonzero(buys), cand_customer[accept]])
    ts = np.concatenate([first_s[buys], cand_ts[accept]])
    order = np.lexsort((ts, customer))
    customer, ts = customer[order], ts[order]
    sequence = _rank_within(customer, n) + 1
    alive = sequence <= lifetime_purchases[customer]
    customer, ts, sequence = customer[alive], ts[alive], sequence[alive]
    died = sequence == lifetime_purchases[customer]
    dropout_s = np.full(n, -1, dtype=np.int64)
    dropout_s[customer[died]] = ts[died]
    return _Purchases(customer, ts, sequence, dropout_s)


def _customers_block(plan: _Plan, block: int) -> pa.RecordBatch:
    c = _customer_params(plan, block)
    rng = plan.rng(block, STREAM_CUSTOMER_PROFILE)
    n = len(c)
    start_year = (dt.date(1970, 1, 1) + dt.timedelta(days=plan.start_day)).year
    age = np.clip(np.round(rng.normal(AGE_MEAN, AGE_SD, n)), AGE_MIN, AGE_MAX).astype(np.int32)
    rows = {
        "customer": np.arange(n),
        "id_state": np.zeros(n, dtype=np.int8),
        "region": rng.choice(len(REGIONS), n, p=REGION_WEIGHTS),
        "city_tier": (rng.choice(len(CITY_TIER_WEIGHTS), n, p=CITY_TIER_WEIGHTS) + 1).astype(np.int32),
        "birth_year": (start_year - age).astype(np.int32),
        "gender": rng.choice(len(GENDERS), n, p=GENDER_WEIGHTS),
    }
    if plan.dirty_rate > 0:
        rows = _spoil_customers(plan.rng(block, STREAM_DIRTY_CUSTOMERS), plan.dirty_rate, rows)
    customer = rows["customer"]
    return pa.RecordBatch.from_arrays([
        _customer_ids(c.number[customer], rows["id_state"]),
        pa.array(c.signup_day[customer].astype(np.int32), type=pa.date32()),
        _labels(REGIONS, rows["region"]),
        pa.array(rows["city_tier"], type=pa.int32()),
        _labels(CHANNELS, c.channel[customer]),
        pa.array(rows["birth_year"], type=pa.int32()),
        _labels(GENDERS, rows["gender"]),
    ], schema=_arrow_schema(CUSTOMERS_SCHEMA))


def _transactions_block(plan: _Plan, block: int) -> pa.RecordBatch:
    c = _customer_params(plan, block)
    bought = _purchase_times(plan, c)
    rng = plan.rng(block, STREAM_PURCHASE_DETAILS)
    m = len(bought.customer)
    customer = bought.customer
    amount = np.maximum(np.round(rng.gamma(SPEND_SHAPE_P, 1.0 / c.spend_scale[customer]), 2), 0.01)
    quantity = 1 + rng.poisson(QUANTITY_EXTRA_MEAN, m)
    category = np.where(rng.random(m) < CATEGORY_LOYALTY, c.favourite_category[customer],
                        rng.choice(len(CATEGORIES), m, p=CATEGORY_WEIGHTS))
    channel = np.where(rng.random(m) < CHANNEL_LOYALTY, c.channel[customer],
                       rng.choice(len(CHANNELS), m, p=CHANNEL_WEIGHTS))
    return_delay_s = RETURN_MIN_HOURS * 3600 + rng.exponential(RETURN_MEAN_DAYS * DAY_S, m)
    return_ts = bought.ts + return_delay_s.astype(np.int64)
    returned = (rng.random(m) < plan.return_share) & (return_ts <= plan.end_s)
    is_full = rng.random(m) < RETURN_FULL_SHARE
    partial = np.clip(np.round(amount * rng.uniform(0.1, 1.0, m), 2), 0.01, amount)
    partial_quantity = 1 + np.floor(rng.random(m) * quantity).astype(np.int64)

    purchases = {
        "customer": customer, "ts": bought.ts, "amount": amount, "quantity": quantity,
        "category": category, "channel": channel, "type": np.full(m, PURCHASE), "sequence": bought.sequence,
        "is_return": np.zeros(m, dtype=bool),
    }
    returns = {
        "customer": customer, "ts": return_ts, "amount": np.where(is_full, amount, partial),
        "quantity": np.where(is_full, quantity, partial_quantity), "category": category, "channel": channel,
        "type": np.full(m, RETURN), "sequence": bought.sequence, "is_return": np.ones(m, dtype=bool),
    }
    rows = _concat(purchases, _take(returns, np.flatnonzero(returned)))
    rows = _take(rows, np.lexsort((rows["ts"], rows["customer"])))
    total = len(rows["ts"])
    rows["id_state"] = np.zeros(total, dtype=np.int8)
    rows["ts_valid"] = np.ones(total, dtype=bool)
    if plan.dirty_rate > 0:
        rows = _spoil_transactions(plan.rng(block, STREAM_DIRTY_TRANSACTIONS), plan.dirty_rate, plan, rows)

    number = c.number[rows["customer"]]
    transaction_ids = pc.binary_join_element_wise(
        "T", _digits(number, CUSTOMER_ID_DIGITS), _digits(rows["sequence"], SEQUENCE_DIGITS),
        pc.if_else(pa.array(rows["is_return"]), "R", ""), "")
    return pa.RecordBatch.from_arrays([
        transaction_ids,
        _customer_ids(number, rows["id_state"]),
        _timestamps(rows["ts"], rows["ts_valid"]),
        pa.array(rows["amount"], type=pa.float64()),
        pa.array(rows["quantity"].astype(np.int32), type=pa.int32()),
        _labels(CATEGORIES, rows["category"]),
        _labels(CHANNELS, rows["channel"]),
        _labels(TRANSACTION_TYPES + UNKNOWN_TRANSACTION_TYPES, rows["type"]),
    ], schema=_arrow_schema(TRANSACTIONS_SCHEMA))


def _interactions_block(plan: _Plan, block: int) -> pa.RecordBatch:
    c = _customer_params(plan, block)
    dropout_s = _purchase_times(plan, c).dropout_s
    rng = plan.rng(block, STREAM_INTERACTIONS)
    n = len(c)
    active_from = c.signup_day * DAY_S
    after_dropout_s = np.minimum(dropout_s + AFTER_DROPOUT_DAYS * DAY_S, plan.end_s)
    active_to = np.where(dropout_s >= 0, after_dropout_s, plan.end_s)
    relative = c.dissatisfaction / DISSATISFACTION_MEAN
    rates = np.column_stack([
        SERVICE_CALLS_PER_DAY * (0.5 + 0.5 * relative),
        COMPLAINTS_PER_DAY * relative**2,
        np.full(n, CAMPAIGN_TOUCHES_PER_DAY),
        np.full(n, SURVEYS_PER_DAY),
    ])
    counts = rng.poisson(rates * ((active_to - active_from) / DAY_S)[:, None])
    pairs = np.repeat(np.arange(n * len(INTERACTION_KINDS)), counts.ravel())
    customer, kind = np.divmod(pairs, len(INTERACTION_KINDS))
    r = len(pairs)
    ts = active_from[customer] + (rng.random(r) * (active_to - active_from)[customer]).astype(np.int64)
    touch_cost = np.asarray(CAMPAIGN_TOUCH_COSTS)[
        rng.choice(len(CAMPAIGN_TOUCH_COSTS), r, p=CAMPAIGN_TOUCH_COST_WEIGHTS)]
    cost = np.select(
        [kind == SERVICE_CALL, kind == COMPLAINT, kind == CAMPAIGN_TOUCH],
        [rng.gamma(COST_SHAPE, SERVICE_CALL_COST_MEAN / COST_SHAPE, r),
         rng.gamma(COST_SHAPE, COMPLAINT_COST_MEAN / COST_SHAPE, r),
         touch_cost],
        default=SURVEY_COST,
    )
    score = (SATISFACTION_AT_ZERO_DISSATISFACTION - SATISFACTION_SLOPE * c.dissatisfaction[customer]
             + rng.normal(0.0, SATISFACTION_NOISE_SD, r))
    answered = (kind == SURVEY) & (rng.random(r) < SURVEY_RESPONSE_SHARE)
    rows = {
        "customer": customer, "ts": ts, "kind": kind, "cost": np.round(cost, 2),
        "satisfaction": np.clip(np.round(score), 1, 5).astype(np.int32), "answered": answered,
    }
    rows = _take(rows, np.lexsort((ts, customer)))
    rows["sequence"] = _rank_within(rows["customer"], n) + 1
    rows["id_state"] = np.zeros(r, dtype=np.int8)
    if plan.dirty_rate > 0:
        rows = _spoil_interactions(plan.rng(block, STREAM_DIRTY_INTERACTIONS), plan.dirty_rate, rows)

    number = c.number[rows["customer"]]
    return pa.RecordBatch.from_arrays([
        pc.binary_join_element_wise("I", _digits(number, CUSTOMER_ID_DIGITS),
                                    _digits(rows["sequence"], SEQUENCE_DIGITS), ""),
        _customer_ids(number, rows["id_state"]),
        _timestamps(rows["ts"]),
        _labels(INTERACTION_KINDS, rows["kind"]),
        pa.array(rows["cost"], type=pa.float64()),
        pa.array(rows["satisfaction"], type=pa.int32(), mask=~rows["answered"]),
    ], schema=_arrow_schema(INTERACTIONS_SCHEMA))


def _truth_block(plan: _Plan, block: int) -> pa.RecordBatch:
    c = _customer_params(plan, block)
    dropout_s = _purchase_times(plan, c).dropout_s
    return pa.RecordBatch.from_arrays([
        _customer_ids(c.number, np.zeros(len(c), dtype=np.int8)),
        pa.array(c.is_prospect, type=pa.bool_()),
        pa.array(np.where(c.is_prospect, 0.0, c.rate), type=pa.float64()),
        pa.array(c.dropout_p, type=pa.float64()),
        pa.array(c.dissatisfaction, type=pa.float64()),
        _timestamps(dropout_s, dropout_s >= 0),
        pa.array(SPEND_SHAPE_P / c.spend_scale, type=pa.float64()),
    ], schema=_arrow_schema(CUSTOMER_TRUTH_SCHEMA))


# ---- dirty rows --------------------------------------------------------------------------------------------
def _pick_bad(rng: np.random.Generator, rate: float, n: int, kinds: int) -> np.ndarray:
    """Each row's bad-row kind, -1 for rows left clean (about `rate` of the rows are picked)."""
    kind = np.full(n, -1, dtype=np.int64)
    bad = np.flatnonzero(rng.random(n) < rate)
    kind[bad] = rng.integers(0, kinds, len(bad))
    return kind


def _spoil_customers(rng: np.random.Generator, rate: float,
                     rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Appended bad copies of real rows: with a blank customer_id ("" or spaces), or exact duplicates. The real
    row stays, as in an extract that picked up stray rows, so the customer's own events remain valid."""
    n = len(rows["customer"])
    kind = _pick_bad(rng, rate, n, BAD_CUSTOMER_KINDS)
    blanks = _take(rows, np.flatnonzero(kind == 0))
    blanks["id_state"] = np.where(rng.random(len(blanks["id_state"])) < 0.5, _ID_EMPTY, _ID_SPACES).astype(np.int8)
    return _concat(_concat(rows, blanks), _take(rows, np.flatnonzero(kind == 1)))


def _spoil_transactions(rng: np.random.Generator, rate: float, plan: _Plan,
                        rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """About `rate` of the rows get one fault each; a duplicate is an appended copy a few seconds apart."""
    n = len(rows["ts"])
    kind = _pick_bad(rng, rate, n, BAD_TRANSACTION_KINDS)
    coin = rng.random(n) < 0.5
    rows["id_state"] = np.select(
        [kind == BAD_NULL_CUSTOMER, kind == BAD_BLANK_CUSTOMER, kind == BAD_UNKNOWN_CUSTOMER],
        [_ID_NULL, np.where(coin, _ID_EMPTY, _ID_SPACES), _ID_UNKNOWN], default=_ID_OK).astype(np.int8)
    amount = rows["amount"]
    rows["amount"] = np.select([kind == BAD_NEGATIVE_AMOUNT, kind == BAD_NAN_AMOUNT], [-amount, np.nan],
                               default=amount)
    rows["ts_valid"] = kind != BAD_NULL_TS
    impossible_start = np.where(coin, _year_start_s(IMPOSSIBLE_YEARS[0]), _year_start_s(IMPOSSIBLE_YEARS[1]))
    impossible_ts = impossible_start + rng.integers(0, 365 * DAY_S, n)
    rows["ts"] = np.where(kind == BAD_IMPOSSIBLE_TS, impossible_ts, rows["ts"])
    unknown_type = len(TRANSACTION_TYPES) + coin.astype(np.int64)
    rows["type"] = np.where(kind == BAD_UNKNOWN_TYPE, unknown_type, rows["type"])
    copies = _take(rows, np.flatnonzero(kind == BAD_DUPLICATE_ID))
    shift = rng.integers(1, DUPLICATE_MAX_SHIFT_S + 1, len(copies["ts"]))
    copies["ts"] = np.where(copies["ts"] + shift <= plan.end_s, copies["ts"] + shift, copies["ts"] - shift)
    return _concat(rows, copies)


def _spoil_interactions(rng: np.random.Generator, rate: float,
                        rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Null customer_ids and customer_ids of customers that do not exist."""
    kind = _pick_bad(rng, rate, len(rows["ts"]), BAD_INTERACTION_KINDS)
    rows["id_state"] = np.select([kind == 0, kind == 1], [_ID_NULL, _ID_UNKNOWN],
                                 default=_ID_OK).astype(np.int8)
    return rows


# ---- helpers -----------------------------------------------------------------------------------------------
def _rank_within(sorted_groups: np.ndarray, groups: int) -> np.ndarray:
    """0-based position of each element within its run of `sorted_groups` (values in [0, groups))."""
    starts = np.concatenate([[0], np.cumsum(np.bincount(sorted_groups, minlength=groups))[:-1]])
    return np.arange(len(sorted_groups)) - starts[sorted_groups]


def _month_index(epoch_s: np.ndarray) -> np.ndarray:
    months = (epoch_s // DAY_S).astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    return months % 12


def _year_start_s(year: int) -> int:
    return (dt.date(year, 1, 1) - dt.date(1970, 1, 1)).days * DAY_S


def _take(rows: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in rows.items()}


def _concat(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def _digits(numbers: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), width=width, padding="0")


def _customer_ids(number: np.ndarray, state: np.ndarray) -> pa.Array:
    """customer_id strings: "C" + zero-padded number, or the fault `state` asks for."""
    ids = pc.binary_join_element_wise("C", _digits(number, CUSTOMER_ID_DIGITS), "")
    if not state.any():
        return ids
    unknown = state == _ID_UNKNOWN
    if unknown.any():
        # Same digits, another prefix: looks real, matches no customer.
        replaced = pc.binary_join_element_wise(UNKNOWN_CUSTOMER_PREFIX,
                                               _digits(number[unknown], CUSTOMER_ID_DIGITS), "")
        ids = pc.replace_with_mask(ids, pa.array(unknown), replaced)
    ids = pc.if_else(pa.array(state == _ID_EMPTY), BLANK_IDS[0], ids)
    ids = pc.if_else(pa.array(state == _ID_SPACES), BLANK_IDS[1], ids)
    return pc.if_else(pa.array(state == _ID_NULL), pa.scalar(None, pa.string()), ids)


def _labels(values: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pc.take(pa.array(values, type=pa.string()), pa.array(codes, type=pa.int64()))


def _timestamps(epoch_s: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    return pa.array(epoch_s.astype(np.int64) * _US, type=pa.timestamp("us", tz="UTC"),
                    mask=None if valid is None else ~valid)


def _arrow_schema(schema: T.StructType) -> pa.Schema:
    return to_arrow_schema(schema, timezone="UTC")


def as_csv_text(frame_df: DataFrame) -> DataFrame:
    """Timestamps as ISO-8601 text for a CSV export. A timestamp that a dirty row lost becomes what exports
    really hold: unparseable text for three in four such rows (chosen by the row's id), an empty cell otherwise."""
    unparseable = F.array(*[F.lit(text) for text in UNPARSEABLE_TS_TEXT], F.lit(None).cast("string"))
    pick = F.pmod(F.xxhash64(F.col(frame_df.columns[0])), F.lit(len(UNPARSEABLE_TS_TEXT) + 1)) + 1
    lost = F.element_at(unparseable, pick.cast("int"))
    return frame_df.select(*[
        F.coalesce(F.date_format(f.name, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"), lost).alias(f.name)
        if isinstance(f.dataType, T.TimestampType) else F.col(f.name)
        for f in frame_df.schema.fields
    ])
