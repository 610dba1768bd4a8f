"""The code MLflow logs for segscale_clv (models from code): the pyfunc wrapper, whose fitted parameters come from
the model config logged beside this file. Loading it needs segscale installed."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.models import set_model

from segscale.config import ClvSettings
from segscale.models.bgnbd import ClvParams, predict_clv


class ClvModel(mlflow.pyfunc.PythonModel):
    """segscale_clv as an MLflow pyfunc: the four CLV inputs of customer_features in, CLV_COLUMNS out (NaN for
    prospects). The fitted parameters are in the model config, so the artifact holds no pickle; `params` may
    override the horizon and discount rate it was logged with."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = context.model_config
        self.params = ClvParams.from_config(config)
        self.settings = ClvSettings(horizon_days=config["horizon_days"],
                                    annual_discount_rate=config["annual_discount_rate"],
                                    time_unit_days=self.params.time_unit_days)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        settings = self.settings.model_copy(update=params or {})
        return predict_clv(self.params, pd.DataFrame(model_input), settings)


set_model(ClvModel())
