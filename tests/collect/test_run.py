"""End-to-end collection on the tiny model: format, label correctness, resume, determinism."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from sedac.collect import CollectConfig, collect
from sedac.collect.run import SimulatedInterruption
from sedac.collect.shards import load_shard, open_shards, shard_metadata
from sedac.errors import ConfigError

DTYPES = {"entropy": torch.float32, "top1": torch.int32, "target": torch.int32, "nll": torch.float32,
          "seq_id": torch.int64, "pos": torch.int32, "is_prompt": torch.uint8, "hidden.2": torch.float16,
          "hidden.4": torch.float16, "keep_top1.2-3": torch.uint8, "dnll.2-3": torch.float32,
          "kl.2-3": torch.float32, "keep_top1.1-1": torch.uint8, "dnll.1-1": torch.float32, "kl.1-1": torch.float32}


def _cfg(tiny, data, out, **kw):
    base = dict(out=str(out), model=str(tiny), dataset=str(data), mode="corpus", max_length=24, layers=[2, 4],
                bands=[(2, 3), (1, 1)], batch_size=2, shard_tokens=40, progress=False)
    base.update(kw)
    return CollectConfig(**base)


@pytest.fixture(scope="module")
def run_a(tiny_llama, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    mp = pytest.MonkeyPatch()
    mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
    try:
        collect(_cfg(tiny_llama, corpus_file, out))
    finally:
        mp.undo()
    return out


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


def _all(out):
    parts = [load_shard(p) for p in open_shards(out)[1]]
    return {k: torch.cat([q[k] for q in parts]) for k in parts[0]}


def test_format_round_trip(run_a):
    m, paths = open_shards(run_a)
    assert m["format"] == "sedac-shards" and m["version"] == 1 and m["complete"]
    assert m["layers"] == [2, 4] and m["bands"] == [[2, 3], [1, 1]] and m["hidden_dtype"] == "float16"
    assert len(paths) >= 2 and m["provenance"]["git_revision"]
    seen, n_tok = set(), 0
    for entry, p in zip(m["shards"], paths):
        assert hashlib.sha256(p.read_bytes()).hexdigest() == entry["sha256"]
        d = load_shard(p)
        assert {k: v.dtype for k, v in d.items()} == DTYPES
        meta = shard_metadata(p)
        ids = d["seq_id"].unique().tolist()
        assert meta["n_tokens"] == d["seq_id"].shape[0] == entry["n_tokens"]
        assert ids == list(range(meta["first_seq_id"], meta["last_seq_id"] + 1))
        assert not seen & set(ids)  # a sequence never spans two shards
        seen |= set(ids)
        n_tok += meta["n_tokens"]
        last = torch.cat([d["pos"][1:] == 0, torch.tensor([True])])
        assert torch.equal(d["target"] == -1, last) and torch.equal(d["nll"].isnan(), last)
        assert (d["kl.2-3"] >= -1e-5).all() and d["is_prompt"].sum() == 0
    assert n_tok == m["n_tokens"] and len(seen) == m["n_sequences"]
    assert load_shard(paths[0], keys=["top1"]).keys() == {"top1"}


def test_values_match_an_independent_forward(run_a, tiny_llama):
    """Hidden states = HF output_hidden_states[L]; labels from a forward with band MLPs zeroed by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sedac.collect.data import load_sequences

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    m, paths = open_shards(run_a)
    d = load_shard(paths[1])
    sel = d["seq_id"] == d["seq_id"][0]
    cfg = CollectConfig(**{k: v for k, v in m["config"].items()}, out=str(run_a))
    seqs, _ = load_sequences(cfg, AutoTokenizer.from_pretrained(tiny_llama))
    best = torch.tensor([seqs[int(d["seq_id"][0])].ids])
    tgt = d["target"][sel].long()
    assert torch.equal(best[0, 1:], tgt[:-1])
    with torch.no_grad():
        out = model(best, output_hidden_states=True)
    lp = out.logits[0].log_softmax(-1)
    torch.testing.assert_close(d["hidden.2"][sel].float(), out.hidden_states[2][0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(d["top1"][sel].long(), lp.argmax(-1))
    torch.testing.assert_close(d["nll"][sel][:-1], -lp[:-1].gather(1, tgt[:-1, None]).squeeze(1), atol=1e-4, rtol=1e-4)
    for i in (2, 3):
        model.model.layers[i].mlp.forward = lambda x: torch.zeros_like(x)
    with torch.no_grad():
        ls = model(best).logits[0].log_softmax(-1)
    for i in (2, 3):
        del model.model.layers[i].mlp.forward
    torch.testing.assert_close(d["keep_top1.2-3"][sel].bool(), ls.argmax(-1) == lp.argmax(-1))
    dnll = -ls[:-1].gather(1, tgt[:-1, None]).squeeze(1) + lp[:-1].gather(1, tgt[:-1, None]).squeeze(1)
    torch.testing.assert_close(d["dnll.2-3"][sel][:-1], dnll, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d["kl.2-3"][sel], (lp.exp() * (lp - ls)).sum(-1), atol=1e-4, rtol=1e-4)
    assert (d["keep_top1.2-3"][sel] == 0).any()  # the labels are not trivially all-kept


def test_resume_after_interruption_is_identical(run_a, tiny_llama, corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "b"
    with pytest.raises(SimulatedInterruption):
        collect(_cfg(tiny_llama, corpus_file, out, fail_after_shards=1))
    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"] and len(m["shards"]) == 1
    collect(_cfg(tiny_llama, corpus_file, out))  # resume (default)
    assert _files(out) == _files(run_a)  # byte-identical shards and manifest, also vs a fresh run elsewhere
    with pytest.raises(ConfigError, match="different config.*max_length"):
        collect(_cfg(tiny_llama, corpus_file, out, max_length=16))


def test_generate_mode_marks_prompt_tokens(tiny_llama, tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"Question {i}?"}) for i in range(3)) + "\n")
    m = collect(_cfg(tiny_llama, p, tmp_path / "g", mode="generate", max_length=64, new_tokens=5, bands=[],
                     gen_batching="batch"))
    d = _all(tmp_path / "g")
    # chat template on: "<|user|>Question i?\n<|assistant|>" = 33 bytes; + up to 5 generated tokens
    for s in range(3):
        sel = d["seq_id"] == s
        assert d["is_prompt"][sel].sum() == 33 and 34 <= sel.sum() <= 38
    assert m["n_sequences"] == 3 and "hidden.4" in d and "kl.2-3" not in d
    single = collect(_cfg(tiny_llama, p, tmp_path / "g1", mode="generate", max_length=64, new_tokens=5, bands=[],
                          gen_batching="single"))
    d1 = _all(tmp_path / "g1")
    assert single["n_tokens"] == m["n_tokens"] and torch.equal(d1["target"], d["target"])  # greedy either way
