"""Soft skip: graded, per-token magnitude sparsity of the MLP inputs (one module, every backend).

Whole-MLP skipping (:mod:`sedac.runtime.policy`) is all-or-nothing. Soft skip drops, per token, the
small-magnitude entries of the two MLP inputs of a SiLU-gated MLP ``down(silu(gate(x)) * up(x))``:

* ``x`` (input of gate/up, ``[N, H]``): entries with ``|x| < thr_x`` are zeroed, so the matching
  columns of ``W_gate_up`` need not be read (2/3 of the MLP's weight bytes);
* ``h = silu(gate) * up`` (input of down, ``[N, I]``): entries with ``|h| < thr_h`` are zeroed, so
  the matching columns of ``W_down`` need not be read (1/3 of the bytes).

A token's **level** ``s`` in ``[0, 1]`` sets both thresholds at every MLP layer ``l``:
``thr_x[l] = Q_x,l(min(1, a_x * s))`` and ``thr_h[l] = Q_h,l(min(1, a_h * s))``, where ``Q_m,l(p)`` is
the ``p``-quantile of ``|m|`` at layer ``l`` measured on the model (:class:`SoftTable`, built by
:func:`table_from_histograms` from :class:`MagnitudeHistogram` counts). So a level ``s`` zeroes about
a fraction ``s`` of each input at every layer (TEAL's rule: one sparsity for all layers and both
inputs, thresholds from offline magnitude distributions); level 0 keeps everything (bit-identical
to the dense MLP) and a level whose sparsity reaches 1 drops the whole MLP (``thr = +inf``: whole-MLP
skip is the limit case).

The level comes from one scalar ``lam`` (the value Learn-then-Test certifies) and, for the
probe-controlled family, the probe's raw score at the probe layer::

    soft-uniform   s_t = lam                                   (every token, every layer)
    soft-probe     s_t = clip(lam + gamma * (raw_t - ref) / scale, 0, 1)   for layers >= probe layer
                   s_t = lam                                   for layers before the probe layer

``ref``/``scale`` = mean/std of the raw score on grid-selection data; ``gamma`` is a fixed design
constant. Both families are monotone in ``lam``, so LTT's fixed-sequence test applies unchanged.

All functions are pure tensor functions without host synchronisation (they run inside vLLM's
compiled graph). The MLP math itself is :func:`soft_mlp` (HF modules, vLLM CPU modules) or the
``sedac::sparse_mlp`` op (GPU kernels, :mod:`sedac.runtime.sparse_ops`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from sedac.errors import ConfigError

FAMILIES = ("uniform", "probe")
N_BINS = 4096  #: log-spaced magnitude bins of :class:`MagnitudeHistogram`
LOG10_LO, LOG10_HI = -9.0, 5.0  #: bin range of log10|a| (values outside fall in the end bins)
N_QUANTILES = 201  #: quantile grid of :class:`SoftTable`: p = 0, 1/200, ..., 1
DROP_ALL = 1e30  #: a threshold above any activation: the whole input is zeroed


@dataclass
class SoftParams:
    """One soft policy: the level map (family, lam, gamma, ref, scale) and the x/h allocation."""

    family: str = "uniform"  #: "uniform" (no probe) or "probe" (probe-controlled level)
    lam: float = 0.0  #: base level in [0, 1] (certified by calibration)
    gamma: float = 0.0  #: probe sensitivity (family "probe")
    ref: float = 0.0  #: mean raw probe score (grid-selection data)
    scale: float = 1.0  #: std of the raw probe score (grid-selection data)
    a_x: float = 1.0  #: sparsity of x per unit of level
    a_h: float = 1.0  #: sparsity of h per unit of level

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"soft family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("lam", "gamma", "ref", "scale", "a_x", "a_h"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"soft parameter {name} must be a finite number, got {v!r}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"soft level lam must be in [0, 1], got {self.lam}")
        if self.gamma < 0 or self.scale <= 0 or self.a_x < 0 or self.a_h < 0:
            raise ConfigError("soft parameters need gamma >= 0, scale > 0, a_x >= 0, a_h >= 0")
        if self.family == "uniform" and self.gamma != 0:
            raise ConfigError("the soft-uniform family has gamma = 0")

    def to_dict(self) -> dict:
        return asdict(self)


class MagnitudeHistogram:
    """Streaming per-layer histograms of ``|x|`` (m=0) and ``|h|`` (m=1): counts ``[L, 2, N_BINS]``."""

    def __init__(self, num_layers: int):
        self.counts = torch.zeros(num_layers, 2, N_BINS, dtype=torch.float64)

    def add(self, layer: int, m: int, a: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Add the entries of ``a: [..., D]`` (rows where ``valid: [...]`` is True, if given)."""
        a = a.detach().reshape(-1, a.shape[-1])
        if valid is not None:
            a = a[valid.reshape(-1).to(a.device)]
        lg = torch.log10(a.float().abs().clamp_min(10.0 ** LOG10_LO))
        self.counts[layer, m] += torch.histc(lg, bins=N_BINS, min=LOG10_LO, max=LOG10_HI).double().cpu()

    def merge(self, other: "MagnitudeHistogram") -> None:
        self.counts += other.counts


