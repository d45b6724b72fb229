"""Per-layer allocation of soft-skip sparsity (TEAL's greedy rule), measured on the grid-selection sequences.

Uniform soft skip zeroes the same fraction of x and h in every layer. Layers differ in how much the final
distribution moves when their inputs are sparsified, so ``--soft-alloc greedy`` spends the byte budget
where it is cheapest:

1. **Sensitivity.** For every layer ``l`` and input ``m`` (x: gate/up input, h: down input) and every
   level in :data:`SENS_LEVELS`, sparsify *only* that input of that layer and measure the mean KL
   divergence of the next-token distribution from the full model's over the tokens of the first
   :data:`SENS_SEQUENCES` grid-selection sequences (``2 * L * len(SENS_LEVELS)`` forwards). A power law
   ``a * s**p`` is fitted to each (layer, input)'s costs (:func:`fit_costs`).
2. **Greedy.** Starting from no sparsity, repeatedly raise by :data:`STEP` the (layer, input) whose next
   step adds the least KL per MLP weight byte saved (x carries 2/3 of a layer's bytes, h 1/3), until the
   mean share of MLP bytes saved reaches ``target`` (assuming costs add up across layers, as TEAL does).
3. **Allocation.** ``alloc[l, m] = s[l, m] / target``, folded into the quantile table
   (:func:`sedac.runtime.soft.warp_table`): at base level ``lam`` input ``m`` of layer ``l`` is sparsified
   by ``min(1, alloc[l, m] * lam)``. The family stays monotone in ``lam``.

The grid-selection sequences are disjoint from the calibration units, so the allocation is fixed before the
units are seen and the Learn-then-Test guarantee is unaffected (the same argument as for the table itself).
"""

from __future__ import annotations

import numpy as np
import torch

from sedac.calibration.risk import _pad
from sedac.runtime.hf_soft import install_soft
from sedac.runtime.soft import SoftParams, warp_table

SENS_LEVELS = (0.2, 0.4, 0.6)  #: levels at which each (layer, input) sensitivity is measured
SENS_SEQUENCES = 4  #: grid-selection sequences used for it (2 * L * 3 forwards of these)
STEP = 0.01  #: greedy increment of one (layer, input)'s sparsity
BYTE_SHARE = (2.0 / 3.0, 1.0 / 3.0)  #: share of a layer's MLP weight bytes behind x and behind h


@torch.no_grad()
def sensitivities(model, table: torch.Tensor, seqs, batch_size: int = 8, levels=SENS_LEVELS, progress=None):
    """Mean KL(full || sparsified) ``[L, 2, len(levels)]`` with one input of one layer sparsified at a time."""
    dev = next(model.parameters()).device
    batches = []
    for s in range(0, len(seqs), batch_size):
        ids, valid, _ = _pad(seqs[s: s + batch_size], dev)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=valid.long(), use_cache=False).logits.float(), -1)
        batches.append((ids, valid, logp))
    n_tok = sum(int(v.sum()) for _, v, _ in batches)
    L = table.shape[0]
    cost = np.zeros((L, 2, len(levels)))
    for li in range(L):
        for m in (0, 1):
            single = torch.zeros_like(table)
            single[li, m] = table[li, m]
            for k, lv in enumerate(levels):
                kl = 0.0
                with install_soft(model, SoftParams(family="uniform", lam=float(lv)), single):
                    for ids, valid, logp in batches:
                        q = torch.log_softmax(model(input_ids=ids, attention_mask=valid.long(),
                                                    use_cache=False).logits.float(), -1)
                        kl += float(((logp.exp() * (logp - q)).sum(-1) * valid).sum())
                cost[li, m, k] = kl / max(n_tok, 1)
            if progress is not None:
                progress(1)
    return cost


def fit_costs(cost: np.ndarray, levels=SENS_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """Power-law fit ``c(s) = a * s**p`` per (layer, input) of the measured costs: ``(a [L, 2], p [L, 2])``.

    Least squares in log-log space, ``p`` clipped to [1, 4] (convex, as measured: p is about 3-4 on SmolLM2).
    A smooth convex curve lets the greedy rule equalise marginal costs; linear interpolation between a few
    measured levels would hand out whole segments at a time."""
    lx = np.log(np.asarray(levels, dtype=float))
    lc = np.log(np.maximum(cost, 1e-12))
    L = cost.shape[0]
    a, p = np.zeros((L, 2)), np.zeros((L, 2))
    for li in range(L):
        for m in (0, 1):
            slope = float(np.polyfit(lx, lc[li, m], 1)[0])
            p[li, m] = min(max(slope, 1.0), 4.0)
            a[li, m] = float(np.exp(np.mean(lc[li, m] - p[li, m] * lx)))
    return a, p


def greedy_allocation(cost: np.ndarray, target: float, levels=SENS_LEVELS, step: float = STEP,
                      s_max: float = 0.8) -> np.ndarray:
    """Per-(layer, input) sparsity ``s [L, 2]`` whose mean MLP-bytes share is ``target`` (see module doc)."""
    L = cost.shape[0]
    if not 0 < target <= s_max * 0.9:
        raise ValueError(f"allocation target must be in (0, {s_max * 0.9:g}], got {target}")
    a, p = fit_costs(cost, levels)
    w = np.array(BYTE_SHARE)[None, :] / L  # bytes share per unit of sparsity of (l, m)
    s = np.zeros((L, 2))
    while float((s * w).sum()) < target - 1e-9:
        nxt = np.minimum(s + step, s_max)
        rate = a * (nxt ** p - s ** p) / (w * step)
        rate[s >= s_max - 1e-9] = np.inf
        li, m = np.unravel_index(int(np.argmin(rate)), rate.shape)
        s[li, m] = nxt[li, m]
    return s


def allocate(model, table: torch.Tensor, grid_seqs, target: float, batch_size: int = 8, progress=None):
    """``(warped table [L, 2, Q], info)``: the greedy allocation at ``target`` folded into ``table``."""
    cost = sensitivities(model, table, grid_seqs[:SENS_SEQUENCES], batch_size, progress=progress)
    s = greedy_allocation(cost, target)
    _, p = fit_costs(cost)
    alloc = torch.tensor(s / target, dtype=torch.float32)
    info = {"rule": "greedy", "target": target, "levels": list(SENS_LEVELS), "step": STEP,
            "sequences": min(len(grid_seqs), SENS_SEQUENCES),
            "alloc_x": [round(float(v), 4) for v in alloc[:, 0]], "alloc_h": [round(float(v), 4) for v in alloc[:, 1]],
            "fit_p": np.round(p, 3).tolist(), "kl": np.round(cost, 6).tolist()}
    return warp_table(table, alloc.to(table.device)), info
