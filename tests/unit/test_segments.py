"""RFM cut points and scores, segment names, value tiers, lifecycle stages and migration."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from segscale.config import RfmSettings, Settings
from segscale.errors import ConfigError
from segscale.models.all import MODELS
from segscale.transforms.migration import segment_migration
from segscale.transforms.rfm import CutPoints, cut_points, quantile_sketch, rounded_up, tie_aware_cuts, with_rfm_scores
from segscale.transforms.segments import (
    TierThresholds,
    customer_scores,
    lifecycle_stage,
    tier_thresholds,
    value_tier,
)

D = dt.date(2024, 6, 30)
FEATURES = "customer_id string, snapshot_date date, recency_days int, frequency long, monetary double"


def sketch_of(values) -> list[float]:
    return list(np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, 1001), method="inverted_cdf"))


def test_cuts_follow_quantiles_on_continuous_data():
    values = np.random.default_rng(1).exponential(100, 50_000)
    cuts = tie_aware_cuts(sketch_of(values), 5)
    assert np.allclose(cuts, np.quantile(values, [0.2, 0.4, 0.6, 0.8]), rtol=0.02)


def test_heavy_ties_do_not_collapse_the_scale():
    # 80 % bought once: bin 1 is exactly the tie group, the other four bins share the rest evenly.
    values = np.r_[np.ones(8000), np.repeat(np.arange(2, 12), 200)]
    cuts = tie_aware_cuts(sketch_of(values), 5)
    assert cuts[0] == 1.0 and len(cuts) == 4
    bins = np.searchsorted(cuts, values, side="left") + 1
    shares = np.bincount(bins)[1:] / len(values)
    assert shares[0] == pytest.approx(0.8) and all(0.03 < s < 0.07 for s in shares[1:])


def test_too_few_distinct_values_give_fewer_bins_never_split_ties():
    assert tie_aware_cuts([3.0] * 1001, 5) == []
    assert tie_aware_cuts([1.0] * 600 + [2.0] * 401, 5) == [1.0]


def test_scores_are_equal_for_equal_values_and_null_for_prospects(spark):
    features = spark.createDataFrame(
        [("a", D, 1, 9, 500.0), ("b", D, 1, 9, 500.0), ("c", D, 40, 2, 50.0), ("d", D, 400, 1, 5.0),
         ("p", D, None, 0, 0.0)], FEATURES)
    cuts = CutPoints(recency=(1.0, 10.0, 30.0, 100.0), frequency=(1.0, 2.0, 3.0, 8.0),
                     monetary=(5.0, 10.0, 100.0, 400.0))
    scored = features.transform(with_rfm_scores, cuts, RfmSettings()).select(
        "customer_id", "r_score", "f_score", "m_score", "rfm_segment")
    expected = spark.createDataFrame(
        [("a", 5, 5, 5, "Champions"), ("b", 5, 5, 5, "Champions"), ("c", 2, 2, 3, "Hibernating"),
         ("d", 1, 1, 1, "Lost"), ("p", None, None, None, None)],
        "customer_id string, r_score int, f_score int, m_score int, rfm_segment string")
    assertDataFrameEqual(scored, expected)


def test_sketch_over_buyers_with_80_percent_single_purchases_uses_all_scores(spark):
    rows = [(f"c{i}", D, i % 300, 1 if i < 4000 else 2 + i % 17, float(i % 997)) for i in range(5000)]
    rows += [(f"p{i}", D, None, 0, 0.0) for i in range(500)]
    features = spark.createDataFrame(rows, FEATURES)
    cuts = cut_points(quantile_sketch(features), RfmSettings())
    assert cuts.frequency[0] == 1.0 and len(cuts.frequency) == 4
    scored = features.transform(with_rfm_scores, cuts, RfmSettings())
    f_scores = {r.f_score for r in scored.where(F.col("f_score").isNotNull()).select("f_score").distinct().collect()}
    assert f_scores == {1, 2, 3, 4, 5}
    assert scored.where(F.col("frequency") == 1).select("f_score").distinct().count() == 1


def test_configured_cut_points_override_the_quantiles():
    settings = RfmSettings.model_validate({"cut_points": {"monetary": [10, 20, 30, 40]}})
    cuts = cut_points({"recency": sketch_of(range(100)), "frequency": sketch_of(range(100)),
                       "monetary": sketch_of(range(100))}, settings)
    assert cuts.monetary == (10, 20, 30, 40) and len(cuts.recency) == 4


@pytest.mark.parametrize("rfm", [
    {"cut_points": {"recency": [1, 2, 3]}},
    {"cut_points": {"recency": [1, 3, 2, 4]}},
    {"segments": [{"name": "Everyone", "r": [1, 4], "f": [1, 5]}]},
], ids=["wrong-count", "not-ascending", "uncovered-scores"])
def test_rfm_config_errors(rfm):
    from segscale.config import load_settings
    with pytest.raises(ConfigError, match=r"rfm"):
        load_settings(overrides={"rfm": rfm}, environ={})


def test_value_tiers_take_the_top_shares_of_buyers_and_prospects_are_regular(spark):
    rows = [(f"c{i}", D, 5, 1, float(i)) for i in range(1, 1001)] + [("p", D, None, 0, 0.0)]
    features = spark.createDataFrame(rows, FEATURES)
    sketch = quantile_sketch(features)
    thresholds = tier_thresholds(sketch["monetary"], Settings().tiers)
    tiers = features.select("customer_id", value_tier(F.col("monetary"), thresholds).alias("tier"))
    counts = {r.tier: r["count"] for r in tiers.groupBy("tier").count().collect()}
    assert counts["high_value"] == pytest.approx(200, abs=3)
    assert counts["potential"] == pytest.approx(300, abs=3)
    assert counts["regular"] == pytest.approx(501, abs=5)
    assert tiers.where(F.col("customer_id") == "p").first().tier == "regular"


def test_lifecycle_stages_at_their_edges(spark):
    features = spark.createDataFrame(
        [("prospect", D, None, 0, 0.0), ("churned", D, 366, 9, 1.0), ("at_risk", D, 121, 1, 1.0),
         ("edge_active", D, 120, 1, 1.0), ("loyal", D, 3, 5, 1.0), ("repeat", D, 3, 4, 1.0),
         ("edge_churn", D, 365, 1, 1.0)], FEATURES)
    stages = features.select("customer_id", lifecycle_stage(Settings().lifecycle).alias("stage"))
    expected = spark.createDataFrame(
        [("prospect", "prospect"), ("churned", "churned"), ("at_risk", "at_risk"), ("edge_active", "new"),
         ("loyal", "loyal"), ("repeat", "repeat"), ("edge_churn", "at_risk")], "customer_id string, stage string")
    assertDataFrameEqual(stages, expected)


def expected_stage(recency: int | None, frequency: int, churned: int, at_risk: int, loyal: int) -> str | None:
    """docs/segmentation.md, stage by stage."""
    if recency is None:
        return "prospect"
    if recency > churned:
        return "churned"
    if recency > at_risk:
        return "at_risk"
    return {1: "new"}.get(frequency) or ("loyal" if frequency >= loyal else "repeat" if frequency >= 2 else None)


def test_every_combination_of_stage_boundaries_is_refused_or_gives_every_buyer_one_stage(spark):
    """Each combination of boundaries (and of the RFM lookback that bounds frequency) is either refused when the
    config loads, naming the keys, or gives every customer the one stage the definitions say."""
    valid = []
    for churned in (60, 365):
        for at_risk in (30, 120, 364):
            for loyal in (2, 5):
                for lookback in (None, 29, 30, 31, 120, 400):
                    raw = {"lifecycle": {"churned_after_days": churned, "at_risk_after_days": at_risk,
                                         "loyal_min_purchases": loyal}, "rfm": {"lookback_days": lookback}}
                    if at_risk >= churned:
                        with pytest.raises(ValueError, match="at_risk_after_days must be below churned_after_days"):
                            Settings.model_validate(raw)
                    elif lookback is not None and lookback <= at_risk:
                        with pytest.raises(ValueError, match=rf"rfm.lookback_days \({lookback}\) must be longer "
                                                             rf"than lifecycle.at_risk_after_days \({at_risk}\)"):
                            Settings.model_validate(raw)
                    else:
                        valid.append((Settings.model_validate(raw), churned, at_risk, loyal, lookback))
    assert len(valid) == 24
    edges = sorted({0, 1, 28, 29, 30, 31, 59, 60, 61, 119, 120, 121, 363, 364, 365, 366, 800})

    def possible(recency: int | None, frequency: int, lookback: int | None) -> bool:
        """A buyer's frequency counts purchases within the lookback, the last one included when it is in it."""
        if recency is None:
            return frequency == 0
        if lookback is None or recency < lookback:
            return frequency >= 1
        return frequency == 0

    for lookback in {config[-1] for config in valid}:
        profiles = [(r, f) for r in [None, *edges] for f in range(7) if possible(r, f, lookback)]
        configs = [config for config in valid if config[-1] == lookback]
        frame = spark.createDataFrame([(f"{r}/{f}", D, r, f, 0.0) for r, f in profiles], FEATURES)
        staged = frame.select("recency_days", "frequency", *[lifecycle_stage(settings.lifecycle).alias(f"stage_{i}")
                                                             for i, (settings, *_) in enumerate(configs)])
        for row in staged.collect():
            for i, (_, churned, at_risk, loyal, _) in enumerate(configs):
                expected = expected_stage(row.recency_days, row.frequency, churned, at_risk, loyal)
                assert expected is not None and row[f"stage_{i}"] == expected, (row, churned, at_risk, loyal)


