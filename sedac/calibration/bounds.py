"""Finite-sample upper confidence bounds / p-values for the mean of a [0, 1]-valued risk.

Guarantee: for iid losses ``L_1..L_n`` in ``[0, 1]`` with mean ``R``, each p-value here is *valid*
for the null ``H: R > eps``, i.e. ``P(p <= delta) <= delta`` whenever ``R > eps`` (conservatively
handled at ``R = eps``). No normal approximation is used anywhere.

* Hoeffding (Hoeffding 1963, KL form): ``p_H = exp(-n * kl(min(R_hat, eps) || eps))``.
* Bentkus (2004), as in Bates et al. (RCPS) / Angelopoulos et al. (Learn then Test):
  ``p_B = e * P(Binom(n, eps) <= ceil(n * R_hat))``.
* Hoeffding-Bentkus: ``p_HB = min(p_H, p_B)`` (LTT's recommended p-value). Valid without a
  Bonferroni split: both parts are upper bounds on the same lower-tail probability
  ``P_eps(R_hat <= t)``, non-decreasing in ``t``, so their minimum is one too.
* WSR: the Waudby-Smith--Ramdas betting p-value (predictable-plug-in capital process; Ville's
  inequality gives validity), ``p = 1 / max_t K_t``.

:func:`ucb` inverts any of them: the smallest ``eps`` whose p-value is ``<= delta`` (bisection).
"""

from __future__ import annotations

import math

import numpy as np

BOUNDS = ("hb", "hoeffding", "bentkus", "wsr")
AUTO = "auto"  #: the default: :func:`resolve_bound` picks hb or wsr from (n, eps, delta) alone


def _kl(a: float, b: float) -> float:
    """Bernoulli KL divergence kl(a || b) with the 0 log 0 = 0 convention."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hoeffding_pvalue(mean: float, n: int, eps: float) -> float:
    if eps <= 0:
        return 1.0
    if eps >= 1:
        return 0.0
    return math.exp(-n * _kl(min(mean, eps), eps))


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binom(n, p) <= k), summed in log space (exact for the n used in calibration)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
             for i in range(k + 1)]
    m = max(terms)
    return min(1.0, math.exp(m) * sum(math.exp(t - m) for t in terms))


def bentkus_pvalue(mean: float, n: int, eps: float) -> float:
    if eps <= 0:
        return 1.0
    if eps >= 1:
        return 0.0
    k = math.ceil(n * mean - 1e-12)
    return min(1.0, math.e * _binom_cdf(k, n, eps))


def hb_pvalue(mean: float, n: int, eps: float) -> float:
    """Hoeffding-Bentkus p-value for ``H: R > eps`` given the empirical mean of n losses in [0, 1]."""
    return min(hoeffding_pvalue(mean, n, eps), bentkus_pvalue(mean, n, eps))


def wsr_pvalue(losses, eps: float) -> float:
    """Waudby-Smith--Ramdas betting p-value for ``H: R > eps`` (order of ``losses`` as given).

    Capital ``K_t = prod_i (1 + nu_i * (eps - L_i))`` with predictable bets
    ``nu_i = min(sqrt(2 log(1/delta0) / (n * var_{i-1})), 0.75 / (1 - eps))`` (``delta0`` = 0.05
    tuning; the cap keeps every factor positive); under ``H`` it is a non-negative supermartingale, so ``p = min(1, 1 / max_t K_t)`` is valid (Ville).
    """
    x = np.asarray(losses, dtype=np.float64)
    n = len(x)
    if eps >= 1:
        return 0.0
    if eps <= 0 or n == 0:
        return 1.0
    t = np.arange(1, n + 1)
    mu_hat = (0.5 + np.cumsum(x)) / (t + 1)
    var_hat = (0.25 + np.cumsum((x - mu_hat) ** 2)) / (t + 1)
    var_prev = np.concatenate([[0.25], var_hat[:-1]])
    nu = np.minimum(np.sqrt(2 * math.log(1 / 0.05) / (n * var_prev)), 0.75 / (1.0 - eps))
    log_k = np.cumsum(np.log1p(nu * (eps - x)))
    return float(min(1.0, math.exp(-min(700.0, log_k.max()))))


def pvalue(losses, eps: float, bound: str = "hb") -> float:
    """p-value for ``H: mean risk > eps`` from per-unit losses in [0, 1] (bound in :data:`BOUNDS`)."""
    x = np.asarray(losses, dtype=np.float64)
    if x.size == 0:
        return 1.0
    if x.min() < 0 or x.max() > 1 or not np.isfinite(x).all():
        raise ValueError("losses must be finite and in [0, 1]")
    mean, n = float(x.mean()), int(x.size)
    if bound == "hb":
        return hb_pvalue(mean, n, eps)
    if bound == "hoeffding":
        return hoeffding_pvalue(mean, n, eps)
    if bound == "bentkus":
        return bentkus_pvalue(mean, n, eps)
    if bound == "wsr":
        return wsr_pvalue(x, eps)
    raise ValueError(f"unknown bound {bound!r}; use one of {BOUNDS}")


def ucb(losses, delta: float, bound: str = "hb", tol: float = 1e-5) -> float:
    """Upper confidence bound: ``inf {eps : p(eps) <= delta}`` (so ``P(R > ucb) <= delta``)."""
    x = np.asarray(losses, dtype=np.float64)
    if x.size == 0:
        return 1.0
    lo, hi = float(x.mean()), 1.0
    if pvalue(x, lo, bound) <= delta:
        return lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if pvalue(x, mid, bound) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def min_epsilon(n: int, delta: float) -> float:
    """Smallest epsilon any of these bounds can certify with ``n`` units, even at zero observed risk.

    At ``R_hat = 0`` the Hoeffding part is ``(1 - eps)^n``, so ``eps >= 1 - delta^(1/n) ~ ln(1/delta)/n``:
    certifying epsilon = 0.01 at delta = 0.05 needs about 300 calibration units.
    """
    return 1.0 - delta ** (1.0 / max(n, 1))


def resolve_bound(bound: str, n: int, eps: float, delta: float) -> str:
    """The bound ``auto`` stands for, chosen a priori (from n, eps, delta only, never from the risks).

    ``wsr`` when ``n * eps >= 2 ln(1/delta)`` (about twice the zero-risk floor's units), else ``hb``:
    on simulated matrices shaped like sedac's (scripts/bound_comparison.py, docs/calibration.md) WSR
    certifies clearly more aggressive points from 120 units at eps = delta = 0.05 and clearly less
    near the floor (80 units), where its capped bets cannot reach 1/delta on all-zero losses.
    """
    if bound != AUTO:
        return bound
    return "wsr" if n * eps >= 2 * math.log(1 / delta) else "hb"