def table_from_histograms(counts: torch.Tensor, n_quantiles: int = N_QUANTILES) -> torch.Tensor:
    """Quantile table ``[L, 2, Q]`` (float32) from histogram counts ``[L, 2, N_BINS]``.

    Entry ``j`` is the magnitude below which a fraction ``p_j = j / (Q - 1)`` of the entries lie
    (linear interpolation of the CDF in log space); ``p = 0`` maps to 0 (keep everything) and
    ``p = 1`` to ``+inf`` (drop everything).
    """
    c = counts.double()
    L, M, nb = c.shape
    edges = torch.linspace(LOG10_LO, LOG10_HI, nb + 1, dtype=torch.float64)
    tot = c.sum(-1, keepdim=True)
    if bool((tot <= 0).any()):
        raise ConfigError("soft table: a layer has no recorded activations")
    cdf = torch.cat([torch.zeros(L, M, 1, dtype=torch.float64), c.cumsum(-1) / tot], -1)  # [L, 2, nb+1]
    p = torch.linspace(0, 1, n_quantiles, dtype=torch.float64)
    out = torch.empty(L, M, n_quantiles, dtype=torch.float64)
    for li in range(L):
        for m in range(M):
            out[li, m] = 10.0 ** torch.from_numpy(_interp(p.numpy(), cdf[li, m].numpy(), edges.numpy()))
    out[..., 0] = 0.0
    out[..., -1] = math.inf
    return out.float()


def _interp(x, xp, fp):
    import numpy as np

    # xp (the CDF) is non-decreasing; np.interp needs increasing x: keep the last edge of flat runs
    keep = np.concatenate([xp[1:] > xp[:-1], [True]])
    return np.interp(x, xp[keep], fp[keep])


def levels(raw: torch.Tensor | None, p: SoftParams, n: int, device) -> torch.Tensor:
    """Per-token level ``[N]`` (float32) of the probe-controlled layers; ``raw: [N]`` raw probe score.

    A non-finite score (NaN: garbage rows such as vLLM's warm-up and padding rows) gives level 0, i.e.
    nothing dropped; +-inf saturate to 1 / 0 like any large score."""
    if p.family == "uniform" or raw is None:
        return torch.full((n,), float(p.lam), dtype=torch.float32, device=device)
    lv = p.lam + p.gamma * (raw.float() - p.ref) / p.scale
    return torch.nan_to_num(lv, nan=0.0).clamp(0.0, 1.0)


def thresholds(table: torch.Tensor, layer: int, level: torch.Tensor, a_x: float, a_h: float):
    """``(thr_x [N], thr_h [N])`` at ``layer`` for per-token levels ``level: [N]`` (float32).

    ``table: [L, 2, Q]`` from :func:`table_from_histograms` (same device as ``level``). Linear
    interpolation between quantile points; sparsity ``>= 1`` gives ``+inf`` (whole MLP dropped),
    sparsity 0 gives 0 (nothing dropped), and so does a NaN level: the table index is always in range.
    """
    q = table.shape[-1] - 1
    out = []
    for m, a in ((0, a_x), (1, a_h)):
        s = torch.nan_to_num(level * a, nan=0.0).clamp(0.0, 1.0)
        pos = s * q
        lo = pos.floor().clamp(0, q - 1).long()
        w = pos - lo.float()
        row = table[layer, m]
        t_lo, t_hi = row[lo], row[lo + 1]
        thr = torch.where(w > 0, t_lo + w * torch.where(torch.isinf(t_hi), torch.zeros_like(t_hi), t_hi - t_lo), t_lo)
        out.append(torch.where(s >= 1.0, torch.full_like(thr, math.inf), thr))
    return out[0], out[1]