def test_a_customer_no_stage_covers_stops_the_run_naming_them(spark):
    impossible = spark.createDataFrame([("z", D, 10, 0, 0.0)], FEATURES)  # bought 10 days ago, no purchase counted
    with pytest.raises(Exception, match=r"no lifecycle stage covers customer z \(recency_days 10, frequency 0\)"):
        impossible.select(lifecycle_stage(Settings().lifecycle)).collect()


def test_customer_scores_columns_with_tiers_by_clv(spark):
    """With basis clv the tier follows predicted value: b spent more than a so far, but a is worth more ahead."""
    churn_clv = ("churn_probability double, churn_risk_band string, model_name string, model_version int, "
                 "p_alive double, expected_purchases double, expected_avg_spend double, clv double, "
                 "expected_purchases_p10 double, expected_purchases_p90 double, clv_p10 double, clv_p90 double, "
                 "clv_model_version int")
    features = spark.createDataFrame(
        [("a", D, 1, 2, 10.0, 0.42, "medium", "segscale_churn", 3, 0.9, 2.5, 20.0, 48.0, 2.0, 3.0, 38.0, 60.0, 2),
         ("b", D, 1, 2, 90.0, 0.80, "critical", "segscale_churn", 3, 0.2, 0.1, 40.0, 3.5, 0.08, 0.12, 2.8, 4.4, 2),
         ("p", D, None, 0, 0.0, *[None] * 12, 2)],
        FEATURES + ", " + churn_clv)
    cuts = CutPoints((1.0, 2.0, 3.0, 4.0), (1.0, 2.0, 3.0, 4.0), (1.0, 2.0, 3.0, 4.0))
    scores = customer_scores(features, cuts, TierThresholds("clv", 40.0, 3.0), Settings(), "run-9",
                             [c for model in MODELS for c in model.columns])
    expected = spark.createDataFrame(
        [("a", D, 1, 2, 10.0, 5, 2, 5, "Potential Loyalists", "high_value", "repeat", 0.42, "medium",
          "segscale_churn", 3, 0.9, 2.5, 20.0, 48.0, 2.0, 3.0, 38.0, 60.0, 2, "run-9"),
         ("b", D, 1, 2, 90.0, 5, 2, 5, "Potential Loyalists", "potential", "repeat", 0.80, "critical",
          "segscale_churn", 3, 0.2, 0.1, 40.0, 3.5, 0.08, 0.12, 2.8, 4.4, 2, "run-9"),
         ("p", D, None, 0, 0.0, None, None, None, None, "regular", "prospect", *[None] * 12, 2, "run-9")],
        "customer_id string, snapshot_date date, recency_days int, frequency long, monetary double, r_score int, "
        "f_score int, m_score int, rfm_segment string, value_tier string, lifecycle_stage string, "
        + churn_clv + ", run_id string")
    assertDataFrameEqual(scores, expected)


