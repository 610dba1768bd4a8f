"""BG/NBD (purchase and dropout) and Gamma-Gamma (spend per purchase day): weighted maximum-likelihood fits on
histograms of distinct inputs, and vectorised predictions (definitions: docs/models.md). Pure numpy and scipy; the
Spark side (histograms, predictions on the executors) is `segscale.models.clv`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import differentiate, optimize
from scipy.special import betaln, digamma, expit, hyp1f1, hyp2f1
from scipy.stats import norm

from segscale.config import ClvSettings
from segscale.errors import ModelSkipped

HISTOGRAM_WEIGHT = "customers"
# What CLV scoring adds to customer_scores: the predictions, then their P10 / P90 band from parameter uncertainty.
CLV_BAND_COLUMNS = ("expected_purchases_p10", "expected_purchases_p90", "clv_p10", "clv_p90")
CLV_COLUMNS = ("p_alive", "expected_purchases", "expected_avg_spend", "clv", *CLV_BAND_COLUMNS)
BAND_Z = float(norm.ppf(0.9))  # the band's half-width in standard deviations of the log prediction
# What the models read from customer_features: x, t_x and T in days, mean spend per repeat purchase day.
INPUT_COLUMNS = ("bgnbd_frequency", "bgnbd_recency", "bgnbd_T", "bgnbd_monetary")
DISCOUNT_STEP_DAYS = 30  # future purchases are discounted month by month


# ---- the fits ----------------------------------------------------------------------------------------------------
# Each model is fitted in coordinates where the likelihood's flat limits are bounds the optimiser can reach, and no
# term cancels catastrophically near them (docs/models.md, "Fitting").
# BG/NBD: log r, log(r / alpha) (the mean purchase rate), logit(a / (a + b)) (the mean dropout probability) and
# log(a + b) (the concentration: at its upper bound every customer shares one dropout probability).
# Gamma-Gamma: log p, log(q - 1) and log(gamma / (q - 1)); q > 1 keeps the population's mean spend finite.
LARGE = 1e8  # upper bound of r, a + b, p and q: beyond it the population is homogeneous in that respect
GRADIENT_TOLERANCE = 1e-6  # largest projected gradient of the mean log-likelihood that counts as a maximum


@dataclass(frozen=True)
class Coordinate:
    """One fitting coordinate: its bounds and what a solution on each bound means."""

    name: str
    low: float
    high: float
    at_low: str
    at_high: str


BGNBD_COORDINATES = (
    Coordinate("log r", np.log(1e-4), np.log(LARGE), "r at its lower bound 1e-4 (purchase rates spread without limit)",
               "r at its upper bound 1e8: every customer buys at the same rate"),
    Coordinate("log(r / alpha)", np.log(1e-8), np.log(1e4), "the mean purchase rate at its lower bound",
               "the mean purchase rate at its upper bound"),
    Coordinate("logit(a / (a + b))", -30.0, 30.0, "the mean dropout probability at its lower bound (nobody drops out)",
               "the mean dropout probability at its upper bound (everyone drops out after a purchase)"),
    Coordinate("log(a + b)", np.log(1e-4), np.log(LARGE), "a + b at its lower bound 1e-4",
               "a + b at its upper bound 1e8: every customer shares one dropout probability"),
)


GAMMA_GAMMA_COORDINATES = (
    Coordinate("log p", np.log(1e-4), np.log(LARGE), "p at its lower bound 1e-4",
               "p at its upper bound 1e8: a customer's orders all cost the same"),
    Coordinate("log(q - 1)", np.log(1e-6), np.log(LARGE), "q at its lower bound 1 + 1e-6 (mean spend barely finite)",
               "q at its upper bound 1e8: every customer has the same mean spend"),
    Coordinate("log(gamma / (q - 1))", -30.0, 30.0, "gamma / (q - 1) at its lower bound",
               "gamma / (q - 1) at its upper bound"),
)


@dataclass(frozen=True)
class Fit:
    """Maximum-likelihood parameters with the diagnostics MLflow and the run summary record."""

    params: dict[str, float]
    standard_errors: dict[str, float | None]  # None where a parameter depends on a bound or the curvature is flat
    theta: tuple[float, ...]  # the solution in fitting coordinates
    # The Laplace approximation's covariance of theta (rows and columns of coordinates on a bound are zero: they do
    # not move); None when the curvature at the solution is not that of a maximum.
    covariance: tuple[tuple[float, ...], ...] | None
    log_likelihood: float  # summed over customers (weighted)
    customers: int
    histogram_rows: int
    iterations: int
    converged: bool
    message: str
    boundary: tuple[str, ...] = field(default=())  # what the bounds the solution sits on mean; () for an interior one


def _ladder(steps: np.ndarray, term: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """sum of term(j) over j < x for each x in `steps` (non-negative integers), through one cumulative sum."""
    top = int(steps.max()) if steps.size else 0
    cumulative = np.concatenate([[0.0], np.cumsum(term(np.arange(top, dtype=float)))])
    return cumulative[steps]


def bgnbd_params(theta: np.ndarray) -> dict[str, float]:
    """(r, alpha, a, b) at fitting coordinates `theta`."""
    r, mu, kappa = np.exp(theta[0]), expit(theta[2]), np.exp(theta[3])
    return {"r": float(r), "alpha": float(np.exp(theta[0] - theta[1])), "a": float(kappa * mu),
            "b": float(kappa * (1.0 - mu))}


def bgnbd_jacobian(theta: np.ndarray) -> np.ndarray:
    """d (r, alpha, a, b) / d theta."""
    r, alpha, a, b = bgnbd_params(theta).values()
    spread = a * b / (a + b)  # d a / d logit(mu) = kappa mu (1 - mu)
    return np.array([[r, 0.0, 0.0, 0.0], [alpha, -alpha, 0.0, 0.0], [0.0, 0.0, spread, a], [0.0, 0.0, -spread, b]])


def bgnbd_log_likelihood(theta: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weight: np.ndarray,
                         gradient: bool = False) -> float | tuple[float, np.ndarray]:
    """Weighted BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6) at fitting coordinates `theta`, and with
    `gradient` its gradient in those coordinates. The gamma and beta function ratios are sums over j < x, and
    every other term is a log1p, so the value stays exact as r or a + b grow towards their limits."""
    r, alpha, a, b = bgnbd_params(theta).values()
    steps = x.astype(np.int64)
    # log Gamma(r + x) / Gamma(r) + r log alpha - (r + x) log(alpha + T)
    rate = _ladder(steps, lambda j: np.log(r + j)) - x * np.log(alpha + T) - r * np.log1p(T / alpha)
    # log B(a, b + x) / B(a, b)
    dropout = _ladder(steps, lambda j: np.log1p(-a / (a + b + j)))
    # Repeat buyers may have dropped out right after their last purchase: the log-odds of that against being
    # alive at T.
    repeat = x > 0
    after_last = np.log1p((T - t_x) / (alpha + t_x))
    b_x = np.where(repeat, b + x - 1, 1.0)
    odds = np.where(repeat, np.log(a) - np.log(b_x) + (r + x) * after_last, -np.inf)
    value = float(np.sum(weight * (rate + dropout + np.logaddexp(0.0, odds))))
    if not gradient:
        return value
    dropped = np.where(repeat, expit(odds), 0.0)
    d_r = _ladder(steps, lambda j: 1.0 / (r + j)) - np.log1p(T / alpha) + dropped * after_last
    d_alpha = (-x / (alpha + T) + r * T / (alpha * (alpha + T))
               + dropped * (r + x) * (1.0 / (alpha + T) - 1.0 / (alpha + t_x)))
    d_a = -_ladder(steps, lambda j: 1.0 / (a + b + j)) + dropped / a
    d_b = _ladder(steps, lambda j: 1.0 / (b + j) - 1.0 / (a + b + j)) - dropped / b_x
    mu = a / (a + b)
    grad = np.array([np.sum(weight * (r * d_r + alpha * d_alpha)), np.sum(weight * -alpha * d_alpha),
                     np.sum(weight * mu * (1 - mu) * (a + b) * (d_a - d_b)), np.sum(weight * (a * d_a + b * d_b))])
    return value, grad


def gamma_gamma_params(theta: np.ndarray) -> dict[str, float]:
    """(p, q, gamma) at fitting coordinates `theta`."""
    q_minus_1 = np.exp(theta[1])
    return {"p": float(np.exp(theta[0])), "q": float(1.0 + q_minus_1), "gamma": float(np.exp(theta[2]) * q_minus_1)}


def gamma_gamma_jacobian(theta: np.ndarray) -> np.ndarray:
    """d (p, q, gamma) / d theta."""
    p, q, gamma = gamma_gamma_params(theta).values()
    return np.array([[p, 0.0, 0.0], [0.0, q - 1.0, 0.0], [0.0, gamma, gamma]])


def gamma_gamma_log_likelihood(theta: np.ndarray, x: np.ndarray, m: np.ndarray, weight: np.ndarray,
                               gradient: bool = False) -> float | tuple[float, np.ndarray]:
    """Weighted Gamma-Gamma log-likelihood of mean spend m over x repeat purchases (Fader & Hardie 2013, eq. 3) at
    fitting coordinates `theta`, and with `gradient` its gradient in those coordinates."""
    p, q, gamma = gamma_gamma_params(theta).values()
    px = p * x
    value_terms = (-betaln(px, q) - q * np.log1p(x * m / gamma) + (px - 1) * np.log(m) + px * np.log(x)
                   - px * np.log(gamma + x * m))
    value = float(np.sum(weight * value_terms))
    if not gradient:
        return value
    d_p = x * (digamma(px + q) - digamma(px) + np.log(x * m / (gamma + x * m)))
    d_q = digamma(px + q) - digamma(q) - np.log1p(x * m / gamma)
    d_gamma = (q * x * m / gamma - px) / (gamma + x * m)
    grad = np.array([np.sum(weight * p * d_p), np.sum(weight * ((q - 1) * d_q + gamma * d_gamma)),
                     np.sum(weight * gamma * d_gamma)])
    return value, grad


def _maximise(log_likelihood: Callable[..., float | tuple[float, np.ndarray]],
              to_params: Callable[[np.ndarray], dict[str, float]], jacobian: Callable[[np.ndarray], np.ndarray],
              coordinates: Sequence[Coordinate], start: np.ndarray, args: tuple, customers: int, rows: int,
              settings: ClvSettings) -> Fit:
    """Maximise the log-likelihood within the coordinates' bounds (L-BFGS-B with the analytic gradient), then
    read the standard errors off the curvature at the optimum."""
    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = log_likelihood(theta, *args, gradient=True)
        if not np.isfinite(value) or not np.all(np.isfinite(grad)):
            return np.inf, np.zeros_like(theta)
        return -value / customers, -grad / customers

    bounds = [(c.low, c.high) for c in coordinates]
    result = optimize.minimize(objective, np.clip(start, *np.array(bounds).T), jac=True, method="L-BFGS-B",
                               bounds=bounds, options={"maxiter": settings.max_iterations, "ftol": 1e-15,
                                                       "gtol": 1e-9, "maxcor": 20})
    theta = result.x
    on_low = np.isclose(theta, [c.low for c in coordinates], rtol=0, atol=1e-6)
    on_high = np.isclose(theta, [c.high for c in coordinates], rtol=0, atol=1e-6)
    boundary = tuple(c.at_low if low else c.at_high for c, low, high in zip(coordinates, on_low, on_high, strict=True)
                     if low or high)
    params = to_params(theta)
    covariance = _covariance(log_likelihood, theta, ~(on_low | on_high), args)
    log_likelihood_value = float(log_likelihood(theta, *args))
    # L-BFGS-B can stop "ABNORMAL" at the optimum, when its line search runs out of floating-point precision
    # there: a solution whose projected gradient (per customer) is negligible is converged whatever its message.
    gradient = objective(theta)[1]
    projected = np.where(on_low, np.minimum(gradient, 0), np.where(on_high, np.maximum(gradient, 0), gradient))
    stationary = bool(result.success) or float(np.max(np.abs(projected))) <= GRADIENT_TOLERANCE
    converged = stationary and np.isfinite(log_likelihood_value) and all(np.isfinite(list(params.values())))
    return Fit(params=params, standard_errors=_standard_errors(covariance, jacobian(theta), list(params)),
               theta=tuple(float(v) for v in theta),
               covariance=None if covariance is None else tuple(tuple(float(v) for v in row) for row in covariance),
               log_likelihood=log_likelihood_value, customers=customers, histogram_rows=rows,
               iterations=int(result.nit), converged=converged, message=str(result.message), boundary=boundary)


def _covariance(log_likelihood: Callable[..., float | tuple[float, np.ndarray]], theta: np.ndarray,
                free: np.ndarray, args: tuple) -> np.ndarray | None:
    """The asymptotic covariance of the fitting coordinates (Laplace approximation): the inverse of the observed
    information (the Jacobian of the analytic gradient, by scipy.differentiate) over the coordinates not on a bound;
    zero rows and columns for those on a bound. None when no coordinate is free or the curvature at the solution
    is not that of a maximum."""
    if not free.any():
        return None

    def free_gradient(free_theta: np.ndarray) -> np.ndarray:
        full = theta.copy()
        full[free] = free_theta
        return log_likelihood(full, *args, gradient=True)[1][free]

    with np.errstate(all="ignore"):
        information = -differentiate.jacobian(_vectorised(free_gradient), theta[free], initial_step=1e-3).df
        information = (information + information.T) / 2
        if not np.all(np.isfinite(information)) or np.any(np.linalg.eigvalsh(information) <= 0):
            return None
        covariance = np.zeros((len(theta), len(theta)))
        covariance[np.ix_(free, free)] = np.linalg.inv(information)
    return covariance


def _standard_errors(covariance: np.ndarray | None, jacobian: np.ndarray, names: Sequence[str]
                     ) -> dict[str, float | None]:
    """Asymptotic standard errors of the parameters, carried from the coordinates' covariance by the delta method
    through `jacobian` (d params / d theta). None for a parameter that moves with a coordinate on a bound, and for
    all of them without a covariance."""
    if covariance is None:
        return dict.fromkeys(names)
    bound = np.diag(covariance) == 0
    variances = np.einsum("ij,jk,ik->i", jacobian, covariance, jacobian)
    moves_with_bound = np.any(jacobian[:, bound] != 0, axis=1)
    return {name: float(np.sqrt(v)) if v > 0 and not bounded else None
            for name, v, bounded in zip(names, variances, moves_with_bound, strict=True)}


def _vectorised(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """`fn` of one point, evaluated at many points along the trailing axes (what scipy.differentiate passes)."""
    def many(points: np.ndarray) -> np.ndarray:
        flat = points.reshape(points.shape[0], -1)
        out = np.stack([fn(flat[:, k]) for k in range(flat.shape[1])], axis=-1)
        return out.reshape((out.shape[0], *points.shape[1:]))
    return many


def fit_bgnbd(histogram: pd.DataFrame, settings: ClvSettings) -> Fit:
    """BG/NBD by maximum likelihood on the histogram, with time in units of `clv.time_unit_days` days.
    ModelSkipped when the base cannot support the model (too few repeat buyers) or the fit does not converge."""
    weight = histogram[HISTOGRAM_WEIGHT].to_numpy(dtype=float)
    customers = int(weight.sum())
    repeat_buyers = int(weight[histogram["x"].to_numpy() > 0].sum())
    if repeat_buyers < settings.min_repeat_buyers:
        raise ModelSkipped("clv", f"BG/NBD needs at least clv.min_repeat_buyers = {settings.min_repeat_buyers} "
                                  f"buyers who bought on a second day to tell repeat purchasing from dropout; this "
                                  f"base has {repeat_buyers:,} of {customers:,} buyers")
    unit = float(settings.time_unit_days)
    x = histogram["x"].to_numpy(dtype=float)
    t_x, T = histogram["t_x"].to_numpy(dtype=float) / unit, histogram["T"].to_numpy(dtype=float) / unit
    # Start from a mean rate of repeat purchases per unit of time, r = 1 and a middling dropout probability.
    rate = max(float(np.sum(weight * x) / max(np.sum(weight * T), 1e-9)), 1e-6)
    start = np.array([0.0, np.log(rate), -1.0, 0.0])
    fit = _maximise(bgnbd_log_likelihood, bgnbd_params, bgnbd_jacobian, BGNBD_COORDINATES, start,
                    (x, t_x, T, weight), customers, len(histogram), settings)
    return _check(fit, "BG/NBD", settings)


def fit_gamma_gamma(histogram: pd.DataFrame, settings: ClvSettings) -> Fit:
    """Gamma-Gamma by maximum likelihood on the repeat buyers' histogram. ModelSkipped when there are too few
    repeat buyers with positive spend or the fit does not converge."""
    weight = histogram[HISTOGRAM_WEIGHT].to_numpy(dtype=float)
    customers = int(weight.sum())
    if customers < settings.min_repeat_buyers:
        raise ModelSkipped("clv", f"Gamma-Gamma needs at least clv.min_repeat_buyers = {settings.min_repeat_buyers} "
                                  f"repeat buyers with positive spend on their repeat purchase days; this base has "
                                  f"{customers:,}")
    x, m = histogram["x"].to_numpy(dtype=float), histogram["m"].to_numpy(dtype=float)
    mean_spend = float(np.sum(weight * m) / customers)
    start = np.array([0.0, np.log(2.0), np.log(mean_spend)])  # p = 1, q = 3, gamma / (q - 1) = the mean spend
    fit = _maximise(gamma_gamma_log_likelihood, gamma_gamma_params, gamma_gamma_jacobian, GAMMA_GAMMA_COORDINATES,
                    start, (x, m, weight), customers, len(histogram), settings)
    return _check(fit, "Gamma-Gamma", settings)


def _check(fit: Fit, model: str, settings: ClvSettings) -> Fit:
    if not fit.converged:
        raise ModelSkipped("clv", f"the {model} fit did not converge within clv.max_iterations = "
                                  f"{settings.max_iterations} ({fit.message}; parameters {fit.params}, "
                                  f"{fit.iterations} iterations)")
    return fit


# ---- predictions (vectorised numpy; run on the executors in Arrow batches) --------------------------------------
def _log_dropout_odds(bgnbd: dict[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """log(a / (b + x - 1)) + (r + x) log((alpha + T) / (alpha + t_x)) for repeat buyers, -inf for the others."""
    r, alpha, a, b = (bgnbd[k] for k in ("r", "alpha", "a", "b"))
    repeat = x > 0
    b_x = np.where(repeat, b + x - 1, 1.0)
    return np.where(repeat, np.log(a) - np.log(b_x) + (r + x) * np.log1p((T - t_x) / (alpha + t_x)), -np.inf)


def p_alive(bgnbd: dict[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """P(the customer is still active at T | x, t_x, T) (Fader, Hardie & Lee 2005, eq. 11)."""
    return expit(-_log_dropout_odds(bgnbd, x, t_x, T))


def _on_upper_bound(value: float) -> bool:
    return value >= LARGE * (1 - 1e-9)


def expected_purchases(bgnbd: dict[str, float], t: float | np.ndarray, x: np.ndarray, t_x: np.ndarray,
                       T: np.ndarray) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T] (Fader, Hardie & Lee 2005, eq. 10). On a boundary solution the
    hypergeometric function's limit is used: with a + b on its bound every customer drops out with the same
    probability a / (a + b); with r on its bound every customer buys at the same rate (the confluent limit)."""
    r, alpha, a, b = (bgnbd[k] for k in ("r", "alpha", "a", "b"))
    t = np.asarray(t, dtype=float)
    if _on_upper_bound(a + b):
        dropout = a / (a + b)
        if_alive = -np.expm1(-(r + x) * np.log1p(dropout * t / (alpha + T))) / dropout
    elif _on_upper_bound(r):
        if_alive = (a + b + x - 1) / (a - 1) * (1 - hyp1f1(a - 1, a + b + x - 1, -(r + x) * t / (alpha + T)))
    else:
        ratio = (alpha + T) / (alpha + T + t)
        hyper = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        if_alive = (a + b + x - 1) / (a - 1) * (1 - ratio ** (r + x) * hyper)
    return if_alive * p_alive(bgnbd, x, t_x, T)


