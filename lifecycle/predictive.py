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
import pandas as pd
from scipy import optimize, special


class FitError(ValueError):
    """The model could not be fitted to this data (too little of it, or no convergence)."""


STATIONARY_GRADIENT = 1e-6  # per log-parameter, of the mean negative log-likelihood


def _start(previous: dict | None, names: tuple[str, ...], cold: list[float]) -> np.ndarray:
    """Return the log-parameters to start from: ``previous`` (a former fit's parameters by name) when they are all
    there, finite and positive, else the ``cold`` start.

    A nightly refit of a workspace whose orders barely changed starts at the optimum it is looking for, and
    L-BFGS-B stops after a few evaluations instead of some fifty; the optimum is the same either way (the
    likelihood has one maximum in the region both starts lie in; the CDNOW tests fit from the cold start).
    """
    values = [(previous or {}).get(name) for name in names]
    if all(isinstance(value, (int, float)) and np.isfinite(value) and value > 0 for value in values):
        return np.log(np.asarray(values, dtype=float))
    return np.log(np.asarray(cold, dtype=float))


def _fit(negative_log_likelihood, start: np.ndarray, names: tuple[str, ...], gradient=None) -> dict[str, float]:
    """Minimise over log-parameters (keeps them positive); return the parameters or raise FitError.

    With ``gradient`` (of the same function, over the log-parameters) L-BFGS-B converges in a few dozen
    evaluations; the derivative-free Nelder-Mead (hundreds of evaluations) is the fallback when it fails.
    """
    result = None
    with np.errstate(all="ignore"):
        if gradient is not None:
            result = optimize.minimize(negative_log_likelihood, start, jac=gradient, method="L-BFGS-B",
                                       options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 1000})
            if not result.success and np.all(np.isfinite(result.x)) and np.all(np.abs(result.jac) <= STATIONARY_GRADIENT):
                # The line search gave up because no step lowers the value any more in floating point: the
                # point is already stationary (seen on 100,000 customers; Nelder-Mead then took a second).
                result.success = True
        if result is None or not result.success or not np.all(np.isfinite(result.x)):
            result = optimize.minimize(negative_log_likelihood, start, method="Nelder-Mead",
                                       options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000, "maxfev": 8000})
            if result.success:
                # Polish the simplex result with a gradient method: Nelder-Mead stalls on flat ridges.
                polished = optimize.minimize(negative_log_likelihood, result.x, jac=gradient, method="L-BFGS-B")
                if polished.success and polished.fun <= result.fun:
                    result = polished
    if not result.success or not np.all(np.isfinite(result.x)) or not np.isfinite(result.fun):
        raise FitError(f"the optimiser did not converge: {result.message}")
    params = np.exp(result.x)
    if np.any(params > 1e6) or np.any(params < 1e-6):
        raise FitError("the fitted parameters are degenerate (the data do not identify the model)")
    return dict(zip(names, (float(value) for value in params)))


