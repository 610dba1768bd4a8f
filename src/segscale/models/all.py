"""Every model the pipeline trains and scores, in the order the run trains and reports them."""

from segscale.models.base import Model
from segscale.models.churn import ChurnModel
from segscale.models.clv import ClvModel

MODELS: tuple[Model, ...] = (ChurnModel(), ClvModel())
