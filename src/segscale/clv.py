"""Customer lifetime value: BG/NBD (purchase and dropout) and Gamma-Gamma (spend per order) fitted on the whole
base by maximum likelihood (definitions: docs/models.md).

The fit never sees customers one by one: Spark aggregates the model inputs into a weighted histogram of distinct
(binned) input tuples, only the histogram reaches the driver, and scipy maximises the likelihood with the counts
as weights. The histogram's size is bounded by the binning, not by the number of customers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from scipy import optimize
from scipy.special import betaln, gammaln, hyp2f1

from segscale.config import ClvSettings
from segscale.errors import InputError

HISTOGRAM_WEIGHT = "customers"
# What CLV scoring adds to customer_scores.
CLV_COLUMNS = ("p_alive", "expected_purchases", "expected_avg_spend", "clv")
# What the models read from customer_features: x, t_x and T in days, mean spend per repeat purchase day.
INPUT_COLUMNS = ("bgnbd_frequency", "bgnbd_recency", "bgnbd_T", "bgnbd_monetary")
DISCOUNT_STEP_DAYS = 30  # future purchases are discounted month by month


def binned(days: Column, bin_days: int) -> Column:
    """Days rounded to the nearest multiple of `bin_days` (monotone, so t_x <= T survives binning)."""
    if bin_days == 1:
        return days.cast("double")
    return (F.floor(days / F.lit(bin_days) + F.lit(0.5)) * F.lit(bin_days)).cast("double")


def bgnbd_histogram(features_df: DataFrame, settings: ClvSettings) -> pd.DataFrame:
    """Buyers' (x, t_x, T) in days, binned to `clv.bin_days`, with the number of customers at each triple."""
    buyers_df = features_df.where(F.col("bgnbd_frequency").isNotNull() & F.col("bgnbd_T").isNotNull())
    histogram_df = buyers_df.groupBy(
        F.col("bgnbd_frequency").cast("double").alias("x"),
        binned(F.col("bgnbd_recency"), settings.bin_days).alias("t_x"),
        binned(F.col("bgnbd_T"), settings.bin_days).alias("T"),
    ).agg(F.count(F.lit(1)).alias(HISTOGRAM_WEIGHT))
    return histogram_df.toPandas()  # small: distinct binned triples


def spend_histogram(features_df: DataFrame, settings: ClvSettings) -> pd.DataFrame:
    """Repeat buyers' (x, mean spend per repeat purchase day) with spend binned on a log grid of relative width
    `clv.spend_bin_relative` (0: exact), and the number of customers at each pair. Spend must be positive."""
    repeat_df = features_df.where((F.col("bgnbd_frequency") > 0) & (F.col("bgnbd_monetary") > 0))
    spend = F.col("bgnbd_monetary").cast("double")
    if settings.spend_bin_relative > 0:
        width = F.log1p(F.lit(settings.spend_bin_relative))
        spend = F.exp(F.round(F.log(spend) / width) * width)
    histogram_df = repeat_df.groupBy(F.col("bgnbd_frequency").cast("double").alias("x"), spend.alias("m")).agg(
        F.count(F.lit(1)).alias(HISTOGRAM_WEIGHT))
    return histogram_df.toPandas()  # small: distinct binned pairs


@dataclass(frozen=True)
class Fit:
    """Maximum-likelihood parameters with the diagnostics MLflow records."""

    params: dict[str, float]
    log_likelihood: float  # summed over customers (weighted)
    customers: int
    histogram_rows: int
    iterations: int
    converged: bool
    message: str


def bgnbd_log_likelihood(log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
                         weight: np.ndarray) -> float:
    """Weighted BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6) at exp(log_params) = (r, alpha, a, b)."""
    r, alpha, a, b = np.exp(log_params)
    common = (gammaln(r + x) - gammaln(r) + r * np.log(alpha) + betaln(a, b + x) - betaln(a, b))
    alive = -(r + x) * np.log(alpha + T)
    # The second term exists only for repeat buyers: they may have dropped out right after their last purchase.
    repeat = x > 0
    dropped = np.full_like(alive, -np.inf)
    dropped[repeat] = (np.log(a) - np.log(b + x[repeat] - 1) - (r + x[repeat]) * np.log(alpha + t_x[repeat]))
    return float(np.sum(weight * (common + np.logaddexp(alive, dropped))))


def gamma_gamma_log_likelihood(log_params: np.ndarray, x: np.ndarray, m: np.ndarray, weight: np.ndarray) -> float:
    """Weighted Gamma-Gamma log-likelihood of mean spend m over x repeat purchases (Fader & Hardie 2013, eq. 3)
    at exp(log_params) = (p, q, gamma)."""
    p, q, gamma = np.exp(log_params)
    px = p * x
    terms = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(gamma) + (px - 1) * np.log(m)
             + px * np.log(x) - (px + q) * np.log(gamma + x * m))
    return float(np.sum(weight * terms))


