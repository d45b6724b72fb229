"""Soft-skip data from `sedac collect` on the tiny model: histograms, label table, soft labels, resume."""

from __future__ import annotations

import json

import pytest
import torch

from sedac.collect import CollectConfig, collect
from sedac.collect.run import SimulatedInterruption
from sedac.collect.shards import load_shard, open_shards
from sedac.collect.soft import read_hist, read_label_table
from sedac.errors import ConfigError

LEVELS = [0.25, 0.5]  # positions 50 and 100 of the 201-point quantile grid: thresholds are table entries


def _cfg(tiny, data, out, **kw):
    base = dict(out=str(out), model=str(tiny), dataset=str(data), mode="corpus", max_length=24, layers=[2],
                bands=[], soft_levels=LEVELS, batch_size=3, shard_tokens=60, progress=False)
    base.update(kw)
    return CollectConfig(**base)


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def soft_run(tiny_llama, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("soft_run")
    mp = pytest.MonkeyPatch()
    mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
    try:
        collect(_cfg(tiny_llama, corpus_file, out))
    finally:
        mp.undo()
    return out


@pytest.fixture(scope="module")
def model_and_seqs(soft_run, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sedac.collect.data import load_sequences

    m = json.loads((soft_run / "manifest.json").read_text())
    cfg = CollectConfig(**m["config"], out=str(soft_run))
    seqs, _ = load_sequences(cfg, AutoTokenizer.from_pretrained(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return model, [s.ids for s in seqs]


def test_histograms_count_exactly_the_real_tokens(soft_run, model_and_seqs):
    from sedac.runtime.hf_soft import measure_histograms
    from sedac.runtime.soft import N_BINS

    model, seqs = model_and_seqs
    m, _ = open_shards(soft_run)
    assert m["soft_hist"]["file"] == "soft_hist.safetensors" and m["soft_hist"]["n_shards"] == len(m["shards"])
    assert not list(soft_run.glob("soft_hist-*"))  # the running files are gone once complete
    counts = read_hist(soft_run, m)
    L, H, inter = 4, model.config.hidden_size, model.config.intermediate_size
    assert counts.shape == (L, 2, N_BINS) and counts.dtype == torch.float64
    n = m["n_tokens"]
    assert n == sum(len(s) for s in seqs)
    # padding excluded: every layer counted H entries of x and I entries of h per real token
    assert torch.equal(counts[:, 0].sum(-1), torch.full((L,), float(n * H), dtype=torch.float64))
    assert torch.equal(counts[:, 1].sum(-1), torch.full((L,), float(n * inter), dtype=torch.float64))
    ref = measure_histograms(model, seqs, batch_size=3).counts
    assert torch.equal(counts, ref)  # same entries as an independent measurement, bin for bin


def test_soft_labels_match_a_hand_masked_forward(soft_run, model_and_seqs):
    from sedac.runtime.hf_soft import measure_histograms
    from sedac.runtime.soft import table_from_histograms

    model, seqs = model_and_seqs
    m, paths = open_shards(soft_run)
    assert m["soft_labels"]["names"] == ["soft@0.25", "soft@0.5"]
    table = read_label_table(soft_run, m)
    # the label table is fixed by the first batch (3 sequences), not by the whole run
    assert torch.equal(table, table_from_histograms(measure_histograms(model, seqs[:3]).counts))
    assert not torch.equal(table, table_from_histograms(read_hist(soft_run, m)))
    d = load_shard(paths[-1])
    sid = int(d["seq_id"][-1])
    sel = d["seq_id"] == sid
    ids = torch.tensor([seqs[sid]])
    with torch.no_grad():
        lp = model(ids).logits[0].log_softmax(-1)
    tgt = d["target"][sel].long()
    kept = []
    for level, q in zip(LEVELS, (50, 100)):
        mlps = [layer.mlp for layer in model.model.layers]
        for i, mlp in enumerate(mlps):
            tx, th = float(table[i, 0, q]), float(table[i, 1, q])

            def fwd(x, mlp=mlp, tx=tx, th=th):
                x = torch.where(x.abs() >= tx, x, torch.zeros_like(x))
                h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
                return mlp.down_proj(torch.where(h.abs() >= th, h, torch.zeros_like(h)))

            mlp.forward = fwd
        try:
            with torch.no_grad():
                ls = model(ids).logits[0].log_softmax(-1)
        finally:
            for mlp in mlps:
                del mlp.forward
        name = f"soft@{level:g}"
        assert d[f"keep_top1.{name}"].dtype == torch.uint8 and d[f"kl.{name}"].dtype == torch.float32
        torch.testing.assert_close(d[f"keep_top1.{name}"][sel].bool(), ls.argmax(-1) == lp.argmax(-1))
        dnll = lp[:-1].gather(1, tgt[:-1, None]).squeeze(1) - ls[:-1].gather(1, tgt[:-1, None]).squeeze(1)
        torch.testing.assert_close(d[f"dnll.{name}"][sel][:-1], dnll, atol=1e-4, rtol=1e-4)
        assert d[f"dnll.{name}"][sel][-1].isnan()
        torch.testing.assert_close(d[f"kl.{name}"][sel], (lp.exp() * (lp - ls)).sum(-1), atol=1e-4, rtol=1e-4)
        kept.append(float(load_shard(paths[0], [f"keep_top1.{name}"])[f"keep_top1.{name}"].float().mean()))
    assert kept[1] < 1.0  # the labels are not trivially all-kept


def test_resume_gives_identical_histogram_table_and_labels(soft_run, tiny_llama, corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "r"
    with pytest.raises(SimulatedInterruption):
        collect(_cfg(tiny_llama, corpus_file, out, fail_after_shards=1))
    m = json.loads((out / "manifest.json").read_text())
    assert m["soft_hist"]["file"] == "soft_hist-00001.safetensors" and m["soft_hist"]["n_shards"] == 1
    assert [p.name for p in out.glob("soft_hist*")] == ["soft_hist-00001.safetensors"]
    partial = read_hist(out, m)
    assert partial[0, 0].sum() == m["shards"][0]["n_tokens"] * 128  # only the flushed shard's tokens (H = 128)
    collect(_cfg(tiny_llama, corpus_file, out))
    assert _files(out) == _files(soft_run)  # shards, histogram, label table and manifest byte-identical


def test_soft_level_flag_validation():
    for bad in ([0.0], [1.5], [float("nan")], [0.2, 0.2]):
        with pytest.raises(ConfigError, match="--soft-level"):
            CollectConfig(out="x", soft_levels=bad)
    assert CollectConfig(out="x", soft_levels=[0.4, 1.0, 0.15]).soft_levels == [0.15, 0.4, 1.0]
