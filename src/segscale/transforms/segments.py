"""Segmentation: value tiers, lifecycle stages and the customer_scores frame."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segscale.config import LifecycleSettings, Settings, TierSettings
from segscale.transforms.rfm import SKETCH_POINTS, CutPoints, is_buyer, with_rfm_scores

# The values of customer_scores.value_tier and lifecycle_stage, in display order, with what people see of them: the
# tiers' Chinese names (beside the English ones in the report and the run summary) and each value's chart colour.
HIGH_VALUE, POTENTIAL, REGULAR = "high_value", "potential", "regular"
VALUE_TIERS = (HIGH_VALUE, POTENTIAL, REGULAR)
TIER_LABELS = {HIGH_VALUE: "高价值", POTENTIAL: "潜力", REGULAR: "普通"}
TIER_COLOURS = {HIGH_VALUE: "#c8871a", POTENTIAL: "#3f7fbf", REGULAR: "#9a9a9a"}
PROSPECT, CHURNED, AT_RISK, NEW, LOYAL, REPEAT = "prospect", "churned", "at_risk", "new", "loyal", "repeat"
LIFECYCLE_STAGES = (PROSPECT, NEW, REPEAT, LOYAL, AT_RISK, CHURNED)
# The stages of a buyer who bought within lifecycle.at_risk_after_days.
ACTIVE_STAGES = (NEW, REPEAT, LOYAL)
STAGE_COLOURS = {PROSPECT: "#c9d6e3", NEW: "#8fb3d9", REPEAT: "#4f86c6", LOYAL: "#1f4e8c", AT_RISK: "#e0a030",
                 CHURNED: "#c0392b"}


@dataclass(frozen=True)
class TierThresholds:
    """Buyers whose basis is strictly above `high_value_above` are high_value; above `potential_above`, potential."""

    basis: str
    high_value_above: float | None
    potential_above: float | None


def tier_thresholds(basis_quantiles: list[float], settings: TierSettings, basis: str | None = None
                    ) -> TierThresholds:
    """Read the tier boundaries off the basis' quantile sketch over buyers (SKETCH_POINTS + 1 evenly spaced).
    `basis` is tiers.basis unless the run had to fall back to another one."""
    def quantile(p: float) -> float | None:
        return basis_quantiles[round(p * SKETCH_POINTS)] if basis_quantiles else None
    return TierThresholds(
        basis=basis or settings.basis,
        high_value_above=quantile(1 - settings.high_value_share),
        potential_above=quantile(1 - settings.high_value_share - settings.potential_share),
    )


def value_tier(basis: Column, thresholds: TierThresholds) -> Column:
    """high_value (高价值) / potential (潜力) / regular (普通); prospects are regular."""
    if thresholds.high_value_above is None:  # no buyers at all
        return F.lit(REGULAR)
    is_high_value = is_buyer() & (basis > F.lit(thresholds.high_value_above))
    is_potential = is_buyer() & (basis > F.lit(thresholds.potential_above))
    return F.when(is_high_value, F.lit(HIGH_VALUE)).when(is_potential, F.lit(POTENTIAL)).otherwise(F.lit(REGULAR))


def lifecycle_stage(settings: LifecycleSettings) -> Column:
    """Each stage by its own definition (docs/segmentation.md); the definitions do not overlap, and the config
    check `Settings._lifecycle_covers_every_buyer` makes them cover every customer. A customer they do not cover
    stops the run, naming the customer, instead of getting a stage that is not theirs."""
    recency, frequency = F.col("recency_days"), F.col("frequency")
    is_active = recency <= settings.at_risk_after_days
    stages = {
        PROSPECT: ~is_buyer(),
        CHURNED: recency > settings.churned_after_days,
        AT_RISK: (recency > settings.at_risk_after_days) & (recency <= settings.churned_after_days),
        NEW: is_active & (frequency == 1),
        REPEAT: is_active & (frequency >= 2) & (frequency < settings.loyal_min_purchases),
        LOYAL: is_active & (frequency >= settings.loyal_min_purchases),
    }
    stage: Column | None = None
    for name, condition in stages.items():
        stage = F.when(condition, F.lit(name)) if stage is None else stage.when(condition, F.lit(name))
    uncovered = F.format_string("no lifecycle stage covers customer %s (recency_days %s, frequency %s); see "
                                "docs/segmentation.md", F.col("customer_id"), recency, frequency)
    return stage.otherwise(F.raise_error(uncovered))


def customer_scores(features_df: DataFrame, cuts: CutPoints, thresholds: TierThresholds, settings: Settings,
                    run_id: str, model_columns: Sequence[str]) -> DataFrame:
    """One row per customer of the snapshot with RFM scores, segment, value tier, lifecycle stage, and the
    `model_columns` the models' predictions added to the features (each model's `columns`, in `MODELS` order)."""
    scored_df = features_df.transform(with_rfm_scores, cuts, settings.rfm)
    return scored_df.select(
        "customer_id", "snapshot_date", "recency_days", "frequency", "monetary", "r_score", "f_score", "m_score",
        "rfm_segment",
        value_tier(F.col(thresholds.basis), thresholds).alias("value_tier"),
        lifecycle_stage(settings.lifecycle).alias("lifecycle_stage"),
        *model_columns,
        F.lit(run_id).alias("run_id"),
    )


