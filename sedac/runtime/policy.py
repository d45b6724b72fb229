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
``batch``  on a step with at least ``min_rows`` real (non-padding) rows -- ``B``, the
           ``--batch-concurrency`` the thresholds were certified at -- a band is skipped for the whole
           step only when every real row would skip it, so the MLP weights are not read at all. On a
           step with fewer real rows each row follows the token rule at its own threshold, ``thr +
           below_b_offset`` (certified together with the batch threshold: ``sedac calibrate`` bounds
           the larger of the token-rule risk and the risk of B concurrent requests, see
           docs/calibration.md). Padding rows never vote and never skip; prefill rows vote like decode
           rows (a step's rows are its tokens).

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
    #: batch policy: a step needs at least this many real rows for the all-or-nothing rule (the
    #: certified ``--batch-concurrency`` B); smaller steps use the token rule. Must be >= 2.
    min_rows: int = 2
    #: batch policy: raw-space offset per band added to the threshold on steps with < min_rows rows
    #: (the certified below-B token threshold minus the batch threshold); empty = 0
    below_b_offset: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.policy == "batch" and int(self.min_rows) < 2:
            raise ConfigError(f"batch policy needs batch concurrency >= 2 (got {self.min_rows}): with one row "
                              "the batch rule is the token rule; use policy \"token\"")
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
    """All-or-nothing over rows: a band is skipped for all rows iff every (valid) row would skip it. ``[N, B]``."""
    if valid is not None:
        skip = skip | ~valid.unsqueeze(-1)
    return skip.all(dim=0, keepdim=True).expand_as(skip)


def batch_rule(tok, valid, min_rows: int, dim: int = 0, small=None):
    """The served batch rule from token decisions.

    ``tok``: bool ``[..., N, B]``, the rows' decisions at the batch threshold, rows on ``dim``;
    ``small``: the same at the below-B threshold (None: ``tok``); ``valid``: bool ``[..., N]`` or
    None (every row real). Where the step has ``>= min_rows`` valid rows: all-or-nothing over them
    (the band skips for every valid row iff every valid row passes the batch threshold); otherwise
    ``small``. Padding rows never skip. Pure tensor function, no host sync (the count stays a tensor).
    """
    import torch

    small = tok if small is None else small
    v = torch.ones(tok.shape[:-1], dtype=torch.bool, device=tok.device) if valid is None else valid
    n_valid = v.sum(dim=dim, keepdim=True).unsqueeze(-1)  # [..., 1, 1]
    all_pass = (tok | ~v.unsqueeze(-1)).all(dim=dim, keepdim=True)  # [..., 1, B]
    big = (n_valid >= min_rows) & v.unsqueeze(-1)
    return torch.where(big, all_pass.expand_as(tok), small & v.unsqueeze(-1))


def below_b_thresholds(thr, config: SkipConfig):
    """Thresholds of the token rule on steps with fewer than ``min_rows`` rows: ``thr + offset``."""
    import torch

    if not config.below_b_offset:
        return thr
    return thr + torch.tensor(config.below_b_offset, dtype=torch.float32, device=thr.device)


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
    or ``[B]`` for static mode; ``valid`` ([N] bool) marks real (non-padding) rows; None = every row is real. The batch
    policy applies :func:`batch_rule` with ``config.min_rows``.
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
        small = None
        if config.mode in ("static", "dynamic") and config.below_b_offset:
            small = token_skip(raw, below_b_thresholds(thr, config))
        skip = batch_rule(skip, valid, config.min_rows, small=small)
    return skip


def batch_rows(probe, policy: str, batch_concurrency: int | None = None, certified: bool = True) -> int:
    """``min_rows`` of the batch policy: the certificate's ``batch_concurrency`` B (checked against an
    explicitly requested one), or for an uncertified explicit threshold the requested B (default 2)."""
    from sedac.errors import ProbeError

    if policy != "batch":
        return 2
    if batch_concurrency is not None and int(batch_concurrency) < 2:
        raise ConfigError(f"batch_concurrency must be >= 2, got {batch_concurrency} (B = 1 is the token policy)")
    recorded = probe.meta.calibration.get("batch_concurrency")
    if not certified:
        return int(batch_concurrency or recorded or 2)
    if recorded is None:
        raise ProbeError("probe's batch thresholds carry no batch_concurrency (calibrated by an older sedac): "
                         "re-run `sedac calibrate` with a batch policy")
    if batch_concurrency is not None and int(batch_concurrency) != int(recorded):
        raise ConfigError(f"batch_concurrency {batch_concurrency} differs from the {recorded} the probe's batch "
                          f"thresholds were certified at; re-calibrate with --batch-concurrency {batch_concurrency}")
    return int(recorded)


def thresholds_from_probe(probe, mode: str = "static", policy: str = "token",
                          override: float | None = None, batch_concurrency: int | None = None) -> SkipConfig:
    """Build a :class:`SkipConfig` from a probe's calibration metadata (or an explicit score threshold).

    ``override`` is a threshold on the probe's *score* (P(safe) or -entropy), applied to every band.
    ``batch_concurrency`` (batch policy): B, must equal the one recorded by ``sedac calibrate`` for
    certified thresholds (see :func:`batch_rows`).
    Calibration metadata layout (written by ``sedac calibrate``)::

        calibration.thresholds.static[policy][band]  -> score threshold
        calibration.thresholds.dynamic[policy][band] -> {"lam", "ref", "gamma", "prior_tokens"} (raw space)
        calibration.thresholds.static.batch[band]    -> {"threshold", "below_b"} (score thresholds)
        calibration.thresholds.dynamic.batch[band]   -> {"lam", ..., "below_b"} (below_b: lam below B rows)
        calibration.batch_concurrency                -> B of the batch thresholds
    """
    from sedac.errors import ProbeError

    if mode in ("never", "always"):
        rows = batch_rows(probe, policy, batch_concurrency, certified=False)
        return SkipConfig(policy=policy, mode=mode, thresholds=[0.0] * len(probe.bands), min_rows=rows)
    if override is not None:
        if mode != "static":
            raise ConfigError("an explicit --threshold value implies the static mode")
        return SkipConfig(policy=policy, mode="static", thresholds=[probe.raw_threshold(override)] * len(probe.bands),
                          min_rows=batch_rows(probe, policy, batch_concurrency, certified=False))
    table = probe.meta.calibration.get("thresholds", {}).get(mode, {}).get(policy)
    if not table:
        raise ProbeError(
            f"probe has no certified {mode}/{policy} thresholds; run `sedac calibrate` "
            f"(with --policy {policy}) or pass an explicit threshold"
        )
    missing = [b for b in probe.band_names if b not in table]
    if missing:
        raise ProbeError(f"calibration lacks thresholds for bands {missing}")
    rows = batch_rows(probe, policy, batch_concurrency)
    entries = [table[b] for b in probe.band_names]
    below = [e.get("below_b") if isinstance(e, dict) else None for e in entries] if policy == "batch" else []
    if mode == "static":
        vals = [float(e["threshold"]) if isinstance(e, dict) else float(e) for e in entries]
        thr = [probe.raw_threshold(v) for v in vals]
        off = [probe.raw_threshold(float(u)) - t for u, t in zip(below, thr)] if any(x is not None for x in below) else []
        return SkipConfig(policy=policy, mode="static", min_rows=rows, thresholds=thr, below_b_offset=off)
    dyn = [DynamicParams(**{k: v for k, v in e.items() if k != "below_b"}) for e in entries]
    off = [float(u) - d.lam for u, d in zip(below, dyn)] if any(x is not None for x in below) else []
    return SkipConfig(policy=policy, mode="dynamic", min_rows=rows, dynamic=dyn, below_b_offset=off)
