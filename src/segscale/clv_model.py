"""The code MLflow logs for segscale_clv (models from code): the pyfunc wrapper, whose fitted parameters come from
the model config logged beside this file. Loading it needs segscale installed."""

from mlflow.models import set_model

from segscale.tracking import ClvModel

set_model(ClvModel())
