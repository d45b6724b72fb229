"""Learn-then-Test with fixed-sequence testing over an ordered grid (Angelopoulos et al., 2021).

Setting: a grid ``lambda_1, ..., lambda_G`` ordered from conservative to aggressive, fixed *before*
the calibration units are seen (sedac derives it from separate grid-selection sequences); ``n`` iid
calibration units (sequences, or groups of concurrent sequences for the batch policy) with per-unit
risks ``L_ij`` in ``[0, 1]``. For each ``j`` the null ``H_j: R(lambda_j) > eps`` is tested with a
valid p-value (:mod:`sedac.calibration.bounds`). Fixed-sequence testing rejects ``H_1, H_2, ...``
while ``p_j <= delta`` and stops at the first ``p_j > delta``; no later point is considered even if
its p-value is small. This controls the family-wise error at ``delta`` without any multiplicity
correction, hence:

    P( R(lambda_hat) > eps ) <= delta,   lambda_hat = the last rejected grid point,

over the draw of the calibration units, for a new unit from the same distribution. ``None`` (no
rejection) means nothing is certified: sedac then does not skip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sedac.calibration.bounds import pvalue, ucb


def fixed_sequence(pvalues, delta: float) -> int | None:
    """Index of the last rejected hypothesis in order (stop at the first ``p > delta``), or None."""
    last = None
    for j, p in enumerate(pvalues):
        if not p <= delta:  # also stops at NaN
            break
        last = j
    return last


@dataclass
class LTTResult:
    """Outcome of :func:`certify` on one calibration set."""

    index: int | None  #: certified grid index (None: nothing certified)
    pvalues: list[float]  #: p-value per grid point (NaN after the stop: not tested)
    ucbs: list[float]  #: (1 - delta) upper confidence bound per grid point (reporting only)
    risks: list[float]  #: empirical mean risk per grid point
    n_units: int


def certify(risk, eps: float, delta: float, bound: str = "hb", with_ucb: bool = True) -> LTTResult:
    """Fixed-sequence LTT on a per-unit risk matrix ``risk: [n_units, G]`` (columns in grid order).

    NaN columns (grid points never measured) count as failures. UCBs are computed for every
    measured column for the report; they do not influence the decision.
    """
    r = np.asarray(risk, dtype=np.float64)
    n, g = r.shape
    pvals: list[float] = []
    for j in range(g):
        col = r[:, j]
        if np.isnan(col).any():
            break
        p = pvalue(col, eps, bound)
        pvals.append(p)
        if p > delta:
            break
    idx = fixed_sequence(pvals, delta)
    pvals = pvals + [float("nan")] * (g - len(pvals))
    risks = [float(np.mean(r[:, j])) if not np.isnan(r[:, j]).any() else float("nan") for j in range(g)]
    ucbs = [ucb(r[:, j], delta, bound) if with_ucb and not np.isnan(r[:, j]).any() else float("nan")
            for j in range(g)]
    return LTTResult(index=idx, pvalues=pvals, ucbs=ucbs, risks=risks, n_units=n)


def split_indices(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random disjoint (calibration, test) unit indices; ``test_fraction`` = 0 keeps all for calibration."""
    perm = rng.permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def resampling_check(risk, eps: float, delta: float, bound: str, test_fraction: float, n_splits: int,
                     seed: int = 0) -> dict:
    """Repeat calibrate-on-one-part / measure-on-the-other over ``n_splits`` random splits.

    Reuses the measured matrix ``risk: [n_units, G]`` (splits only reshuffle units). For each split
    the realised test risk of the certified point (0 when nothing is certified: no skipping) is
    compared with ``eps``. This is a DESCRIPTIVE stability figure, not a check of the guarantee: LTT
    bounds the probability, over fresh calibration draws, that the *population* risk of the certified
    point exceeds ``eps``; here the splits share units (not independent draws) and the test mean of a
    finite part is noisy, so a valid procedure can show any exceedance fraction (a loose bound such as
    HB typically shows about 0, a tight valid one can show far more than ``delta``).
    """
    r = np.asarray(risk, dtype=np.float64)
    rng = np.random.default_rng(seed)
    frac = test_fraction if test_fraction > 0 else 0.5
    realised, certified = [], []
    for _ in range(n_splits):
        cal, test = split_indices(r.shape[0], frac, rng)
        res = certify(r[cal], eps, delta, bound, with_ucb=False)
        certified.append(-1 if res.index is None else res.index)
        realised.append(0.0 if res.index is None else float(r[test, res.index].mean()))
    realised_a = np.asarray(realised)
    return {
        "n_splits": n_splits,
        "test_fraction": frac,
        "exceed_fraction": float((realised_a > eps).mean()),
        "certified_fraction": float((np.asarray(certified) >= 0).mean()),
        "realised_risk_mean": float(realised_a.mean()),
        "realised_risk_max": float(realised_a.max()),
        "certified_index": certified,
    }
