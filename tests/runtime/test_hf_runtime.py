"""HF integration: no effect when never firing / removed, real skipping when forced, row counting."""

import pytest
import torch

from sedac.adapter import adapt
from sedac.models.loading import load_hf
from sedac.runtime.hf import install
from sedac.runtime.policy import DynamicParams, SkipConfig
from sedac.testing.probes import random_probe


@pytest.fixture(scope="module")
def model_and_probe(tiny_llama):
    model, tok = load_hf(str(tiny_llama))
    probe = random_probe(adapt(model).fingerprint, layer=1, bands=[(2, 3)])
    ids = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(0))
    return model, probe, ids


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_never_fires_is_bit_identical_and_removable(model_and_probe):
    model, probe, ids = model_and_probe
    base = logits(model, ids)
    with install(model, probe, SkipConfig(mode="static", thresholds=[float("inf")])) as sk:
        assert torch.equal(logits(model, ids), base)
        assert sk.skip_rate()["all"] == 0.0
    with install(model, probe, SkipConfig(mode="never", thresholds=[0.0])):
        assert torch.equal(logits(model, ids), base)
    assert torch.equal(logits(model, ids), base)  # removed: nothing left behind
    assert all("forward" not in vars(m) for m in adapt(model).mlps)


def test_always_skips_and_matches_manual_zeroing(model_and_probe):
    model, probe, ids = model_and_probe
    base = logits(model, ids)
    with install(model, probe, SkipConfig(mode="always", thresholds=[0.0])) as sk:
        skipped = logits(model, ids)
        assert sk.skip_rate()["all"] == 1.0
    assert not torch.allclose(skipped, base)
    # reference: the same model with band MLPs replaced by zero output
    parts = adapt(model)
    saved = [parts.mlps[i].forward for i in (2, 3)]
    try:
        for i in (2, 3):
            parts.mlps[i].forward = lambda x: torch.zeros_like(x)
        ref = logits(model, ids)
    finally:
        for i in (2, 3):
            del parts.mlps[i].forward
    torch.testing.assert_close(skipped, ref)


@pytest.mark.parametrize("policy", ["token", "batch"])
def test_rows_reaching_mlp(model_and_probe, policy):
    """Token policy: skipped rows never reach the MLP. Batch: all-or-nothing per step."""
    model, probe, ids = model_and_probe
    parts = adapt(model)
    raw = None
    rows = {2: [], 3: []}
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states[1]
    # count the rows reaching the MLP's first matmul (inside the wrapped module)
    handles = [parts.mlps[i].gate_proj.register_forward_pre_hook(
        lambda m, a, i=i: rows[i].append(a[0].reshape(-1, a[0].shape[-1]).shape[0])) for i in (2, 3)]
    try:
        raw = probe.raw_scores(hs.reshape(-1, hs.shape[-1]))[:, 0]
        thr = float(raw.median())
        with install(model, probe, SkipConfig(policy=policy, mode="static", thresholds=[thr])) as sk:
            logits(model, ids)
            rate = sk.skip_rate()["all"]
    finally:
        for h in handles:
            h.remove()
    n_skip = int((raw >= thr).sum())
    if policy == "token":
        assert rows[2] == [ids.numel() - n_skip] and rows[3] == [ids.numel() - n_skip]
        assert rate == pytest.approx(n_skip / ids.numel())
    else:
        assert rows[2] == [ids.numel()] and rate == 0.0  # not every token confident -> band runs


def test_dynamic_generate_matches_teacher_forced(model_and_probe):
    """Per-token dynamic decisions are the same with a KV cache (generate) and teacher-forced."""
    model, probe, ids = model_and_probe
    cfg = SkipConfig(mode="dynamic", dynamic=[DynamicParams(lam=0.0, ref=0.1, gamma=1.0, prior_tokens=4)])
    prompt = ids[:1, :8]
    with install(model, probe, cfg, record=True) as sk:
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
        gen_dec = torch.cat([d for d in sk.decisions], dim=0)[:, 0]
        sk.reset_stats()
        logits(model, out[:, :-1])
        tf_dec = sk.decisions[0][:, 0]
    assert torch.equal(gen_dec, tf_dec)
    assert 0 < int(tf_dec.sum()) < tf_dec.numel()


def test_op_impl_matches_module_impl(model_and_probe):
    model, probe, ids = model_and_probe
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states[1]
    thr = float(probe.raw_scores(hs.reshape(-1, hs.shape[-1]))[:, 0].median())
    cfg = SkipConfig(mode="static", thresholds=[thr])
    with install(model, probe, cfg):
        a = logits(model, ids)
    with install(model, probe, cfg, impl="op"):
        b = logits(model, ids)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
