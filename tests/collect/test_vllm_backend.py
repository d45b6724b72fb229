"""vLLM backend: hidden states captured in the vLLM worker agree with the HF backend (one engine)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.vllm

LAYERS = [0, 2, 4]


@pytest.fixture(scope="module")
def engine(tiny_llama):
    pytest.importorskip("vllm")
    from sedac.collect.vllm_worker import VLLMHidden

    eng = VLLMHidden(str(tiny_llama), LAYERS, max_len=64)
    yield eng
    eng.close()


def test_worker_hidden_states_match_hf_fp32(engine, tiny_llama):
    from sedac.adapter import adapt
    from sedac.collect.hf import HiddenCapture
    from sedac.models.loading import load_hf

    model, _ = load_hf(str(tiny_llama), device="cpu")
    parts = adapt(model)
    assert engine.model_fingerprint() == parts.fingerprint
    seqs = [list(range(3, 40)), list(range(60, 71)), [5] * 50]
    got = engine.hidden(seqs, dtype=torch.float32)
    cap = HiddenCapture(parts, LAYERS)
    for s, h in zip(seqs, got):
        with torch.no_grad():
            model(torch.tensor([s]))
        for L in LAYERS:
            ref = cap.out[L][0]
            scale = ref.abs().max().item()
            torch.testing.assert_close(h[f"hidden.{L}"], ref, atol=1e-4 * scale, rtol=0)
    cap.remove()


def test_collect_backends_agree(engine, tiny_llama, corpus_file, tmp_path):
    from sedac.collect import CollectConfig, collect
    from sedac.collect.shards import load_shard, open_shards

    kw = dict(model=str(tiny_llama), dataset=str(corpus_file), max_length=32, layers=LAYERS, bands=[(2, 3)],
              batch_size=2, progress=False)
    collect(CollectConfig(out=str(tmp_path / "hf"), backend="hf", **kw))
    collect(CollectConfig(out=str(tmp_path / "vl"), backend="vllm", **kw), vllm_engine=engine)
    (a,), (b,) = open_shards(tmp_path / "hf")[1], open_shards(tmp_path / "vl")[1]
    da, db = load_shard(a), load_shard(b)
    assert da.keys() == db.keys()
    for k in da:
        if k.startswith("hidden."):
            torch.testing.assert_close(db[k].float(), da[k].float(), atol=4e-3, rtol=2e-3)
        else:
            torch.testing.assert_close(db[k], da[k], equal_nan=True, msg=k)