def test_segment_migration_counts_moves_including_arrivals_and_departures(spark):
    schema = "customer_id string, value_tier string, lifecycle_stage string"
    before = spark.createDataFrame([("a", "high_value", "loyal"), ("b", "high_value", "loyal"),
                                    ("c", "potential", "repeat"), ("gone", "regular", "new")], schema)
    after = spark.createDataFrame([("a", "high_value", "loyal"), ("b", "potential", "at_risk"),
                                   ("c", "potential", "repeat"), ("arrived", "regular", "prospect")], schema)
    previous = dt.date(2024, 5, 31)
    migration = segment_migration(before, after, previous, D, "r1")
    expected = spark.createDataFrame(
        [(D, previous, "high_value", "loyal", "high_value", "loyal", 1, "r1"),
         (D, previous, "high_value", "loyal", "potential", "at_risk", 1, "r1"),
         (D, previous, "potential", "repeat", "potential", "repeat", 1, "r1"),
         (D, previous, "regular", "new", None, None, 1, "r1"),
         (D, previous, None, None, "regular", "prospect", 1, "r1")],
        "snapshot_date date, previous_snapshot_date date, from_value_tier string, from_lifecycle_stage string, "
        "to_value_tier string, to_lifecycle_stage string, customers long, run_id string")
    assertDataFrameEqual(migration, expected)


