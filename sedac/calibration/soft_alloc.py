"""Per-layer allocation of soft-skip sparsity (TEAL's greedy rule), measured on the grid-selection sequences.

Uniform soft skip zeroes the same fraction of x and h in every layer. Layers differ in how much the final
distribution moves when their inputs are sparsified, so ``--soft-alloc greedy`` spends the byte budget
where it is cheapest:

1. **Sensitivity.** For every layer ``l`` and input ``m`` (x: gate/up input, h: down input) and every
   level in :data:`SENS_LEVELS`, sparsify *only* that input of that layer and measure the mean KL
   divergence of the next-token distribution from the full model's over the tokens of the
   grid-selection sequences (``2 * L * len(SENS_LEVELS)`` forwards). Costs are interpolated linearly
   between the measured levels (0 at level 0) and made non-decreasing.
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

SENS_LEVELS = (0.2, 0.4, 0.6, 0.8)  #: levels at which each (layer, input) sensitivity is measured
STEP = 0.02  #: greedy increment of one (layer, input)'s sparsity
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


def greedy_allocation(cost: np.ndarray, target: float, levels=SENS_LEVELS, step: float = STEP) -> np.ndarray:
    """Per-(layer, input) sparsity ``s [L, 2]`` whose mean MLP-bytes share is ``target`` (see module doc)."""
    L = cost.shape[0]
    xs = np.concatenate([[0.0], np.asarray(levels, dtype=float)])
    curves = np.maximum.accumulate(np.concatenate([np.zeros((L, 2, 1)), np.maximum(cost, 0)], -1), axis=-1)
    s_max = float(xs[-1])
    if not 0 < target <= s_max:
        raise ValueError(f"allocation target must be in (0, {s_max}], got {target}")
    w = np.array(BYTE_SHARE) / L  # bytes share per unit of sparsity of (l, m)
    s = np.zeros((L, 2))
    f = lambda lm, v: np.interp(v, xs, curves[lm])  # noqa: E731
    while float((s * w).sum()) < target - 1e-9:
        best, best_rate = None, np.inf
        for li in range(L):
            for m in (0, 1):
                if s[li, m] + step > s_max + 1e-9:
                    continue
                rate = (f((li, m), s[li, m] + step) - f((li, m), s[li, m])) / (w[m] * step)
                if rate < best_rate:
                    best, best_rate = (li, m), rate
        if best is None:
            break
        s[best] += step
    return s


def allocate(model, table: torch.Tensor, grid_seqs, target: float, batch_size: int = 8, progress=None):
    """``(warped table [L, 2, Q], info)``: the greedy allocation at ``target`` folded into ``table``."""
    cost = sensitivities(model, table, grid_seqs, batch_size, progress=progress)
    s = greedy_allocation(cost, target)
    alloc = torch.tensor(s / target, dtype=torch.float32)
    info = {"rule": "greedy", "target": target, "levels": list(SENS_LEVELS), "step": STEP,
            "alloc_x": [round(float(v), 4) for v in alloc[:, 0]], "alloc_h": [round(float(v), 4) for v in alloc[:, 1]],
            "kl": np.round(cost, 6).tolist()}
    return warp_table(table, alloc.to(table.device)), info
