"""Candidate grids for each calibrated policy (``static``/``dynamic`` x ``token``/``batch``).

Every policy is reduced to ONE scalar ordered from conservative to aggressive, so the same LTT
procedure certifies all of them:

* ``static-*``: a threshold on the probe *score* (P(safe) for safety probes, -entropy for entropy
  probes), shared by all bands of a multi-band probe (one scalar keeps the fixed-sequence order total;
  per-band thresholds would need a multi-dimensional search).
* ``soft-uniform`` / ``soft-probe``: the base level ``lam`` of :class:`sedac.runtime.soft.SoftParams`
  on the fixed grid ``--soft-levels`` (:mod:`sedac.calibration.soft`).
* ``dynamic-*``: ``lam`` of ``thr_t = lam + gamma * (ref - m_t)`` (raw score space,
  :mod:`sedac.runtime.policy`); ``gamma`` and ``prior_tokens`` are fixed by the config and ``ref`` is
  the mean raw score of the grid-selection sequences.

The grid is placed at raw-score quantiles of the *grid-selection* sequences (disjoint from the
calibration and test units, so the grid is fixed before LTT sees its data): point ``j`` targets a
skip fraction ``f_j``, geometric from ``--grid-min-skip`` to ``--grid-max-skip``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sedac.errors import ConfigError
from sedac.runtime.policy import DynamicParams, SkipConfig

KINDS = ("static-token", "dynamic-token", "static-batch", "dynamic-batch", "soft-uniform", "soft-probe")


@dataclass(frozen=True)
class PolicySpec:
    name: str  #: e.g. "static-token"
    mode: str  #: "static", "dynamic" or "soft"
    policy: str  #: "token" or "batch" (whole-MLP skip); "uniform" or "probe" (soft skip family)


def parse_policy(name: str) -> PolicySpec:
    if name not in KINDS:
        raise ConfigError(f"--policies: unknown policy {name!r}; use a comma list of {', '.join(KINDS)}")
    mode, policy = name.split("-")
    return PolicySpec(name, mode, policy)


def target_fractions(g: int, lo: float, hi: float) -> np.ndarray:
    """Target skip fractions, increasing (conservative -> aggressive), geometric from lo to hi."""
    if g == 1:
        return np.array([lo])
    return np.geomspace(lo, hi, g)


def raw_grid(raw_scores: np.ndarray, g: int, lo: float, hi: float) -> list[float]:
    """Raw-space thresholds, decreasing, at the (1 - f_j) quantiles of ``raw_scores`` (duplicates dropped)."""
    fr = target_fractions(g, lo, hi)
    q = np.quantile(raw_scores.astype(np.float64), 1.0 - fr)
    out: list[float] = []
    for v in q:
        if not out or v < out[-1]:
            out.append(float(v))
    return out


def dynamic_effective(raw: np.ndarray, ref: float, gamma: float, prior_tokens: float) -> np.ndarray:
    """Effective dynamic score ``raw_t - gamma * (ref - m_t)`` of one request (``raw: [n, B]``).

    A token skips under ``lam`` iff this is ``>= lam`` (same running mean as the runtime), so its
    quantiles place the ``lam`` grid at the target skip fractions (the decisions are made at the probe
    layer, before any skipped MLP, so they do not depend on the threshold's downstream effect).
    """
    r = raw.astype(np.float64)
    before = np.cumsum(r, axis=0) - r
    t = np.arange(r.shape[0], dtype=np.float64)[:, None]
    m = (prior_tokens * ref + before) / (prior_tokens + t)
    return r - gamma * (ref - m)


def to_score(probe, raw: float) -> float:
    """Inverse of ``probe.raw_threshold`` (score = sigmoid(raw) for safety, raw for entropy)."""
    if probe.meta.score_target == "safety":
        return 1.0 / (1.0 + math.exp(-raw)) if raw > -700 else 0.0
    return float(raw)


def grid_values(spec: PolicySpec, probe, raw_scores: np.ndarray, g: int, lo: float, hi: float) -> list[float]:
    """Grid in the units stored in the probe: score thresholds (static) or raw ``lam`` (dynamic)."""
    raws = raw_grid(raw_scores, g, lo, hi)
    if spec.mode == "static":
        vals: list[float] = []
        for r in raws:  # keep strictly decreasing after the (possibly saturating) sigmoid
            s = to_score(probe, r)
            if not vals or s < vals[-1]:
                vals.append(s)
        return vals
    return raws


def skip_config(spec: PolicySpec, probe, value: float, ref: float, gamma: float, prior_tokens: float) -> SkipConfig:
    """The runtime :class:`SkipConfig` for grid ``value`` (same for every band)."""
    nb = len(probe.bands)
    if spec.mode == "static":
        return SkipConfig(policy=spec.policy, mode="static", thresholds=[probe.raw_threshold(value)] * nb)
    dp = DynamicParams(lam=float(value), ref=float(ref), gamma=float(gamma), prior_tokens=float(prior_tokens))
    return SkipConfig(policy=spec.policy, mode="dynamic", dynamic=[dp] * nb)


def threshold_entry(spec: PolicySpec, value: float, ref: float, gamma: float, prior_tokens: float):
    """What ``calibration.thresholds[mode][policy][band]`` holds (read by ``thresholds_from_probe``)."""
    if spec.mode == "static":
        return float(value)
    return {"lam": float(value), "ref": float(ref), "gamma": float(gamma), "prior_tokens": float(prior_tokens)}
