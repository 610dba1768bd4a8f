"""The Python daemon of the embedded session's executors (`spark.python.daemon.module`, set by session.py).

Spark starts a Python daemon beside each executor and forks a worker from it for the tasks that run Python (the
churn and CLV predictions, the delta-rs writer). A worker idle for a minute is stopped, and the next task forks a
new one, which imports what its function needs: MLflow, scikit-learn, SciPy, pandas, pyarrow and deltalake, about
five CPU-seconds per worker. A run stays away from Python that long whenever the driver trains a model, so it
forks its workers again and again. This daemon imports them once, before it forks, and every worker starts with
them loaded (pages shared with the daemon until written). Otherwise it is PySpark's own daemon.

On a cluster it works only where segscale is installed in the executors' Python (a shipped virtualenv), not when
segscale arrives with --py-files: the daemon starts before the task's files are on its path (docs/scaling.md).
"""

# What the executors' Python code imports. The threads some of it starts at import (OpenBLAS's pool, jemalloc's
# background threads) are fork-aware, as Python's fork-based multiprocessing on Linux has always needed them to be:
# a forked worker gets the libraries without those threads, which start again when it needs them.
import mlflow.pyfunc  # noqa: F401  (the churn prediction: MLflow's UDF and the scikit-learn model it loads)
import pyspark.worker  # noqa: F401  (the worker's own module, with pandas and pyarrow)
import sklearn.calibration  # noqa: F401
import sklearn.ensemble  # noqa: F401
from pyspark import daemon

import segscale.io.delta.rs_writer  # noqa: F401  (the delta-rs writer's tasks: deltalake)
import segscale.models.bgnbd  # noqa: F401  (the CLV prediction: SciPy)

if __name__ == "__main__":
    daemon.manager()