def expected_avg_spend(gamma_gamma: dict[str, float], x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """E[spend per purchase | x repeat purchases of mean m] (Fader & Hardie 2013, eq. 5); the population mean
    p * gamma / (q - 1) for customers without a repeat purchase."""
    p, q, gamma = (gamma_gamma[k] for k in ("p", "q", "gamma"))
    repeat = (x > 0) & np.isfinite(m) & (m > 0)
    spend = np.full_like(x, p * gamma / (q - 1), dtype=float)
    spend[repeat] = p * (gamma + x[repeat] * m[repeat]) / (p * x[repeat] + q - 1)
    return spend


@dataclass(frozen=True)
class Laplace:
    """A fit's parameter uncertainty: its solution in fitting coordinates and their covariance (Fit.theta,
    Fit.covariance)."""

    theta: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, fit: Fit) -> Laplace | None:
        return None if fit.covariance is None else cls(fit.theta, fit.covariance)

    def sigma_points(self, coordinates: Sequence[Coordinate]) -> list[tuple[np.ndarray, np.ndarray]]:
        """theta ± each column of the covariance's Cholesky factor (one standard deviation along each of its
        principal directions; coordinates on a bound stay put), clipped to the coordinates' bounds."""
        theta, covariance = np.asarray(self.theta), np.asarray(self.covariance)
        free = np.diag(covariance) > 0
        factor = np.linalg.cholesky(covariance[np.ix_(free, free)])
        low, high = np.array([(c.low, c.high) for c in coordinates]).T
        points = []
        for column in factor.T:
            step = np.zeros_like(theta)
            step[free] = column
            points.append((np.clip(theta + step, low, high), np.clip(theta - step, low, high)))
        return points


