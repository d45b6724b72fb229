"""The confidence bounds and the fixed-sequence logic on synthetic risks with known means."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sedac.calibration.bounds import bentkus_pvalue, hb_pvalue, hoeffding_pvalue, pvalue, ucb
from sedac.calibration.ltt import certify, fixed_sequence, resampling_check


@pytest.mark.parametrize("bound", ["hb", "wsr"])
@pytest.mark.parametrize("dist", ["bernoulli", "beta"])
def test_ucb_coverage(bound, dist):
    """P(true mean > UCB) <= delta over 2000 trials (HB) / 500 trials (WSR, slower)."""
    delta, n = 0.1, 50
    trials = 2000 if bound == "hb" else 500
    rng = np.random.default_rng(1)
    if dist == "bernoulli":
        mean = 0.08
        x = (rng.random((trials, n)) < mean).astype(float)
    else:
        a, b = 0.5, 4.5
        mean = a / (a + b)
        x = rng.beta(a, b, (trials, n))
    miss = sum(mean > ucb(row, delta, bound, tol=1e-4) for row in x)
    # exact-level check with binomial slack: a valid bound misses <= delta (+3 sd of the estimate)
    assert miss / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)


def test_pvalue_validity_at_the_null_boundary():
    """At R = eps the rejection rate of p <= delta stays <= delta."""
    rng = np.random.default_rng(2)
    eps, delta, n = 0.05, 0.1, 200
    x = (rng.random((2000, n)) < eps).astype(float)
    rej = np.mean([hb_pvalue(row.mean(), n, eps) <= delta for row in x])
    assert rej <= delta + 3 * math.sqrt(delta * (1 - delta) / 2000)


def test_bound_is_not_trivial_and_not_normal():
    """Zero observed risk on 300 units certifies ~1%; the bound is above the mean and below 1."""
    zeros = np.zeros(300)
    assert ucb(zeros, 0.05) < 0.012
    half = np.full(40, 0.5)
    u = ucb(half, 0.05)
    assert 0.5 < u < 0.8
    # HB is the min of Hoeffding and Bentkus; Bentkus wins at a moderate empirical risk
    assert bentkus_pvalue(0.01, 300, 0.03) < hoeffding_pvalue(0.01, 300, 0.03)
    for m in (0.0, 0.01):
        assert hb_pvalue(m, 300, 0.03) == min(bentkus_pvalue(m, 300, 0.03), hoeffding_pvalue(m, 300, 0.03))
    assert pvalue([0.3] * 10, 0.1) == 1.0  # empirical risk above eps: never rejected by Hoeffding/Bentkus
    with pytest.raises(ValueError):
        pvalue([1.5], 0.1)


def test_fixed_sequence_stops_at_first_failure():
    assert fixed_sequence([0.01, 0.02, 0.5, 0.001, 0.001], 0.05) == 1
    assert fixed_sequence([0.5, 0.001], 0.05) is None
    assert fixed_sequence([0.01, 0.01, 0.01], 0.05) == 2
    assert fixed_sequence([0.01, float("nan"), 0.01], 0.05) == 0


def test_certify_stops_even_if_later_points_pass():
    """Grid column 1 is risky, column 2 is safe again: LTT must certify column 0 only."""
    n = 400
    r = np.zeros((n, 3))
    r[: n // 2, 1] = 0.5  # mean 0.25 >> eps
    res = certify(r, eps=0.05, delta=0.05)
    assert res.index == 0
    assert math.isnan(res.pvalues[2])  # never tested
    assert res.risks[1] == pytest.approx(0.25)


def test_certify_monotone_grid_picks_last_safe_point():
    rng = np.random.default_rng(3)
    n = 500
    means = [0.0, 0.002, 0.01, 0.05, 0.2]
    r = np.stack([(rng.random(n) < m).astype(float) for m in means], 1)
    res = certify(r, eps=0.05, delta=0.05)
    assert res.index == 2
    assert all(u >= m for u, m in zip(res.ucbs, res.risks))


def test_resampling_check_exceedance_is_about_delta():
    """Risks exactly at the grid boundary: the fraction of splits with test risk > eps stays small."""
    rng = np.random.default_rng(4)
    n = 600
    means = [0.0, 0.01, 0.03, 0.05, 0.08, 0.15]
    r = np.stack([(rng.random(n) < m).astype(float) for m in means], 1)
    out = resampling_check(r, eps=0.05, delta=0.1, bound="hb", test_fraction=0.5, n_splits=40)
    assert out["n_splits"] == 40 and out["certified_fraction"] == 1.0
    assert out["exceed_fraction"] <= 0.2


def test_min_epsilon_is_the_zero_risk_limit():
    from sedac.calibration.bounds import min_epsilon

    for n in (30, 128, 300):
        e = min_epsilon(n, 0.05)
        assert pvalue(np.zeros(n), e * 1.01) <= 0.05 < pvalue(np.zeros(n), e * 0.99)
    assert 0.009 < min_epsilon(300, 0.05) < 0.011


def test_auto_bound_is_chosen_a_priori_and_matches_the_comparison():
    """``auto`` depends on (n, eps, delta) only; on matrices shaped like sedac's (scripts/bound_comparison.py)
    the bound it picks certifies at least as far along the grid as the other one, on both sides of the rule."""
    import sys
    from pathlib import Path

    from sedac.calibration.bounds import resolve_bound
    from sedac.calibration.ltt import certify

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from bound_comparison import simulate

    assert resolve_bound("auto", 174, 0.05, 0.05) == "wsr" and resolve_bound("auto", 80, 0.05, 0.05) == "hb"
    assert resolve_bound("hb", 1000, 0.05, 0.05) == "hb"
    means = np.geomspace(0.002, 0.2, 12)
    for n in (80, 174):
        rng = np.random.default_rng(1)
        idx = {b: [] for b in ("hb", "wsr")}
        for _ in range(30):
            m = simulate(rng, means, n, 32, 0.2)
            for b in idx:
                i = certify(m, 0.05, 0.05, b, with_ucb=False).index
                idx[b].append(-1 if i is None else i)
        chosen = resolve_bound("auto", n, 0.05, 0.05)
        other = "hb" if chosen == "wsr" else "wsr"
        assert np.mean(idx[chosen]) > np.mean(idx[other]), (n, idx)
