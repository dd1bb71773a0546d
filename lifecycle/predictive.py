"""Buy-till-you-die models: BG/NBD for purchase counts and P(alive), Gamma-Gamma for spend.

Implemented here with scipy because the maintained-looking libraries either are unmaintained
(``lifetimes`` imports ``pkg_resources`` and predates pandas 3) or pull in a probabilistic
programming stack far heavier than four closed-form log-likelihoods.

* BG/NBD: Fader, Hardie & Lee (2005), "Counting your customers the easy way: an alternative to
  the Pareto/NBD model", Marketing Science 24(2), equations (6), (10) and (13).
* Gamma-Gamma: Fader & Hardie (2013), "The Gamma-Gamma model of monetary value", equations (1)-(5).

Inputs per customer are the usual summary: ``frequency`` x = repeat purchases (distinct purchase
days minus one), ``recency`` t_x = time from the first to the last purchase, ``T`` = time from the
first purchase to the end of the observation, and for Gamma-Gamma the mean value of the repeat
purchases. Any time unit works as long as it is the same for all three (Rapport uses days).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special


class FitError(ValueError):
    """The model could not be fitted to this data (too little of it, or no convergence)."""


def _fit(negative_log_likelihood, start: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Minimise over log-parameters (keeps them positive); return the parameters or raise FitError."""
    with np.errstate(all="ignore"):
        result = optimize.minimize(negative_log_likelihood, start, method="Nelder-Mead",
                                   options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000, "maxfev": 8000})
        if result.success:
            # Polish the simplex result with a gradient method: Nelder-Mead stalls on flat ridges.
            polished = optimize.minimize(negative_log_likelihood, result.x, method="L-BFGS-B")
            if polished.success and polished.fun <= result.fun:
                result = polished
    if not result.success or not np.all(np.isfinite(result.x)) or not np.isfinite(result.fun):
        raise FitError(f"the optimiser did not converge: {result.message}")
    params = np.exp(result.x)
    if np.any(params > 1e6) or np.any(params < 1e-6):
        raise FitError("the fitted parameters are degenerate (the data do not identify the model)")
    return dict(zip(names, (float(value) for value in params)))