def test_values_are_counted_rounded_up_to_four_significant_digits(spark):
    values = [25.37, 25.371, 1106.41, -3.21, -3.2159, 0.0, 123456.0, 7.0, 9999.0, 0.000123456, None]
    df = spark.createDataFrame([(v,) for v in values], "x double")
    got = [r.r for r in df.select(rounded_up(F.col("x")).alias("r")).collect()]
    assert got == [25.37, 25.38, 1107.0, -3.21, -3.215, 0.0, 123500.0, 7.0, 9999.0, 0.0001235, None]
    rng = np.random.default_rng(3)
    many = [float(v) for v in rng.lognormal(4, 2, 2000) * rng.choice([-1, 1], 2000)]
    df = spark.createDataFrame([(v,) for v in many], "x double")
    assert df.where(rounded_up(F.col("x")) < F.col("x")).count() == 0  # never below the value it stands for


def test_the_quantiles_do_not_depend_on_partitioning_or_row_order(spark):
    rng = np.random.default_rng(5)
    rows = [(f"c{i}", D, int(rng.integers(0, 900)), int(rng.geometric(0.3)), float(rng.lognormal(5, 1.2)))
            for i in range(20_000)]
    features = spark.createDataFrame(rows, FEATURES)
    one = quantile_sketch(features.coalesce(1))
    many = quantile_sketch(features.repartition(13).sortWithinPartitions(F.rand(seed=9)))
    assert one == many
    monetary = np.sort([r[4] for r in rows])
    for p in (0.2, 0.5, 0.8):  # each quantile is the k-th smallest value, rounded up
        exact = monetary[int(np.ceil(p * len(monetary))) - 1]
        assert exact <= one["monetary"][round(p * 1000)] <= exact * 1.001