def _maximise(log_likelihood, names: tuple[str, ...], args: tuple, customers: int, rows: int,
              settings: ClvSettings) -> Fit:
    """Maximise over log-parameters (so every parameter stays positive) from 1.0 each."""
    def objective(log_params: np.ndarray) -> float:
        value = log_likelihood(log_params, *args)
        return -value / customers if np.isfinite(value) else np.inf

    result = optimize.minimize(objective, np.zeros(len(names)), method="Nelder-Mead",
                               options={"maxiter": settings.max_iterations, "xatol": 1e-10, "fatol": 1e-12,
                                        "adaptive": True})
    params = dict(zip(names, (float(v) for v in np.exp(result.x)), strict=True))
    return Fit(params=params, log_likelihood=-float(result.fun) * customers, customers=customers,
               histogram_rows=rows, iterations=int(result.nit), converged=bool(result.success),
               message=str(result.message))


def fit_bgnbd(histogram: pd.DataFrame, settings: ClvSettings) -> Fit:
    """BG/NBD by maximum likelihood on the histogram, with time in units of `clv.time_unit_days` days."""
    weight = histogram[HISTOGRAM_WEIGHT].to_numpy(dtype=float)
    customers = int(weight.sum())
    if customers == 0:
        raise InputError("BG/NBD cannot be fitted: the snapshot has no buyers")
    if not (histogram["x"] > 0).any():
        raise InputError(f"BG/NBD cannot be fitted: none of the {customers:,} buyers has bought on a second day, "
                         f"so repeat purchasing and dropout cannot be told apart; use more history")
    unit = float(settings.time_unit_days)
    args = (histogram["x"].to_numpy(dtype=float), histogram["t_x"].to_numpy(dtype=float) / unit,
            histogram["T"].to_numpy(dtype=float) / unit, weight)
    return _check(_maximise(bgnbd_log_likelihood, ("r", "alpha", "a", "b"), args, customers, len(histogram),
                            settings), "BG/NBD")


def fit_gamma_gamma(histogram: pd.DataFrame, settings: ClvSettings) -> Fit:
    """Gamma-Gamma by maximum likelihood on the repeat buyers' histogram."""
    weight = histogram[HISTOGRAM_WEIGHT].to_numpy(dtype=float)
    customers = int(weight.sum())
    if customers < 2:
        raise InputError(f"Gamma-Gamma cannot be fitted: it needs at least 2 repeat buyers with positive spend, "
                         f"found {customers}")
    args = (histogram["x"].to_numpy(dtype=float), histogram["m"].to_numpy(dtype=float), weight)
    return _check(_maximise(gamma_gamma_log_likelihood, ("p", "q", "gamma"), args, customers, len(histogram),
                            settings), "Gamma-Gamma")


def _check(fit: Fit, model: str) -> Fit:
    values = np.array(list(fit.params.values()))
    if not fit.converged or not np.all(np.isfinite(values)) or not np.isfinite(fit.log_likelihood):
        raise InputError(f"{model} did not converge ({fit.message}; parameters {fit.params}, "
                         f"{fit.iterations} iterations); raise clv.max_iterations or check the inputs")
    return fit


