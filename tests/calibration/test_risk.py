"""Risk measurement on the real HF runtime (tiny random model): prefix cache exactness, batch policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sedac.calibration.policies import grid_values, parse_policy, skip_config
from sedac.calibration.risk import CalSequence, PrefixCache, _pad, full_pass, measure
from sedac.runtime.hf import install
from sedac.runtime.policy import SkipConfig
from sedac.testing.probes import random_probe


@pytest.fixture(scope="module")
def setup(tiny_llama):
    from sedac.adapter import adapt
    from sedac.models.loading import load_hf

    model, _ = load_hf(str(tiny_llama), device="cpu")
    parts = adapt(model)
    probe = random_probe(parts.fingerprint, layer=1, bands=[(1, 2), (3, 3)], seed=3)
    g = torch.Generator().manual_seed(0)
    seqs = [CalSequence(torch.randint(3, 500, (24,), generator=g).tolist(), 0) for _ in range(8)]
    full = full_pass(model, parts, probe, seqs, batch_size=3)
    return model, parts, probe, seqs, full


def _naive(model, probe, seqs, cfg, batch_step="forward"):
    ids, valid, _ = _pad(seqs, "cpu")
    with torch.no_grad(), install(model, probe, cfg, batch_step=batch_step) as sk:
        sk.valid = valid
        return model(input_ids=ids, use_cache=False).logits


def test_prefix_cache_is_exact(setup):
    model, parts, probe, seqs, full = setup
    cfg = skip_config(parse_policy("static-token"), probe, 0.5, 0.0, 1.0, 8.0)
    ref = _naive(model, probe, seqs[:4], cfg)
    ids, valid, _ = _pad(seqs[:4], "cpu")
    with torch.no_grad(), PrefixCache(parts, probe.layer) as st, install(model, probe, cfg) as sk:
        st["hidden"] = torch.stack([f["hidden"] for f in full[:4]])
        sk.valid = valid
        got = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # layers are restored afterwards
    assert all("forward" not in vars(layer) for layer in parts.layers)


def test_measure_matches_naive_top1(setup):
    model, parts, probe, seqs, full = setup
    cfg = skip_config(parse_policy("static-token"), probe, 0.5, 0.0, 1.0, 8.0)
    risk, skip = measure(model, parts, probe, seqs, full, cfg, unit_size=1, batch_size=3, risk="top1", nll_margin=0.0)
    logits = _naive(model, probe, seqs, cfg)
    want = [(logits[i, :-1].argmax(-1) != full[i]["top1"][:-1]).float().mean().item() for i in range(len(seqs))]
    np.testing.assert_allclose(risk, want, atol=1e-9)
    assert 0 < skip.mean() < 1
    assert risk.max() > 0  # a random probe at P(safe) >= 0.5 does change predictions of a random model


def test_never_and_always(setup):
    model, parts, probe, seqs, full = setup
    r0, k0 = measure(model, parts, probe, seqs, full, SkipConfig(mode="never", thresholds=[0, 0]),
                     unit_size=1, batch_size=4, risk="nll", nll_margin=1e-4)
    assert r0.max() == 0 and k0.max() == 0
    r1, k1 = measure(model, parts, probe, seqs, full, SkipConfig(mode="always", thresholds=[0, 0]),
                     unit_size=1, batch_size=4, risk="top1", nll_margin=0.0)
    np.testing.assert_allclose(k1, 1.0)
    assert r1.mean() > 0


def test_batch_policy_ands_over_rows_at_each_position(setup):
    model, parts, probe, seqs, full = setup
    cfg_tok = skip_config(parse_policy("static-token"), probe, 0.3, 0.0, 1.0, 8.0)
    cfg_b = skip_config(parse_policy("static-batch"), probe, 0.3, 0.0, 1.0, 8.0)
    ids, valid, _ = _pad(seqs[:4], "cpu")
    with torch.no_grad(), install(model, probe, cfg_b, record=True, batch_step="position") as sk:
        model(input_ids=ids, use_cache=False)
        dec = sk.decisions[-1].view(4, ids.shape[1], -1)
    with torch.no_grad(), install(model, probe, cfg_tok, record=True) as sk:
        model(input_ids=ids, use_cache=False)
        tok = sk.decisions[-1].view(4, ids.shape[1], -1)
    assert torch.equal(dec, tok.all(0, keepdim=True).expand_as(tok))
    assert tok.any() and not torch.equal(dec, tok)  # the grouping really changes decisions
    r, k = measure(model, parts, probe, seqs, full, cfg_b, unit_size=4, batch_size=8, risk="top1", nll_margin=0.0)
    _, kt = measure(model, parts, probe, seqs, full, cfg_tok, unit_size=1, batch_size=8, risk="top1", nll_margin=0.0)
    assert r.shape == (2,) and k.mean() <= kt.mean()


def test_grid_is_ordered_conservative_to_aggressive(setup):
    model, parts, probe, seqs, full = setup
    raw = torch.cat([f["raw"].reshape(-1) for f in full]).numpy()
    for name in ("static-token", "dynamic-token"):
        spec = parse_policy(name)
        g = grid_values(spec, probe, raw, 8, 0.01, 0.5)
        assert len(g) >= 4 and all(a > b for a, b in zip(g, g[1:]))
        ks = [measure(model, parts, probe, seqs, full, skip_config(spec, probe, v, float(raw.mean()), 1.0, 8.0),
                      unit_size=1, batch_size=8, risk="top1", nll_margin=0.0)[1].mean() for v in (g[0], g[-1])]
        assert ks[0] < ks[1]


def test_dynamic_effective_score_reproduces_runtime_decisions(setup):
    from sedac.calibration.policies import dynamic_effective

    model, parts, probe, seqs, full = setup
    ref, lam = 0.1, 0.05
    cfg = skip_config(parse_policy("dynamic-token"), probe, lam, ref, 1.0, 8.0)
    ids, valid, _ = _pad(seqs[:2], "cpu")
    with torch.no_grad(), install(model, probe, cfg, record=True) as sk:
        model(input_ids=ids, use_cache=False)
        dec = sk.decisions[-1].view(2, ids.shape[1], -1)
    for i in range(2):
        eff = dynamic_effective(full[i]["raw"].numpy(), ref, 1.0, 8.0)
        agree = (torch.from_numpy(eff >= lam) == dec[i]).float().mean()
        assert agree > 0.99  # equal up to float rounding at the boundary


def test_batch_unit_risk_is_max_of_token_rule_and_b_concurrent(setup):
    """The batch policy's unit risk is the larger of its sequences' risk under the below-B token rule
    and under B concurrent decode steps; its grid pairs are ordered conservative -> aggressive."""
    import dataclasses

    from sedac.calibration import CalibrateConfig
    from sedac.calibration.run import and_pool, measure_policy

    model, parts, probe, seqs, full = setup
    cfg = CalibrateConfig(probe="p", n_sequences=8, grid_sequences=2, grid_size=4, grid_min_skip=0.05,
                          grid_max_skip=0.6, batch_concurrency=2, epsilon=0.9, delta=0.1, test_fraction=0.0,
                          stop_factor=0, policies=["static-batch"])
    raws = [f["raw"].numpy() for f in full]
    pools = (np.concatenate([r.reshape(-1) for r in raws]), and_pool(raws, [0] * len(raws), 2))
    spec = parse_policy("static-batch")
    m = measure_policy(cfg, spec, model, parts, probe, seqs, full, pools, 0.0)
    g, u = m["grid"], m["below_b"]
    assert len(g) >= 3 and all(a >= b for a, b in zip(g, g[1:])) and all(a >= b for a, b in zip(u, u[1:]))
    bigger_token = 0
    for j in range(len(g)):
        tok = skip_config(parse_policy("static-token"), probe, u[j], 0.0, 1.0, 8.0)
        rt, _ = measure(model, parts, probe, seqs, full, tok, unit_size=1, batch_size=8, risk="top1", nll_margin=0.0)
        bat = dataclasses.replace(skip_config(spec, probe, g[j], 0.0, 1.0, 8.0), min_rows=2,
                                  below_b_offset=[tok.thresholds[0] - probe.raw_threshold(g[j])])
        rb, _ = measure(model, parts, probe, seqs, full, bat, unit_size=2, batch_size=8, risk="top1", nll_margin=0.0)
        rt_g = rt.reshape(-1, 2).mean(1)
        np.testing.assert_allclose(m["risk"][:, j], np.maximum(rt_g, rb), atol=1e-12)
        bigger_token += int((rt_g > rb).any())
    assert bigger_token > 0  # the token-rule side really binds somewhere (max is not just the B side)
