"""Unit tests of the skip policy (sedac.runtime.policy): pure tensor functions, no model."""

import math

import pytest
import torch

from sedac.errors import ConfigError, ProbeError
from sedac.runtime import policy as P
from sedac.testing.probes import random_probe

FP = {"architecture": "LlamaForCausalLM", "hidden_size": 8, "num_layers": 6, "vocab_size": 32, "config_hash": "x"}


def test_config_validation_names_the_problem():
    with pytest.raises(ConfigError, match="policy"):
        P.SkipConfig(policy="row", thresholds=[0.0])
    with pytest.raises(ConfigError, match="mode"):
        P.SkipConfig(mode="sometimes", thresholds=[0.0])
    with pytest.raises(ConfigError, match="thresholds"):
        P.SkipConfig(mode="static")
    with pytest.raises(ConfigError, match="dynamic"):
        P.SkipConfig(mode="dynamic")


def test_token_and_batch_policies():
    raw = torch.tensor([[1.0, -1.0], [2.0, 0.5], [0.2, 3.0]])
    thr = torch.tensor([0.5, 0.0])
    tok = P.decide(raw, P.SkipConfig(thresholds=[0.5, 0.0]), thr=thr)
    assert tok.tolist() == [[True, False], [True, True], [False, True]]
    bat = P.decide(raw, P.SkipConfig(policy="batch", thresholds=[0.5, 0.0]), thr=thr)
    assert bat.tolist() == [[False, False]] * 3  # no band has every token confident
    raw2 = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    assert P.decide(raw2, P.SkipConfig(policy="batch", thresholds=[0.0]), thr=thr).tolist() == [[True, False]] * 2


def test_valid_rows_never_skip_and_do_not_block_batch():
    raw = torch.tensor([[1.0], [1.0], [-5.0]])
    valid = torch.tensor([True, True, False])  # padding row would veto the batch skip
    out = P.decide(raw, P.SkipConfig(policy="batch", thresholds=[0.0]), thr=torch.tensor([0.0]), valid=valid)
    assert out[:, 0].tolist() == [True, True, False]


def test_batch_rule_below_b_rows_is_the_token_rule():
    """Steps with fewer than min_rows real rows: token rule; >= min_rows: all-or-nothing; padding
    rows neither vote nor count towards min_rows."""
    thr = torch.tensor([0.0])
    cfg = P.SkipConfig(policy="batch", thresholds=[0.0], min_rows=3)
    two = torch.tensor([[1.0], [-1.0]])
    assert P.decide(two, cfg, thr=thr)[:, 0].tolist() == [True, False]  # 2 rows < 3: per token
    three = torch.tensor([[1.0], [-1.0], [2.0]])
    assert P.decide(three, cfg, thr=thr)[:, 0].tolist() == [False, False, False]  # one row fails: none skip
    three_ok = torch.tensor([[1.0], [0.5], [2.0]])
    assert P.decide(three_ok, cfg, thr=thr)[:, 0].tolist() == [True, True, True]
    # 2 real rows + 2 padding rows (scores that would pass) -> still below 3 real rows: token rule
    padded = torch.tensor([[1.0], [-1.0], [9.0], [9.0]])
    valid = torch.tensor([True, True, False, False])
    assert P.decide(padded, cfg, thr=thr, valid=valid)[:, 0].tolist() == [True, False, False, False]
    # per-position steps (dim 0 = rows, dim 1 = positions), as the HF emulation calls it
    tok = torch.tensor([[[True], [True]], [[True], [False]], [[True], [True]]])  # [3 rows, 2 positions, 1]
    v = torch.tensor([[True, True], [True, True], [True, False]])  # position 1 has 2 real rows
    out = P.batch_rule(tok, v, 3, dim=0)[..., 0]
    assert out[:, 0].tolist() == [True, True, True] and out[:, 1].tolist() == [True, False, False]


def test_batch_concurrency_one_is_refused():
    with pytest.raises(ConfigError, match=">= 2"):
        P.SkipConfig(policy="batch", thresholds=[0.0], min_rows=1)
    P.SkipConfig(policy="token", thresholds=[0.0], min_rows=1)  # irrelevant for the token policy


def test_never_and_always_modes():
    raw = torch.randn(5, 2)
    assert not P.decide(raw, P.SkipConfig(mode="never", thresholds=[0.0])).any()
    assert P.decide(raw, P.SkipConfig(mode="always", thresholds=[0.0])).all()


