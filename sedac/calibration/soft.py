"""Calibration of soft-skip policies (``soft-uniform``, ``soft-probe``) on the real HF runtime.

Same guarantee and procedure as the whole-MLP policies (:mod:`sedac.calibration.ltt`): the scalar
certified is the base level ``lam`` of :class:`sedac.runtime.soft.SoftParams`, on a grid fixed before
the calibration units are seen (``--soft-levels``, increasing = conservative to aggressive). Per unit
(a sequence), the risk is the share of scored positions whose top-1 differs from the full model's,
teacher-forced, and the "skip" figure is the **fraction of all MLP weight bytes not read**: per token,
the mean over every MLP layer of :func:`sedac.runtime.soft.bytes_saved_fraction` (the weight columns
whose input entry is zero after masking), averaged over the scored positions.

The magnitude quantile table (:func:`sedac.runtime.soft.table_from_histograms`) comes from the probe
file when it carries one (``sedac collect`` + ``train-probe``), else it is measured here on the
grid-selection sequences (disjoint from the units) and written into the calibrated probe. ``ref`` and
``scale`` of the probe family are the mean/std of the raw probe score on the same grid sequences;
``gamma`` and the x/h allocation are fixed by the config.
"""

from __future__ import annotations

import numpy as np
import torch

from sedac.calibration.risk import _pad, _targets_logp, per_sequence
from sedac.runtime.hf_soft import install_soft, measure_histograms
from sedac.runtime.soft import SoftParams, table_from_histograms


def soft_table(probe, model, grid_seqs) -> tuple[torch.Tensor, str]:
    """``(table [L, 2, Q], source)``: the probe's own table, or one measured on ``grid_seqs``."""
    t = probe.soft_table()
    if t is not None:
        return t, "probe"
    hist = measure_histograms(model, [s.ids for s in grid_seqs], valid_from=[0] * len(grid_seqs))
    return table_from_histograms(hist.counts), "grid-selection sequences"


def allocated_table(cfg, probe, model, table, source: str, grid_seqs, bar=None):
    """``(table, source, info)`` with the greedy per-layer allocation folded in (``--soft-alloc greedy``)."""
    from sedac.calibration.soft_alloc import allocate
    from sedac.errors import ConfigError

    if "allocation" in (probe.meta.soft or {}).get("source", ""):
        raise ConfigError("--soft-alloc greedy: this probe's soft table already has an allocation folded in "
                          f"({probe.meta.soft['source']}); calibrate the probe it came from, or use --soft-alloc uniform")
    task = bar.add_task("soft alloc    ", total=2 * table.shape[0]) if bar is not None else None
    table, info = allocate(model, table, grid_seqs, cfg.soft_alloc_target, cfg.batch_size,
                           progress=(lambda k: bar.advance(task, k)) if bar is not None else None)
    return table, f"{source} + greedy allocation (target {cfg.soft_alloc_target:g}) on grid-selection sequences", info


def soft_params(family: str, lam: float, cfg, ref: float, scale: float) -> SoftParams:
    if family == "uniform":
        return SoftParams(family="uniform", lam=float(lam), a_x=cfg.soft_a_x, a_h=cfg.soft_a_h)
    return SoftParams(family="probe", lam=float(lam), gamma=cfg.soft_gamma, ref=ref, scale=scale,
                      a_x=cfg.soft_a_x, a_h=cfg.soft_a_h)


@torch.no_grad()
def measure_soft(model, probe, seqs, full, params: SoftParams, table, *, batch_size: int, risk: str,
                 nll_margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence risk and MLP-weight-bytes-saved fraction ``([n], [n])`` of one soft setting."""
    dev = next(model.parameters()).device
    seq_risk, seq_saved = [], []
    with install_soft(model, params, table, probe=probe if params.family == "probe" else None, record=True) as sk:
        n_layers = sk.parts.num_layers
        for s in range(0, len(seqs), batch_size):
            chunk, ref = seqs[s: s + batch_size], full[s: s + batch_size]
            ids, valid, scored = _pad(chunk, dev)
            sk.valid = valid
            logits = model(input_ids=ids, attention_mask=valid.long(), use_cache=False).logits
            top1, logp = _targets_logp(logits, ids)
            del logits
            saved = (sk.row_saved / n_layers).view(ids.shape)  # [b, T] share of all MLP bytes not read
            per_sequence(chunk, ref, scored, top1, logp, saved, risk, nll_margin, seq_risk, seq_saved)
    return np.asarray(seq_risk), np.asarray(seq_saved)


def measure_soft_policy(cfg, family: str, model, probe, seqs, full, table, ref: float, scale: float,
                        bar=None) -> dict:
    """Grid, risk matrix ``[n_units, G]`` and bytes-saved matrix for one soft family (NaN after a stop)."""
    grid = [float(v) for v in cfg.soft_levels]
    R = np.full((len(seqs), len(grid)), np.nan)
    K = np.full((len(seqs), len(grid)), np.nan)
    task = bar.add_task(f"soft-{family:9s}", total=len(grid)) if bar is not None else None
    for j, lam in enumerate(grid):
        p = soft_params(family, lam, cfg, ref, scale)
        R[:, j], K[:, j] = measure_soft(model, probe, seqs, full, p, table, batch_size=cfg.batch_size,
                                        risk=cfg.risk, nll_margin=cfg.nll_margin)
        if bar is not None:
            bar.advance(task)
        if cfg.stop_factor > 0 and R[:, j].mean() > cfg.stop_factor * cfg.epsilon:
            break
    return {"grid": grid, "risk": R, "skip": K, "unit_size": 1, "bytes_factor": 1.0}


def probe_score_stats(probe, full_grid, grid_seqs) -> tuple[float, float]:
    """Mean and std of the first band's raw probe score over the grid sequences' scored positions."""
    pool = np.concatenate([f["raw"][s.first_scored: len(s.ids) - 1, 0].numpy() for f, s in zip(full_grid, grid_seqs)])
    return float(pool.mean()), float(max(pool.std(), 1e-6))
