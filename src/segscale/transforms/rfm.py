"""RFM scores and named segments.

Cut points come from one distributed count of buyers per value (at four significant digits; no sort, no global
window), which is the same however the rows are partitioned.
Heavy ties must not collapse the scale (when 80 % of buyers bought once, five quantiles of frequency are all 1),
so the bins are laid out on the sketch's distribution one at a time: each bin takes an equal share of the
buyers not yet placed, and a value's whole tie group always lands in one bin. A score is a function of the value,
so equal values always get equal scores.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segscale.config import RfmSettings, SegmentRule

DIMENSIONS = ("recency", "frequency", "monetary")
COLUMNS = {"recency": "recency_days", "frequency": "frequency", "monetary": "monetary"}
# Quantiles in the sketch: the resolution at which tie groups and shares are seen.
SKETCH_POINTS = 1000
# Values are counted at this precision for the quantiles (a relative resolution of 0.01 % to 0.1 %).
SIGNIFICANT_DIGITS = 4


@dataclass(frozen=True)
class CutPoints:
    """Ascending upper bounds (inclusive) of the lower bins per dimension: bin = 1 + #(cuts below the value)."""

    recency: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]

    def as_dict(self) -> dict[str, list[float]]:
        return {d: list(getattr(self, d)) for d in DIMENSIONS}


def is_buyer() -> Column:
    """A buyer has bought at least once by the snapshot (prospects have no last purchase)."""
    return F.col("recency_days").isNotNull()


def quantile_sketch(features_df: DataFrame, extra: tuple[str, ...] = ()) -> dict[str, list[float]]:
    """SKETCH_POINTS + 1 quantiles (0 .. 1) over buyers of each RFM dimension and of the `extra` columns (keyed
    by their names; nulls are left out, and a column with none but nulls gets no quantiles).

    One aggregation counts buyers per value, each value rounded up to SIGNIFICANT_DIGITS significant digits
    (integers below 10,000 stay exact); the quantiles are read off those counts. Counts do not depend on how the
    rows are partitioned or ordered, so the same input gives the same cut points on any cluster, which a
    streaming sketch (approxQuantile) does not guarantee. Rounding up keeps scores consistent with the counts:
    every value is at or below the representative it was counted under."""
    columns = {**{d: COLUMNS[d] for d in DIMENSIONS}, **{c: c for c in extra}}
    pairs = F.array(*[F.struct(F.lit(key).alias("key"), rounded_up(F.col(c)).alias("value"))
                      for key, c in columns.items()])
    counts_df = (features_df.where(is_buyer()).select(F.inline(pairs)).where(F.col("value").isNotNull())
                 .groupBy("key", "value").count())
    rows = counts_df.collect()  # small: at most 9,000 values per decade of magnitude per column
    probabilities = np.arange(SKETCH_POINTS + 1) / SKETCH_POINTS
    sketch: dict[str, list[float]] = {}
    for key in columns:
        found = sorted((r["value"], r["count"]) for r in rows if r["key"] == key)
        if not found:
            sketch[key] = []
            continue
        values, cumulative = np.array([v for v, _ in found]), np.cumsum([n for _, n in found])
        ranks = np.maximum(1, np.ceil(probabilities * cumulative[-1] - 1e-9))  # the k-th smallest buyer
        sketch[key] = values[np.searchsorted(cumulative, ranks)].tolist()
    return sketch


def rounded_up(value: Column) -> Column:
    """The smallest number of SIGNIFICANT_DIGITS significant digits at or above `value` (null stays null)."""
    x = value.cast("double")
    exponent = F.floor(F.log10(F.abs(x))) - (SIGNIFICANT_DIGITS - 1)
    whole = F.ceil(x / F.pow(F.lit(10.0), exponent)) * F.pow(F.lit(10.0), exponent)
    # Below the units, divide by an exact power of ten, so 25.37 stays 25.37 instead of 25.370000000000001.
    scale = F.pow(F.lit(10.0), -exponent)
    fraction = F.ceil(F.round(x * scale, 6)) / scale
    return F.when(x == 0, F.lit(0.0)).when(exponent >= 0, whole).otherwise(fraction).cast("double")


def cut_points(sketch: dict[str, list[float]], settings: RfmSettings) -> CutPoints:
    """Cut points per dimension: fixed ones from config where given, else laid out on the sketch."""
    def for_dimension(dimension: str) -> tuple[float, ...]:
        fixed = getattr(settings.cut_points, dimension)
        return tuple(fixed) if fixed is not None else tuple(tie_aware_cuts(sketch[dimension], settings.bins))
    return CutPoints(*[for_dimension(d) for d in DIMENSIONS])


def tie_aware_cuts(quantiles: Sequence[float], bins: int) -> list[float]:
    """Cut points that split a distribution, given by its evenly spaced quantiles, into `bins` bins of about
    equal share without splitting a tie group. Fewer cuts come back only when there are too few distinct values."""
    if not quantiles:
        return []
    steps = len(quantiles) - 1
    # share_at[v]: quantile steps at or below value v (the population share, in steps of 1 / steps).
    share_at = {v: bisect.bisect_right(quantiles, v) - 1 for v in sorted(set(quantiles))}
    values = list(share_at)
    cuts: list[float] = []
    placed = -1.0
    for remaining in range(bins, 1, -1):
        target = placed + (steps - placed) / remaining
        # The top value cannot be a cut: nothing would lie above it.
        open_values = [v for v in values[:-1] if not cuts or v > cuts[-1]]
        if not open_values:
            break
        below = [v for v in open_values if share_at[v] < target]
        above = [v for v in open_values if share_at[v] >= target]
        # The tie group that crosses the target goes whole to the side that lands nearer the target.
        if below and (not above or target - share_at[below[-1]] < share_at[above[0]] - target):
            cut = below[-1]
        else:
            cut = above[0]
        cuts.append(cut)
        placed = share_at[cut]
    return cuts


def score(column: Column, cuts: Sequence[float], bins: int, higher_is_better: bool = True) -> Column:
    """1..bins from the cut points; null stays null. With `higher_is_better` False, small values score high."""
    bin_number = F.lit(1)
    for cut in cuts:
        bin_number = bin_number + (column > F.lit(cut)).cast("int")
    scored = bin_number if higher_is_better else F.lit(bins + 1) - bin_number
    return F.when(column.isNotNull(), scored)


def segment_name(rules: Sequence[SegmentRule]) -> Column:
    """The first rule whose score ranges hold the customer's scores; null for prospects."""
    name: Column | None = None
    for rule in reversed(rules):
        matches = (
            F.col("r_score").between(*rule.r) & F.col("f_score").between(*rule.f) & F.col("m_score").between(*rule.m)
        )
        name = F.when(matches, F.lit(rule.name)) if name is None else F.when(matches, F.lit(rule.name)).otherwise(name)
    return name if name is not None else F.lit(None).cast("string")


def with_rfm_scores(features_df: DataFrame, cuts: CutPoints, settings: RfmSettings) -> DataFrame:
    """Adds r_score, f_score, m_score (1..bins, 5 = most recent / frequent / highest spend) and rfm_segment."""
    bins = settings.bins
    scored_df = features_df.select(
        "*",
        score(F.col("recency_days"), cuts.recency, bins, higher_is_better=False).alias("r_score"),
        F.when(is_buyer(), score(F.col("frequency"), cuts.frequency, bins)).alias("f_score"),
        F.when(is_buyer(), score(F.col("monetary"), cuts.monetary, bins)).alias("m_score"),
    )
    return scored_df.select("*", segment_name(settings.segments).alias("rfm_segment"))