def log_spread(laplace: Laplace | None, coordinates: Sequence[Coordinate],
               predict: Callable[[np.ndarray], np.ndarray], rows: int) -> np.ndarray:
    """The standard deviation of log predict(theta) under the fit's parameter uncertainty, by the delta method
    with central differences over one standard deviation along each principal direction (sigma points); NaN
    without a covariance."""
    if laplace is None:
        return np.full(rows, np.nan)
    variance = np.zeros(rows)
    for plus, minus in laplace.sigma_points(coordinates):
        variance += ((np.log(predict(plus)) - np.log(predict(minus))) / 2) ** 2
    return np.sqrt(variance)


def lifetime_value(params: ClvParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, m: np.ndarray,
                   settings: ClvSettings) -> pd.DataFrame:
    """p_alive, expected_purchases and expected_avg_spend over clv.horizon_days, clv: the expected spend of each
    month of the horizon, discounted at clv.annual_discount_rate, and the P10 / P90 band of expected purchases and
    CLV from the fits' parameter uncertainty (docs/models.md, "Intervals"). Time inputs in days."""
    unit = float(settings.time_unit_days)
    x, t_x, T, m = (np.asarray(v, dtype=float) for v in (x, t_x, T, m))
    t_x, T = t_x / unit, T / unit
    spend = expected_avg_spend(params.gamma_gamma, x, m)
    ends = np.append(np.arange(DISCOUNT_STEP_DAYS, settings.horizon_days, DISCOUNT_STEP_DAYS), settings.horizon_days)
    cumulative = np.stack([expected_purchases(params.bgnbd, end / unit, x, t_x, T) for end in ends])
    per_step = np.diff(cumulative, axis=0, prepend=0.0)
    discount = (1 + settings.annual_discount_rate) ** (-ends / 365.0)
    clv = spend * (discount[:, None] * per_step).sum(axis=0)
    # The band's relative width: that of the horizon's expected purchases (BG/NBD) and of the expected spend per
    # purchase (Gamma-Gamma), two independent fits. Discounting leaves the first's relative sensitivity to the
    # parameters all but unchanged (the monthly factors differ by under a tenth), so it is not recomputed per month.
    horizon = settings.horizon_days / unit
    purchases_spread = log_spread(params.bgnbd_laplace, BGNBD_COORDINATES,
                                  lambda theta: expected_purchases(bgnbd_params(theta), horizon, x, t_x, T), len(x))
    spend_spread = log_spread(params.gamma_gamma_laplace, GAMMA_GAMMA_COORDINATES,
                              lambda theta: expected_avg_spend(gamma_gamma_params(theta), x, m), len(x))
    clv_spread = np.hypot(purchases_spread, spend_spread)
    return pd.DataFrame({
        "p_alive": p_alive(params.bgnbd, x, t_x, T),
        "expected_purchases": cumulative[-1],
        "expected_avg_spend": spend,
        "clv": clv,
        "expected_purchases_p10": cumulative[-1] * np.exp(-BAND_Z * purchases_spread),
        "expected_purchases_p90": cumulative[-1] * np.exp(BAND_Z * purchases_spread),
        "clv_p10": clv * np.exp(-BAND_Z * clv_spread),
        "clv_p90": clv * np.exp(BAND_Z * clv_spread),
    })


