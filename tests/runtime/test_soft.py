"""Soft skip: the level -> threshold map, the masked MLP math (HF reference) and the probe-file table."""

from __future__ import annotations

import math

import pytest
import torch

from sedac.errors import ConfigError
from sedac.runtime import soft as S


def _table(n_layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    hist = S.MagnitudeHistogram(n_layers)
    for li in range(n_layers):
        hist.add(li, 0, torch.randn(512, 64, generator=g))
        hist.add(li, 1, torch.randn(512, 128, generator=g) * 0.1)
    return S.table_from_histograms(hist.counts), g


def test_thresholds_drop_the_requested_fraction():
    table, g = _table()
    x = torch.randn(4096, 64, generator=g)  # same distribution as the histogram
    for s in (0.1, 0.25, 0.5, 0.8):
        thr_x, thr_h = S.thresholds(table, 0, torch.full((x.shape[0],), s), 1.0, 1.0)
        dropped = (S.sparsify(x, thr_x) == 0).float().mean().item()
        assert abs(dropped - s) < 0.01, (s, dropped)
        assert (thr_h < thr_x).all()  # h was recorded at a 10x smaller scale


def test_level_ends_keep_all_and_drop_all():
    table, g = _table()
    lv = torch.tensor([0.0, 1.0, 0.6])
    thr_x, thr_h = S.thresholds(table, 1, lv, 1.0, 2.0)
    assert thr_x[0] == 0 and thr_h[0] == 0
    assert math.isinf(thr_x[1]) and math.isinf(thr_h[1])
    assert math.isinf(thr_h[2]) and not math.isinf(thr_x[2])  # a_h = 2: h fully dropped at level 0.6


def test_garbage_rows_keep_everything_and_index_in_range():
    """vLLM's warm-up runs the model on uninitialised rows: NaN scores must not index outside the table
    (the compiled CPU kernel aborted the engine on exactly this: ``index out of bounds: 0 <= tmp < 201``)."""
    table, _ = _table()
    p = S.SoftParams(family="probe", lam=0.3, gamma=0.2, ref=0.0, scale=1.0)
    raw = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
    lv = S.levels(raw, p, 4, raw.device)
    assert lv.tolist() == pytest.approx([0.0, 1.0, 0.0, 0.3])
    thr_x, thr_h = S.thresholds(table, 0, torch.tensor([float("nan"), 0.3]), 1.0, 1.0)
    assert thr_x[0] == 0 and thr_h[0] == 0 and thr_x[1] > 0


def test_probe_levels_monotone_in_lam_and_clipped():
    raw = torch.linspace(-5, 5, 11)
    prev = None
    for lam in (0.0, 0.1, 0.3, 0.9):
        p = S.SoftParams(family="probe", lam=lam, gamma=0.2, ref=0.0, scale=1.0)
        lv = S.levels(raw, p, raw.numel(), raw.device)
        assert float(lv.min()) >= 0 and float(lv.max()) <= 1
        assert bool((lv[1:] >= lv[:-1]).all())  # more confident -> higher level
        if prev is not None:
            assert bool((lv >= prev).all())
        prev = lv
    u = S.levels(raw, S.SoftParams(lam=0.3), raw.numel(), raw.device)
    assert torch.equal(u, torch.full_like(u, 0.3))


def test_params_validation():
    with pytest.raises(ConfigError, match="lam"):
        S.SoftParams(lam=1.5)
    with pytest.raises(ConfigError, match="gamma = 0"):
        S.SoftParams(family="uniform", gamma=0.1)
    with pytest.raises(ConfigError, match="family"):
        S.SoftParams(family="magic")


def _mlp(h=64, i=128, seed=0):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(seed)
    m = LlamaMLP(LlamaConfig(hidden_size=h, intermediate_size=i, hidden_act="silu"))
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    return m


@torch.no_grad()
def test_hf_soft_mlp_matches_reference_math():
    mlp = _mlp()
    x = torch.randn(6, 64)
    thr_x, thr_h = torch.rand(6) * 0.8, torch.rand(6) * 0.05
    thr_x[0] = thr_h[0] = 0.0
    thr_x[1] = math.inf
    y, zx, zh = S.hf_soft_mlp(mlp, x, thr_x, thr_h)
    xm = torch.where(x.abs() >= thr_x[:, None], x, 0.0)
    h = torch.nn.functional.silu(mlp.gate_proj(xm)) * mlp.up_proj(xm)
    hm = torch.where(h.abs() >= thr_h[:, None], h, 0.0)
    torch.testing.assert_close(y, mlp.down_proj(hm))
    assert torch.equal(y[0], mlp(x)[0])  # threshold 0: bit-identical to the dense MLP
    assert torch.equal(y[1], torch.zeros(64)) and zx[1] == 64 and zh[1] == 128  # +inf: whole MLP dropped
    assert torch.equal(zx, (xm == 0).sum(-1)) and torch.equal(zh, (hm == 0).sum(-1))
    frac = S.bytes_saved_fraction(zx, zh, 64, 128)
    assert frac[1] == pytest.approx(1.0) and frac[0] == pytest.approx(0.0)


@torch.no_grad()
def test_hf_soft_skipper_level_zero_identical_and_removable(tiny_llama):
    from sedac.models.loading import load_hf
    from sedac.runtime.hf_soft import install_soft, measure_histograms

    model, _ = load_hf(str(tiny_llama), device="cpu")
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    base = model(input_ids=ids).logits
    hist = measure_histograms(model, ids.tolist())
    table = S.table_from_histograms(hist.counts)
    with install_soft(model, S.SoftParams(lam=0.0), table) as sk:
        assert torch.equal(model(input_ids=ids).logits, base)
        assert sk.bytes_saved() == pytest.approx(0.0, abs=1e-6)
    with install_soft(model, S.SoftParams(lam=0.3), table) as sk:
        out = model(input_ids=ids).logits
        assert not torch.equal(out, base)
        assert 0.25 < sk.bytes_saved() < 0.35  # level 0.3 zeroes ~30 % of x and h in every layer
    assert torch.equal(model(input_ids=ids).logits, base)  # removed


def test_probe_file_soft_table_round_trip(tmp_path, tiny_llama):
    from sedac.adapter import adapt
    from sedac.models.loading import load_hf
    from sedac.probes import load_probe
    from sedac.testing.probes import random_probe

    model, _ = load_hf(str(tiny_llama), device="cpu")
    fp = adapt(model).fingerprint
    p = random_probe(fp, layer=1, bands=[(2, 3)], seed=5)
    p.save(tmp_path / "v1.safetensors")
    assert load_probe(tmp_path / "v1.safetensors").soft_table() is None  # no table: loads as before
    n = fp["num_layers"]
    table, _ = _table(n)
    p.set_soft_table(table, "test")
    p.save(tmp_path / "v2.safetensors")
    q = load_probe(tmp_path / "v2.safetensors")
    assert q.meta.format_version == 2 and q.meta.soft["source"] == "test"
    assert torch.equal(q.soft_table(), table)

