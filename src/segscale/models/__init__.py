"""The models segscale fits and scores with, behind one small interface.

A model module (`churn`, `clv`) defines one class with `train` (fit on the data of a snapshot, log it to MLflow,
register a version and decide its champion), `load` (a registered version, ready to score on the executors) and
`predict` (the columns it adds to customer_scores, null without a model). The pipeline knows models only through
this interface and the `MODELS` tuple of `segscale.models.all`, so a third model is one new module and one entry
there.

This package imports nothing itself: the executors' Python workers import `segscale.models.bgnbd` to predict CLV,
and must not pay for MLflow and scikit-learn (seconds per worker) to do it.
"""
