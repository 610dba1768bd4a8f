"""The models segscale fits and scores with, behind one small interface.

A model module (`churn`, `clv`) defines one class with `train` (fit on the data of a snapshot, log it to MLflow,
register a version and decide its champion), `load` (a registered version, ready to score on the executors) and
`predict` (the columns it adds to customer_scores, null without a model). The pipeline knows models only through
this interface and the `MODELS` tuple, so a third model is one new module and one entry there.
"""

from segscale.models.base import Model, Trainer, TrainingData
from segscale.models.churn import ChurnModel
from segscale.models.clv import ClvModel

# The order the run trains and reports them in.
MODELS: tuple[Model, ...] = (ChurnModel(), ClvModel())

__all__ = ["MODELS", "Model", "Trainer", "TrainingData"]