def _distinct_rows(*columns) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Return the distinct rows of the columns and how often each occurs (the likelihood sums over them)."""
    # Counted by hashing, then sorted as np.unique(axis=0) would (which sorted 100,000 rows for a third of a second).
    counts = pd.DataFrame(dict(enumerate(columns))).value_counts(sort=False, dropna=False).sort_index()
    distinct = tuple(counts.index.get_level_values(level).to_numpy(dtype=float) for level in range(len(columns)))
    return distinct, counts.to_numpy(dtype=float)


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
    return _bgnbd_terms(params, *_arrays(frequency, recency, T))[0]


def _bgnbd_terms(params, x, t_x, T, with_gradient: bool = False):
    """Return the per-customer log-likelihood and, if asked, its gradient over (r, alpha, a, b) (rows x 4).

    The beta functions are written as gamma functions so that the three per-customer gammaln (and digamma)
    evaluations are shared between the terms and their derivatives.
    """
    r, alpha, a, b = params
    repeat = x > 0
    # Frequencies take a few hundred values among many thousand customers: the gamma functions of (shift + x)
    # are evaluated once per value.
    x_values, x_position = np.unique(x, return_inverse=True)

    def of_x(function, shift):
        return function(shift + x_values)[x_position]

    with np.errstate(invalid="ignore", divide="ignore"):
        b_x = b + x
        b_x_1 = np.where(repeat, b_x - 1, 1.0)  # only used where x > 0
        gammaln_r_x, gammaln_b_x, gammaln_ab_x = (of_x(special.gammaln, r), of_x(special.gammaln, b),
                                                  of_x(special.gammaln, a + b))
        log_alpha_T, log_alpha_t_x = np.log(alpha + T), np.log(alpha + t_x)
        beta_ab = special.betaln(a, b)
        common = gammaln_r_x - special.gammaln(r) + r * np.log(alpha)
        # ln B(a, b + x) - ln B(a, b) and ln B(a + 1, b + x - 1) - ln B(a, b), with ln G(b+x) = ln G(b+x-1) + ln(b+x-1)
        no_dropout = special.gammaln(a) + gammaln_b_x - gammaln_ab_x - beta_ab - (r + x) * log_alpha_T
        dropout_after_last = np.where(
            repeat,
            special.gammaln(a + 1) + gammaln_b_x - np.log(b_x_1) - gammaln_ab_x - beta_ab - (r + x) * log_alpha_t_x,
            -np.inf,
        )
        mixed = np.logaddexp(no_dropout, dropout_after_last)
        log_likelihood = common + mixed
        if not with_gradient:
            return log_likelihood, None
        share_no_dropout = np.exp(no_dropout - mixed)
        share_dropout = np.where(repeat, np.exp(dropout_after_last - mixed), 0.0)
        digamma_r_x, digamma_b_x, digamma_ab_x = (of_x(special.digamma, r), of_x(special.digamma, b),
                                                  of_x(special.digamma, a + b))
        digamma_a, digamma_b, digamma_ab = special.digamma(a), special.digamma(b), special.digamma(a + b)
        digamma_b_x_1 = digamma_b_x - 1.0 / b_x_1
        gradient = np.empty((len(x), 4))
        gradient[:, 0] = (digamma_r_x - special.digamma(r) + np.log(alpha)
                          - share_no_dropout * log_alpha_T - share_dropout * log_alpha_t_x)
        gradient[:, 1] = (r / alpha - share_no_dropout * (r + x) / (alpha + T)
                          - share_dropout * (r + x) / (alpha + t_x))
        gradient[:, 2] = (share_no_dropout * (digamma_ab - digamma_ab_x)
                          + share_dropout * (1.0 / a + digamma_ab - digamma_ab_x))
        gradient[:, 3] = (share_no_dropout * (digamma_b_x - digamma_ab_x - digamma_b + digamma_ab)
                          + share_dropout * (np.where(repeat, digamma_b_x_1, 0.0) - digamma_ab_x - digamma_b + digamma_ab))
    return log_likelihood, gradient


def fit_bgnbd(frequency, recency, T, previous: dict | None = None) -> BetaGeometricNBD:
    """Return BG/NBD parameters fitted by maximum likelihood; raise FitError when that fails.

    ``previous`` (r, alpha, a, b of a former fit, e.g. the workspace's last run) is where the search starts.
    """
    x, t_x, T = _arrays(frequency, recency, T)
    if len(x) == 0 or not np.any(x > 0):
        raise FitError("no repeat purchases to learn from")
    if np.any(t_x > T + 1e-9) or np.any(x < 0):
        raise FitError("recency must lie between 0 and T, and frequency must not be negative")
    scale = float(np.mean(T)) or 1.0  # start near the right order of magnitude for alpha in any time unit
    (x, t_x, T), weights = _distinct_rows(x, t_x, T)
    total = weights.sum()

    def negative(log_params):
        log_likelihood, _ = _bgnbd_terms(np.exp(log_params), x, t_x, T)
        value = -np.dot(weights, log_likelihood) / total
        return value if np.isfinite(value) else 1e12

    def gradient(log_params):
        params = np.exp(log_params)
        _, per_customer = _bgnbd_terms(params, x, t_x, T, with_gradient=True)
        value = -(weights @ per_customer) * params / total
        return np.where(np.isfinite(value), value, 0.0)

    names = ("r", "alpha", "a", "b")
    params = _fit(negative, _start(previous, names, [0.5, scale / 10, 1.0, 1.0]), names, gradient)
    log_likelihood = float(np.dot(weights, bgnbd_log_likelihood(tuple(params.values()), x, t_x, T)))
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


def fit_gamma_gamma(frequency, monetary_value, previous: dict | None = None) -> GammaGamma:
    """Return Gamma-Gamma parameters fitted on repeat customers with positive spend; raise FitError when that fails.

    ``previous`` (p, q, gamma of a former fit) is where the search starts.
    """
    x = np.asarray(frequency, dtype=float)
    m = np.asarray(monetary_value, dtype=float)
    keep = (x > 0) & np.isfinite(m) & (m > 0)
    x, m = x[keep], m[keep]
    if len(x) < 2 or np.allclose(m, m[0]):
        raise FitError("too few repeat customers with varying spend")

    def negative(log_params):
        value = -np.sum(gamma_gamma_log_likelihood(np.exp(log_params), x, m)) / len(x)
        return value if np.isfinite(value) else 1e12

    log_x, log_m = np.log(x), np.log(m)

    def gradient(log_params):
        p, q, gamma = params = np.exp(log_params)
        with np.errstate(all="ignore"):
            digamma_px_q = special.digamma(p * x + q)
            log_gamma_mx = np.log(gamma + m * x)
            d_p = x * (digamma_px_q - special.digamma(p * x) + log_m + log_x - log_gamma_mx)
            d_q = digamma_px_q - special.digamma(q) + np.log(gamma) - log_gamma_mx
            d_gamma = q / gamma - (p * x + q) / (gamma + m * x)
            value = -np.array([d_p.sum(), d_q.sum(), d_gamma.sum()]) * params / len(x)
        return np.where(np.isfinite(value), value, 0.0)

    names = ("p", "q", "gamma")
    params = _fit(negative, _start(previous, names, [1.0, 2.0, float(np.mean(m))]), names, gradient)
    if params["q"] <= 1:
        raise FitError("spend is too dispersed for the Gamma-Gamma mean to exist (q <= 1)")
    log_likelihood = float(np.sum(gamma_gamma_log_likelihood(tuple(params.values()), x, m)))
    return GammaGamma(**params, log_likelihood=log_likelihood)


def _arrays(*columns) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(column, dtype=float) for column in columns)