# ---- predictions (vectorised numpy; run on the executors in Arrow batches) --------------------------------------
def _dropout_odds(bgnbd: dict[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x) for repeat buyers, 0 for the others."""
    r, alpha, a, b = (bgnbd[k] for k in ("r", "alpha", "a", "b"))
    repeat = x > 0
    odds = np.zeros_like(x, dtype=float)
    odds[repeat] = np.exp(np.log(a) - np.log(b + x[repeat] - 1)
                          + (r + x[repeat]) * (np.log(alpha + T[repeat]) - np.log(alpha + t_x[repeat])))
    return odds


def p_alive(bgnbd: dict[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """P(the customer is still active at T | x, t_x, T) (Fader, Hardie & Lee 2005, eq. 11)."""
    return 1.0 / (1.0 + _dropout_odds(bgnbd, x, t_x, T))


def expected_purchases(bgnbd: dict[str, float], t: float | np.ndarray, x: np.ndarray, t_x: np.ndarray,
                       T: np.ndarray) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T] (Fader, Hardie & Lee 2005, eq. 10)."""
    r, alpha, a, b = (bgnbd[k] for k in ("r", "alpha", "a", "b"))
    t = np.asarray(t, dtype=float)
    ratio = (alpha + T) / (alpha + T + t)
    hyper = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
    first = (a + b + x - 1) / (a - 1) * (1 - ratio ** (r + x) * hyper)
    return first / (1.0 + _dropout_odds(bgnbd, x, t_x, T))


def expected_avg_spend(gamma_gamma: dict[str, float], x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """E[spend per purchase | x repeat purchases of mean m] (Fader & Hardie 2013, eq. 5); the population mean
    p * gamma / (q - 1) for customers without a repeat purchase."""
    p, q, gamma = (gamma_gamma[k] for k in ("p", "q", "gamma"))
    repeat = (x > 0) & np.isfinite(m) & (m > 0)
    spend = np.full_like(x, p * gamma / (q - 1), dtype=float)
    spend[repeat] = p * (gamma + x[repeat] * m[repeat]) / (p * x[repeat] + q - 1)
    return spend


def lifetime_value(bgnbd: dict[str, float], gamma_gamma: dict[str, float], x: np.ndarray, t_x: np.ndarray,
                   T: np.ndarray, m: np.ndarray, settings: ClvSettings) -> pd.DataFrame:
    """p_alive, expected_purchases and expected_avg_spend over clv.horizon_days, and clv: the expected spend of
    each month of the horizon, discounted at clv.annual_discount_rate. Time inputs in days."""
    unit = float(settings.time_unit_days)
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    t_x, T = t_x / unit, T / unit
    spend = expected_avg_spend(gamma_gamma, x, np.asarray(m, dtype=float))
    ends = np.append(np.arange(DISCOUNT_STEP_DAYS, settings.horizon_days, DISCOUNT_STEP_DAYS), settings.horizon_days)
    cumulative = np.stack([expected_purchases(bgnbd, end / unit, x, t_x, T) for end in ends])
    per_step = np.diff(cumulative, axis=0, prepend=0.0)
    discount = (1 + settings.annual_discount_rate) ** (-ends / 365.0)
    return pd.DataFrame({
        "p_alive": p_alive(bgnbd, x, t_x, T),
        "expected_purchases": cumulative[-1],
        "expected_avg_spend": spend,
        "clv": spend * (discount[:, None] * per_step).sum(axis=0),
    })


@dataclass(frozen=True)
class ClvParams:
    """A fitted CLV model: both models' parameters and the time unit (days) they were fitted in."""

    bgnbd: dict[str, float]
    gamma_gamma: dict[str, float]
    time_unit_days: int

    def as_config(self) -> dict[str, object]:
        return {"bgnbd": dict(self.bgnbd), "gamma_gamma": dict(self.gamma_gamma),
                "time_unit_days": self.time_unit_days}

    @classmethod
    def from_config(cls, config: dict) -> ClvParams:
        return cls({k: float(v) for k, v in config["bgnbd"].items()},
                   {k: float(v) for k, v in config["gamma_gamma"].items()}, int(config["time_unit_days"]))


def predict_clv(params: ClvParams, inputs: pd.DataFrame, settings: ClvSettings) -> pd.DataFrame:
    """CLV_COLUMNS for rows of the four inputs (INPUT_COLUMNS, days and money), with settings' horizon and
    discount rate: NaN for prospects (no frequency) and wherever a value is not a finite number."""
    x, t_x, T, m = (pd.to_numeric(inputs[c], errors="coerce").to_numpy(float, na_value=np.nan)
                    for c in INPUT_COLUMNS)
    known = np.isfinite(x) & np.isfinite(t_x) & np.isfinite(T)
    with np.errstate(all="ignore"):
        predicted = lifetime_value(params.bgnbd, params.gamma_gamma, np.where(known, x, 0.0),
                                   np.where(known, t_x, 0.0), np.where(known, T, 0.0), m,
                                   settings.model_copy(update={"time_unit_days": params.time_unit_days}))
    return predicted.where(known[:, None] & np.isfinite(predicted.to_numpy()))


def with_clv(features_df: DataFrame, params: ClvParams | None, settings: ClvSettings,
             model_version: int | None = None) -> DataFrame:
    """Adds CLV_COLUMNS, predicted on the executors in Arrow batches (null for prospects and for any value that
    is not a finite number); all null without a model (clv.enabled: false)."""
    if params is None:
        return features_df.select("*", *[F.lit(None).cast("double").alias(c) for c in CLV_COLUMNS],
                                  F.lit(None).cast("int").alias("clv_model_version"))
    schema = ", ".join(f"{name} double" for name in CLV_COLUMNS)

    @F.pandas_udf(schema)
    def predict(x: pd.Series, t_x: pd.Series, T: pd.Series, m: pd.Series) -> pd.DataFrame:
        return predict_clv(params, pd.DataFrame(dict(zip(INPUT_COLUMNS, (x, t_x, T, m), strict=True))), settings)

    inputs = [F.col(c).cast("double") for c in INPUT_COLUMNS]
    predicted_df = features_df.select("*", predict(*inputs).alias("_clv"))
    # Arrow brings NaN back as NaN, not null: the table holds null.
    return predicted_df.select(*features_df.columns, *[
        F.when(~F.isnan(F.col("_clv")[name]), F.col("_clv")[name]).alias(name) for name in CLV_COLUMNS],
        F.lit(model_version).cast("int").alias("clv_model_version"))