def warp_table(table: torch.Tensor, alloc: torch.Tensor) -> torch.Tensor:
    """Fold a per-layer allocation ``alloc: [L, 2]`` (sparsity of x / h per unit of level) into the table.

    Entry ``j`` of the result is the ``min(1, alloc[l, m] * j / (Q - 1))``-quantile, so level ``s`` then
    zeroes about ``min(1, alloc[l, m] * s)`` of input ``m`` at layer ``l``; every runtime reads the warped
    table unchanged. The last entry stays ``+inf`` (the probe-file convention), the first 0; inner entries
    past sparsity 1 hold :data:`DROP_ALL` (a finite "drop everything", storable in the probe file).
    """
    L, _, n_q = table.shape
    p = torch.linspace(0, 1, n_q, dtype=torch.float32, device=table.device)
    out = torch.empty_like(table)
    for li in range(L):
        out[li, 0], out[li, 1] = thresholds(table, li, p, float(alloc[li, 0]), float(alloc[li, 1]))
    out = torch.nan_to_num(out, posinf=DROP_ALL)
    out[..., 0] = 0.0
    out[..., -1] = math.inf
    return out


def sparsify(a: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """Zero the entries of ``a: [N, D]`` with ``|a| < thr[:, None]`` (``thr <= 0`` keeps the row as is)."""
    return torch.where(a.abs() >= thr.unsqueeze(-1).to(a.dtype), a, torch.zeros((), dtype=a.dtype, device=a.device))


def soft_mlp(gate_up, act_down, x: torch.Tensor, thr_x: torch.Tensor, thr_h: torch.Tensor):
    """Masked MLP math with the model's own modules; returns ``(y [N, H], zx [N], zh [N])``.

    ``gate_up(xm) -> (gate, up)`` and ``act_down(gate, up, mask_h) -> y`` wrap the backend's layers
    (see :func:`hf_soft_mlp` and the vLLM integration). ``zx``/``zh`` count the zero entries of the
    masked inputs per row: the weight columns a sparse kernel does not read. Entries are zeroed, never
    rescaled; with ``thr <= 0`` the result is bit-identical to the dense MLP.
    """
    xm = sparsify(x, thr_x)
    counts = {}

    def mask_h(h):
        hm = sparsify(h, thr_h)
        counts["zh"] = (hm == 0).sum(-1)
        return hm

    y = act_down(*gate_up(xm), mask_h)
    return y, (xm == 0).sum(-1), counts["zh"]


def hf_soft_mlp(mlp, x: torch.Tensor, thr_x: torch.Tensor, thr_h: torch.Tensor):
    """:func:`soft_mlp` on an HF ``LlamaMLP``-style module (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``)."""
    return soft_mlp(lambda xm: (mlp.gate_proj(xm), mlp.up_proj(xm)),
                    lambda g, u, mask_h: mlp.down_proj(mask_h(mlp.act_fn(g) * u)), x, thr_x, thr_h)


def saved_and_rows(frac: torch.Tensor) -> torch.Tensor:
    """``[sum of frac, row count]`` float64 for the runtime's counters. The row count is a device reduction,
    not ``frac.shape[0]`` as a tensor: that would fix the row count into a compiled graph (vLLM compiles
    with a dynamic token dimension and refuses the engine then: GPU run, H200)."""
    return torch.stack([frac.sum(), torch.ones_like(frac).sum()]).double()


def bytes_saved_fraction(zx: torch.Tensor, zh: torch.Tensor, hidden: int, inter: int) -> torch.Tensor:
    """Fraction of one MLP's weight bytes a row need not read: ``(2*I*zx + H*zh) / (3*H*I)`` per row."""
    return (2.0 * inter * zx.float() + hidden * zh.float()) / (3.0 * hidden * inter)


def soft_from_probe(probe, family: str = "probe", level: float | None = None):
    """``(SoftParams, table [L, 2, Q])`` that the runtimes serve for a calibrated probe.

    ``calibration.thresholds.soft[family]`` holds the certified :class:`SoftParams` (written by
    ``sedac calibrate --policies soft-...``); ``level`` serves an explicit uniform level instead
    (uncertified; 0 = never fires). The table is the probe's ``soft.table``.
    """
    from sedac.errors import ProbeError

    table = probe.soft_table()
    if table is None:
        raise ProbeError("probe has no soft-skip table; run `sedac calibrate --policies soft-uniform,...` "
                         "(or collect + train-probe with soft statistics) first")
    if level is not None:
        return SoftParams(family="uniform", lam=float(level)), table
    entry = probe.meta.calibration.get("thresholds", {}).get("soft", {}).get(family)
    if not entry:
        raise ProbeError(f"probe has no certified soft-{family} parameters; run `sedac calibrate "
                         f"--policies soft-{family}` or pass an explicit soft level")
    return SoftParams(**entry), table
