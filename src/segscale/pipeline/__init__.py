"""The run: stages wired from reads through transforms and models to publication (`graph`, `stages`), the run's
context (`context`), and the commands built on them (`commands`)."""

from segscale.pipeline.commands import (
    GRAPHS,
    backfill,
    generate_inputs,
    run_pipeline,
    score_snapshot,
    snapshot_dates,
    train_models,
)
from segscale.pipeline.context import STAGE_TAG, Run

__all__ = ["GRAPHS", "STAGE_TAG", "Run", "backfill", "generate_inputs", "run_pipeline", "score_snapshot",
           "snapshot_dates", "train_models"]
