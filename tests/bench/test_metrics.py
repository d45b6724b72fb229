"""Metric functions on hand-made inputs with known answers."""

from __future__ import annotations

import math

import pytest

from sedac.bench import metrics as M


def test_tps_and_speedup():
    assert M.tps(300, 1.5) == 200.0
    assert M.per_request_tps([10, 20], [1.0, 4.0]) == pytest.approx((10 + 5) / 2)
    s = M.speedup([120.0, 90.0, 100.0], [100.0, 100.0, 80.0])
    assert s == {"median": 1.2, "min": 0.9, "max": 1.25, "n": 3}


def test_perplexity_and_agreement():
    assert M.perplexity(4 * math.log(3.0), 4) == pytest.approx(3.0)
    assert M.top1_agreement([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5


def test_greedy_agreement():
    base = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]
    outs = [[1, 2, 3, 4], [5, 6, 0, 8], [0, 9, 9, 9]]
    g = M.greedy_agreement(outs, base)
    assert g["identical_fraction"] == pytest.approx(1 / 3)
    assert g["mean_first_divergence"] == pytest.approx((2 + 0) / 2)
    assert g["mean_matched_prefix"] == pytest.approx((4 + 2 + 0) / 3)
    assert M.first_divergence([1, 2], [1, 2, 3]) == 2
    assert M.greedy_agreement(base, base)["mean_first_divergence"] is None


def test_mlp_cost_and_savings():
    c = M.mlp_cost(576, 1536, 4)
    assert c == {"flops": 2 * 3 * 576 * 1536, "bytes": 3 * 576 * 1536 * 4}
    s = M.mlp_savings(0.5, 6, 30, 576, 1536, 4)
    assert s["flops_saved_per_token"] == 0.5 * 6 * c["flops"]
    assert s["flops_saved_fraction_of_mlp"] == pytest.approx(0.1)
    assert "bytes_saved_per_step_batched" not in s
    batched = M.mlp_savings(0.25, 4, 8, 8, 16, 2, step_skip_rate=0.25)
    assert batched["bytes_saved_per_step_batched"] == 0.25 * 4 * 3 * 8 * 16 * 2


def test_spec_decode():
    # 10 steps drafting k=3 tokens each, 15 accepted: AR 0.5, tau 2.5, TRR 2.5/4
    m = M.spec_decode(10, 30, 15, 3)
    assert m["acceptance_rate"] == 0.5 and m["mean_acceptance_length"] == 2.5 and m["trr"] == 0.625
    assert m["trr"] == pytest.approx((1 + m["acceptance_rate"] * 3) / 4)
    assert math.isnan(M.spec_decode(0, 0, 0, 3)["acceptance_rate"])


def test_pareto_and_latency():
    assert M.pareto_front([(1.0, 1.0), (1.2, 0.9), (1.1, 0.8), (0.9, 1.0)]) == [0, 1]
    lat = M.latency_stats([0.1, 0.2, 0.3, 0.4, 1.0], [0.01, 0.02])
    assert lat["ttft_median_s"] == 0.3 and lat["ttft_p90_s"] == 1.0 and lat["itl_median_s"] == 0.01


def test_skip_rate():
    assert M.skip_rate(3, 12) == 0.25 and M.skip_rate(0, 0) == 0.0
