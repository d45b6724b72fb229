"""The skip policy (one module, shared by every backend).

Given the residual stream at the probe layer for the tokens of one step, the probe, thresholds and
the policy, produce the per-token skip mask for each band. All functions here are pure tensor
functions without host synchronisation, so they run unchanged inside vLLM's compiled graph.

Thresholds live in the probe's *raw* score space (:meth:`sedac.probes.Probe.raw_scores`: the safety
logit, or minus the predicted entropy); a token skips band ``b`` when ``raw[:, b] >= thr[b]``.

Modes
-----
``static``   one threshold per band.
``dynamic``  the threshold moves with the request's own difficulty. For token ``t`` of a request,
             ``m_t = (k * ref + sum_{i<t} raw_i) / (k + t)`` is the shrunk running mean of that
             request's raw scores so far (prompt and generated tokens; ``ref`` = mean raw score on the
             calibration data, ``k`` = prior weight in tokens) and the threshold is
             ``thr_t = lam + gamma * (ref - m_t)``: requests whose tokens look harder than usual
             (``m_t < ref``) get a stricter threshold, easier ones a looser one. ``gamma`` and ``k``
             are fixed design constants; ``lam`` is the single aggressiveness parameter that
             ``sedac calibrate`` certifies with Learn-then-Test.
``never``    no token skips (the probe still runs: used to measure decision overhead).
``always``   every token skips (counterfactual labels, forced-skip tests).

Policies
--------
``token``  each token decides for itself; skipped rows are not computed (gather/scatter).
``batch``  a band is skipped for the whole step only when every token of the step would skip it,
           so the MLP weights are not read at all.

Tensor-parallel safety: every rank holds the full (replicated) residual stream after the attention
all-reduce and the same probe weights, so it computes bit-identical scores and masks; no
communication is needed and all ranks skip the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sedac.errors import ConfigError

POLICIES = ("token", "batch")
MODES = ("static", "dynamic", "never", "always")


@dataclass
class DynamicParams:
    """Parameters of the dynamic threshold ``thr_t = lam + gamma * (ref - m_t)`` (raw space)."""

    lam: float  #: aggressiveness (certified by calibration); lower = more skipping
    ref: float  #: reference mean raw score (calibration data)
    gamma: float = 1.0  #: sensitivity to the request's difficulty
    prior_tokens: float = 8.0  #: k, weight of ``ref`` in the running mean


@dataclass
class SkipConfig:
    """How the runtime turns probe scores into skip decisions."""

    policy: str = "token"  #: "token" or "batch"
    mode: str = "static"  #: "static", "dynamic", "never" or "always"
    thresholds: list[float] = field(default_factory=list)  #: raw-space threshold per band (static)
    dynamic: list[DynamicParams] = field(default_factory=list)  #: per band (dynamic)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "dynamic" and not self.dynamic:
            raise ConfigError("dynamic mode needs dynamic parameters (calibrate first)")
        if self.mode == "static" and not self.thresholds:
            raise ConfigError("static mode needs thresholds")


def token_skip(raw, thr):
    """``raw: [N, B]``, ``thr: [B]`` or ``[N, B]`` -> bool ``[N, B]`` (token policy)."""
    return raw >= thr


def batch_skip(skip, valid=None):
    """Batch policy: a band is skipped for all rows iff every (valid) row would skip it. ``[N, B]``."""
    if valid is not None:
        skip = skip | ~valid.unsqueeze(-1)
    return skip.all(dim=0, keepdim=True).expand_as(skip)


def running_mean_before(raw, seq_start, prior_sum, prior_cnt):
    """Causal per-request running mean of ``raw`` *before* each token, within one step.

    raw        [N, B]  raw scores of this step's tokens, requests laid out contiguously
    seq_start  [N]     bool, True at the first token of each request's chunk in this step
    prior_sum  [N, B]  the request's sum of raw scores before this step's chunk (incl. k*ref prior)
    prior_cnt  [N]     the request's count before this step's chunk (incl. k)
    returns    [N, B]  m_t
    """
    import torch

    n = raw.shape[0]
    csum = torch.cumsum(raw, dim=0)  # [N, B]
    idx = torch.arange(n, device=raw.device)
    # index of the chunk start for every token (cummax over start positions)
    start_idx = torch.cummax(torch.where(seq_start, idx, torch.zeros_like(idx)), dim=0).values
    base = torch.where((start_idx > 0).unsqueeze(-1), csum[(start_idx - 1).clamp(min=0)], torch.zeros_like(csum))
    excl = csum - raw - base  # sum of this request's earlier tokens in this step
    n_before = (idx - start_idx).to(raw.dtype)
    return (prior_sum + excl) / (prior_cnt + n_before).unsqueeze(-1)


def dynamic_thresholds(m, lam, ref, gamma):
    """``thr_t = lam + gamma * (ref - m_t)``; ``m: [N, B]``, params ``[B]``."""
    return lam + gamma * (ref - m)


def decide(raw, config: SkipConfig, thr=None, valid=None):
    """Skip mask ``[N, B]`` for one step from raw scores ``[N, B]``.

    ``thr`` is the per-token threshold ``[N, B]`` for dynamic mode (from :func:`dynamic_thresholds`)
    or ``[B]`` for static mode; ``valid`` ([N] bool) marks real (non-padding) rows.
    """
    import torch

    if config.mode == "never":
        skip = torch.zeros_like(raw, dtype=torch.bool)
    elif config.mode == "always":
        skip = torch.ones_like(raw, dtype=torch.bool)
    else:
        skip = token_skip(raw, thr)
    if valid is not None:
        skip = skip & valid.unsqueeze(-1)
    if config.policy == "batch":
        skip = batch_skip(skip, valid)
        if valid is not None:
            skip = skip & valid.unsqueeze(-1)
    return skip


def thresholds_from_probe(probe, mode: str = "static", policy: str = "token",
                          override: float | None = None) -> SkipConfig:
    """Build a :class:`SkipConfig` from a probe's calibration metadata (or an explicit score threshold).

    ``override`` is a threshold on the probe's *score* (P(safe) or -entropy), applied to every band.
    Calibration metadata layout (written by ``sedac calibrate``)::

        calibration.thresholds.static[policy][band]  -> score threshold
        calibration.thresholds.dynamic[policy][band] -> {"lam", "ref", "gamma", "prior_tokens"} (raw space)
    """
    from sedac.errors import ProbeError

    if mode in ("never", "always"):
        return SkipConfig(policy=policy, mode=mode, thresholds=[0.0] * len(probe.bands))
    if override is not None:
        if mode != "static":
            raise ConfigError("an explicit --threshold value implies the static mode")
        return SkipConfig(policy=policy, mode="static",
                          thresholds=[probe.raw_threshold(override)] * len(probe.bands))
    table = probe.meta.calibration.get("thresholds", {}).get(mode, {}).get(policy)
    if not table:
        raise ProbeError(
            f"probe has no certified {mode}/{policy} thresholds; run `sedac calibrate` "
            f"(with --policy {policy}) or pass an explicit threshold"
        )
    missing = [b for b in probe.band_names if b not in table]
    if missing:
        raise ProbeError(f"calibration lacks thresholds for bands {missing}")
    if mode == "static":
        return SkipConfig(policy=policy, mode="static",
                          thresholds=[probe.raw_threshold(float(table[b])) for b in probe.band_names])
    return SkipConfig(policy=policy, mode="dynamic",
                      dynamic=[DynamicParams(**table[b]) for b in probe.band_names])
