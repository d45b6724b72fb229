"""Greedy per-layer soft-skip allocation: the greedy rule, the warped table, the refusal to warp twice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sedac.calibration.soft_alloc import BYTE_SHARE, SENS_LEVELS, fit_costs, greedy_allocation, sensitivities
from sedac.runtime import soft as S


def _table(n_layers=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hist = S.MagnitudeHistogram(n_layers)
    for li in range(n_layers):
        hist.add(li, 0, torch.randn(512, 64, generator=g))
        hist.add(li, 1, torch.randn(512, 128, generator=g))
    return S.table_from_histograms(hist.counts), g


def test_greedy_spends_the_budget_where_it_is_cheap():
    lv = np.asarray(SENS_LEVELS)
    cost = np.zeros((3, 2, len(lv)))
    cost[0] = 10 * lv ** 2  # layer 0: expensive
    cost[1] = 0.1 * lv ** 2  # layer 1: cheap
    cost[2] = lv ** 2
    s = greedy_allocation(cost, target=0.2)
    w = np.array(BYTE_SHARE) / 3
    assert (s * w).sum() == pytest.approx(0.2, abs=0.005)  # the budget is met (to one step)
    assert (s[1] > s[2]).all() and (s[2] > s[0]).all()
    # equal marginal cost per byte: with c = k s^2, s is proportional to 1/k (up to one step)
    assert s[1, 0] / s[2, 0] == pytest.approx(10, rel=0.25)


def test_power_fit_recovers_the_curve():
    lv = np.asarray(SENS_LEVELS)
    cost = np.stack([np.stack([0.5 * lv ** 3, 2.0 * lv ** 1.5])])
    a, p = fit_costs(cost)
    assert a[0].tolist() == pytest.approx([0.5, 2.0], rel=1e-6) and p[0].tolist() == pytest.approx([3.0, 1.5], rel=1e-6)


def test_greedy_weighs_bytes_per_input():
    """Equal KL curves: x (2/3 of the bytes) is cheaper per byte, so it gets more sparsity than h."""
    cost = np.tile((np.asarray(SENS_LEVELS) ** 2)[None, None], (2, 2, 1))
    s = greedy_allocation(cost, target=0.15)
    assert (s[:, 0] > s[:, 1]).all()


def test_greedy_rejects_an_unreachable_target():
    with pytest.raises(ValueError, match="target"):
        greedy_allocation(np.zeros((2, 2, len(SENS_LEVELS))), target=0.95)


def test_warped_table_drops_alloc_times_level():
    table, g = _table()
    alloc = torch.tensor([[2.0, 0.5], [1.0, 1.0], [0.0, 3.0]])
    warped = S.warp_table(table, alloc)
    x = torch.randn(8192, 64, generator=g)
    h = torch.randn(8192, 128, generator=g)
    lv = torch.full((x.shape[0],), 0.2)
    for li in range(3):
        tx, th = S.thresholds(warped, li, lv, 1.0, 1.0)
        for a, t, want in ((x, tx, alloc[li, 0] * 0.2), (h, th, alloc[li, 1] * 0.2)):
            got = (S.sparsify(a, t) == 0).float().mean().item()
            assert abs(got - min(1.0, float(want))) < 0.015, (li, got, want)
    ones = S.warp_table(table, torch.ones(3, 2))
    assert torch.allclose(ones[..., :-1], table[..., :-1]) and torch.isinf(ones[..., -1]).all()


def test_sensitivity_grows_with_level(tiny_llama):
    from sedac.calibration.risk import CalSequence
    from sedac.models.loading import load_hf
    from sedac.runtime.hf_soft import measure_histograms

    model, _ = load_hf(str(tiny_llama), device="cpu")
    seqs = [CalSequence(ids=[(7 * i + 3 * j) % 250 + 3 for j in range(24)], first_scored=1)
            for i in range(3)]
    table = S.table_from_histograms(measure_histograms(model, [s.ids for s in seqs]).counts)
    cost = sensitivities(model, table, seqs, batch_size=2)
    assert cost.shape == (4, 2, len(SENS_LEVELS))
    assert (cost > 0).all()
    assert (np.diff(cost, axis=-1) > -1e-6).mean() > 0.8  # larger sparsity moves the output more (mostly)