# --- BG/NBD --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BetaGeometricNBD:
    """Fitted BG/NBD parameters: purchase rates ~ Gamma(r, alpha), dropout probability ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def probability_alive(self, frequency, recency, T) -> np.ndarray:
        """Return P(alive | x, t_x, T) per customer (eq. 13); exactly 1 for customers with no repeat purchase."""
        x, t_x, T = _arrays(frequency, recency, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_ratio = (
                np.log(a) - np.log(np.maximum(b + x - 1, 1e-12))
                + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
            )
            odds = np.where(x > 0, np.exp(np.minimum(log_ratio, 700)), 0.0)
        return 1.0 / (1.0 + odds)

    def expected_purchases(self, horizon: float, frequency, recency, T) -> np.ndarray:
        """Return the expected number of purchases in the next ``horizon`` time units per customer (eq. 10)."""
        x, t_x, T = _arrays(frequency, recency, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = horizon / (alpha + T + horizon)
            hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
            numerator = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + horizon)) ** (r + x) * hyp)
            expected = numerator * self.probability_alive(x, t_x, T)
        # hyp2f1 loses precision for very frequent buyers; their expectation is then the rate run forward.
        fallback = (r + x) / (alpha + T) * horizon * self.probability_alive(x, t_x, T)
        return np.where(np.isfinite(expected) & (expected >= 0), expected, fallback)


def bgnbd_log_likelihood(params, frequency, recency, T) -> np.ndarray:
    """Return each customer's BG/NBD log-likelihood (eq. 6) under ``params`` = (r, alpha, a, b)."""
    r, alpha, a, b = params
    x, t_x, T = _arrays(frequency, recency, T)
    common = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    no_dropout = special.betaln(a, b + x) - special.betaln(a, b) - (r + x) * np.log(alpha + T)
    with np.errstate(invalid="ignore", divide="ignore"):
        dropout_after_last = np.where(
            x > 0,
            special.betaln(a + 1, np.maximum(b + x - 1, 1e-12)) - special.betaln(a, b)
            - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return common + np.logaddexp(no_dropout, dropout_after_last)


def fit_bgnbd(frequency, recency, T) -> BetaGeometricNBD:
    """Return BG/NBD parameters fitted by maximum likelihood; raise FitError when that fails."""
    x, t_x, T = _arrays(frequency, recency, T)
    if len(x) == 0 or not np.any(x > 0):
        raise FitError("no repeat purchases to learn from")
    if np.any(t_x > T + 1e-9) or np.any(x < 0):
        raise FitError("recency must lie between 0 and T, and frequency must not be negative")
    scale = float(np.mean(T)) or 1.0  # start near the right order of magnitude for alpha in any time unit

    def negative(log_params):
        value = -np.sum(bgnbd_log_likelihood(np.exp(log_params), x, t_x, T)) / len(x)
        return value if np.isfinite(value) else 1e12

    params = _fit(negative, np.log([0.5, scale / 10, 1.0, 1.0]), ("r", "alpha", "a", "b"))
    log_likelihood = float(np.sum(bgnbd_log_likelihood(tuple(params.values()), x, t_x, T)))
    return BetaGeometricNBD(**params, log_likelihood=log_likelihood)


# --- Gamma-Gamma ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GammaGamma:
    """Fitted Gamma-Gamma parameters: spend per purchase ~ Gamma(p, nu), nu ~ Gamma(q, gamma)."""

    p: float
    q: float
    gamma: float
    log_likelihood: float = float("nan")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def population_mean_spend(self) -> float:
        """Return E[M], the expected spend per purchase of a customer we know nothing about."""
        return self.p * self.gamma / (self.q - 1)

    def expected_spend(self, frequency, monetary_value) -> np.ndarray:
        """Return E[M | x, m_x] per customer (eq. 5); customers without repeat purchases get the population mean."""
        x = np.asarray(frequency, dtype=float)
        m = np.nan_to_num(np.asarray(monetary_value, dtype=float))
        p, q, gamma = self.p, self.q, self.gamma
        conditional = (gamma + x * m) * p / (p * x + q - 1)
        return np.where(x > 0, conditional, self.population_mean_spend)


def gamma_gamma_log_likelihood(params, frequency, monetary_value) -> np.ndarray:
    """Return each repeat customer's Gamma-Gamma log-likelihood of their mean spend under (p, q, gamma)."""
    p, q, gamma = params
    x = np.asarray(frequency, dtype=float)
    m = np.asarray(monetary_value, dtype=float)
    return (
        special.gammaln(p * x + q) - special.gammaln(p * x) - special.gammaln(q)
        + q * np.log(gamma) + (p * x - 1) * np.log(m) + p * x * np.log(x) - (p * x + q) * np.log(gamma + m * x)
    )


def fit_gamma_gamma(frequency, monetary_value) -> GammaGamma:
    """Return Gamma-Gamma parameters fitted on repeat customers with positive spend; raise FitError when that fails."""
    x = np.asarray(frequency, dtype=float)
    m = np.asarray(monetary_value, dtype=float)
    keep = (x > 0) & np.isfinite(m) & (m > 0)
    x, m = x[keep], m[keep]
    if len(x) < 2 or np.allclose(m, m[0]):
        raise FitError("too few repeat customers with varying spend")

    def negative(log_params):
        value = -np.sum(gamma_gamma_log_likelihood(np.exp(log_params), x, m)) / len(x)
        return value if np.isfinite(value) else 1e12

    params = _fit(negative, np.log([1.0, 2.0, float(np.mean(m))]), ("p", "q", "gamma"))
    if params["q"] <= 1:
        raise FitError("spend is too dispersed for the Gamma-Gamma mean to exist (q <= 1)")
    log_likelihood = float(np.sum(gamma_gamma_log_likelihood(tuple(params.values()), x, m)))
    return GammaGamma(**params, log_likelihood=log_likelihood)


def _arrays(*columns) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(column, dtype=float) for column in columns)