@dataclass(frozen=True)
class ClvParams:
    """A fitted CLV model: both models' parameters, the time unit (days) they were fitted in, and their parameter
    uncertainty (None for a fit without one, and for versions registered before segscale recorded it)."""

    bgnbd: dict[str, float]
    gamma_gamma: dict[str, float]
    time_unit_days: int
    bgnbd_laplace: Laplace | None = None
    gamma_gamma_laplace: Laplace | None = None

    def as_config(self) -> dict[str, object]:
        laplace = {name: {"theta": list(fit.theta), "covariance": [list(row) for row in fit.covariance]}
                   for name, fit in (("bgnbd", self.bgnbd_laplace), ("gamma_gamma", self.gamma_gamma_laplace))
                   if fit is not None}
        return {"bgnbd": dict(self.bgnbd), "gamma_gamma": dict(self.gamma_gamma),
                "time_unit_days": self.time_unit_days, "laplace": laplace}

    @classmethod
    def from_config(cls, config: dict) -> ClvParams:
        laplace = {name: Laplace(tuple(map(float, fit["theta"])),
                                 tuple(tuple(map(float, row)) for row in fit["covariance"]))
                   for name, fit in config.get("laplace", {}).items()}
        return cls({k: float(v) for k, v in config["bgnbd"].items()},
                   {k: float(v) for k, v in config["gamma_gamma"].items()}, int(config["time_unit_days"]),
                   laplace.get("bgnbd"), laplace.get("gamma_gamma"))


def predict_clv(params: ClvParams, inputs: pd.DataFrame, settings: ClvSettings) -> pd.DataFrame:
    """CLV_COLUMNS for rows of the four inputs (INPUT_COLUMNS, days and money), with settings' horizon and
    discount rate: NaN for prospects (no frequency) and wherever a value is not a finite number."""
    x, t_x, T, m = (pd.to_numeric(inputs[c], errors="coerce").to_numpy(float, na_value=np.nan)
                    for c in INPUT_COLUMNS)
    known = np.isfinite(x) & np.isfinite(t_x) & np.isfinite(T)
    with np.errstate(all="ignore"):
        predicted = lifetime_value(params, np.where(known, x, 0.0),
                                   np.where(known, t_x, 0.0), np.where(known, T, 0.0), m,
                                   settings.model_copy(update={"time_unit_days": params.time_unit_days}))
    return predicted.where(known[:, None] & np.isfinite(predicted.to_numpy()))