def test_running_mean_before_matches_loop():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(7, 2, generator=g)
    seq_start = torch.tensor([True, False, False, True, True, False, False])
    prior_sum = torch.full((7, 2), 4.0)
    prior_cnt = torch.full((7,), 8.0)
    m = P.running_mean_before(raw, seq_start, prior_sum, prior_cnt)
    ref = torch.empty_like(raw)
    s, c = None, None
    for t in range(7):
        if seq_start[t]:
            s, c = prior_sum[t].clone(), float(prior_cnt[t])
        ref[t] = s / c
        s, c = s + raw[t], c + 1
    torch.testing.assert_close(m, ref)


def test_dynamic_threshold_direction():
    lam, ref, gamma = torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([2.0])
    hard = P.dynamic_thresholds(torch.tensor([[0.0]]), lam, ref, gamma)  # request harder than usual
    easy = P.dynamic_thresholds(torch.tensor([[2.0]]), lam, ref, gamma)
    assert hard.item() > 0.0 > easy.item()


def test_thresholds_from_probe():
    probe = random_probe(FP, layer=2, bands=[(3, 4), (5, 5)])
    cfg = P.thresholds_from_probe(probe, override=0.9)
    assert cfg.mode == "static" and cfg.thresholds == pytest.approx([math.log(9.0)] * 2)
    with pytest.raises(ProbeError, match="calibrate"):
        P.thresholds_from_probe(probe)  # uncalibrated, certified requested
    with pytest.raises(ConfigError, match="static"):
        P.thresholds_from_probe(probe, mode="dynamic", override=0.5)
    probe.meta.calibration = {"thresholds": {"static": {"token": {"3-4": 0.8, "5-5": 0.7}},
                                             "dynamic": {"token": {"3-4": {"lam": 0.1, "ref": 0.2},
                                                                   "5-5": {"lam": 0.3, "ref": 0.4}}}}}
    cfg = P.thresholds_from_probe(probe, policy="token")
    assert cfg.thresholds == pytest.approx([math.log(4.0), math.log(0.7 / 0.3)])
    dyn = P.thresholds_from_probe(probe, mode="dynamic")
    assert [d.lam for d in dyn.dynamic] == [0.1, 0.3]
    with pytest.raises(ProbeError, match="batch"):
        P.thresholds_from_probe(probe, policy="batch")
    probe.meta.calibration["thresholds"]["static"]["batch"] = {"3-4": 0.8, "5-5": 0.7}
    with pytest.raises(ProbeError, match="batch_concurrency"):  # older calibration without B: refused
        P.thresholds_from_probe(probe, policy="batch")
    probe.meta.calibration["batch_concurrency"] = 4
    assert P.thresholds_from_probe(probe, policy="batch").min_rows == 4
    with pytest.raises(ConfigError, match="certified at"):
        P.thresholds_from_probe(probe, policy="batch", batch_concurrency=8)
    assert P.thresholds_from_probe(probe, policy="batch", override=0.9, batch_concurrency=8).min_rows == 8


def test_dtype_mismatch_warning():
    from sedac.runtime.config import dtype_mismatch

    probe = random_probe(FP, layer=2, bands=[(3, 4)])
    assert dtype_mismatch(probe, "bfloat16") is None  # no calibration dtype recorded
    probe.meta.calibration = {"dtype": "float32"}
    assert dtype_mismatch(probe, "float32") is None and dtype_mismatch(probe, "torch.float32") is None
    msg = dtype_mismatch(probe, "bfloat16")
    assert msg and "certified in float32" in msg and "bfloat16" in msg
    assert dtype_mismatch(probe, "bfloat16", certified=False) is None  # explicit thresholds: no certificate


def test_serve_precheck_warns_when_dtype_differs(capsys):
    from sedac.runtime.serve import ServeConfig, _warn_dtype

    probe = random_probe(FP, layer=2, bands=[(3, 4)])
    probe.meta.calibration = {"dtype": "float32"}
    _warn_dtype(ServeConfig(model="m", probe="p", vllm_args=["--dtype", "bfloat16"]), probe, certified=True)
    assert "certified in float32 but are served in bfloat16" in capsys.readouterr().err
    _warn_dtype(ServeConfig(model="m", probe="p", vllm_args=["--dtype=float32"]), probe, certified=True)
    assert capsys.readouterr().err == ""
