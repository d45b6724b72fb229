"""Probe training data: synthetic shards, split by sequence, train-only statistics, error cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sedac.errors import ConfigError, DataError

FP = {"architecture": "LlamaForCausalLM", "hidden_size": 16, "num_layers": 6, "vocab_size": 100,
      "config_hash": "abc"}


def make_shards(out: Path, n_seqs: int = 40, d: int = 16, layers=(2, 3), bands=((3, 5), (4, 5)), seed: int = 0,
                seqs_per_shard: int = 10, fingerprint: dict | None = None, seq_shift: float = 0.0) -> Path:
    """Write a synthetic `sedac collect` output (exact shard format) with learnable labels.

    hidden ~ N(seq_shift * seq_id, 1); entropy = softplus(h . w_e) ; keep_top1.A-B = [h . w_b + noise > c].
    """
    from sedac.collect.shards import write_manifest, write_shard

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    w_e = torch.randn(d, generator=torch.Generator().manual_seed(100))
    w_b = torch.randn(len(bands), d, generator=torch.Generator().manual_seed(101))
    entries, total = [], 0
    for shard_idx, first in enumerate(range(0, n_seqs, seqs_per_shard)):
        rows: dict[str, list] = {}
        last = min(first + seqs_per_shard, n_seqs) - 1
        for sid in range(first, last + 1):
            T = int(torch.randint(8, 24, (1,), generator=g))
            base = torch.randn(T, d, generator=g) + seq_shift * sid
            t = {f"hidden.{L}": (base + 0.1 * L).to(torch.float16) for L in layers}
            h = base
            ent = torch.nn.functional.softplus(h @ w_e / d ** 0.5 * 3)
            top1 = torch.randint(0, 100, (T,), generator=g, dtype=torch.int32)
            target = torch.cat([torch.randint(0, 100, (T - 1,), generator=g, dtype=torch.int32),
                                torch.tensor([-1], dtype=torch.int32)])
            nll = torch.rand(T, generator=g) * 5
            nll[-1] = float("nan")
            t.update(entropy=ent.float(), top1=top1, target=target, nll=nll,
                     seq_id=torch.full((T,), sid, dtype=torch.int64), pos=torch.arange(T, dtype=torch.int32),
                     is_prompt=(torch.arange(T) < 3).to(torch.uint8))
            for j, (a, b) in enumerate(bands):
                logit = h @ w_b[j] / d ** 0.5 * 3 + 0.3 * torch.randn(T, generator=g) + 1.0
                t[f"keep_top1.{a}-{b}"] = (logit > 0).to(torch.uint8)
                t[f"dnll.{a}-{b}"] = torch.rand(T, generator=g)
                t[f"kl.{a}-{b}"] = torch.rand(T, generator=g)
            for k, v in t.items():
                rows.setdefault(k, []).append(v)
        tensors = {k: torch.cat(v) for k, v in rows.items()}
        entries.append(write_shard(out, shard_idx, tensors, first, last))
        total += entries[-1]["n_tokens"]
    write_manifest(out, {
        "format": "sedac-shards", "version": 1, "config": {"synthetic": True, "seed": seed},
        "model_fingerprint": dict(fingerprint or FP), "dataset_fingerprint": f"synthetic-{seed}",
        "layers": list(layers), "bands": [list(b) for b in bands], "hidden_dtype": "float16",
        "shards": entries, "n_tokens": total, "n_sequences": n_seqs, "complete": True,
        "provenance": {"git_revision": "test"},
    })
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards"))


def test_load_all_bands_by_default(shards):
    from sedac.probes.datamodule import load_probe_data

    data = load_probe_data([str(shards)], layer=2, bands=None)
    m = json.loads((shards / "manifest.json").read_text())
    assert data.n_tokens == m["n_tokens"] and data.hidden.shape == (m["n_tokens"], 16)
    assert data.hidden.dtype == torch.float16 and data.keep.shape == (m["n_tokens"], 2)
    assert data.bands == [[3, 5], [4, 5]] and data.model_fingerprint == FP
    assert int(torch.unique(data.seq_key).numel()) == 40
    one = load_probe_data([str(shards)], layer=3, bands=[[4, 5]])
    assert one.keep.shape[1] == 1 and torch.equal(one.keep[:, 0], data.keep[:, 1])
    # layer 3 differs from layer 2 by +0.1 (generator), so the right tensor was read
    assert abs(float((one.hidden.float() - data.hidden.float()).mean()) - 0.1) < 1e-2


def test_two_dirs_sequences_stay_distinct(shards, tmp_path):
    from sedac.probes.datamodule import load_probe_data

    other = make_shards(tmp_path / "gen", n_seqs=12, seed=5)
    data = load_probe_data([str(shards), str(other)], layer=2, bands=None)
    assert int(torch.unique(data.seq_key).numel()) == 52  # seq_id 0..11 in both dirs are different sequences
    assert len(data.data_fingerprints) == 2


def test_split_is_by_sequence(shards):
    from sedac.probes.datamodule import load_probe_data, split_by_sequence

    data = load_probe_data([str(shards)], layer=2, bands=None)
    val = split_by_sequence(data.seq_key, 0.25, seed=3)
    tr_ids = set(data.seq_key[~val].tolist())
    va_ids = set(data.seq_key[val].tolist())
    assert tr_ids and va_ids and not (tr_ids & va_ids)
    assert len(va_ids) == 10 and len(tr_ids) == 30
    assert torch.equal(val, split_by_sequence(data.seq_key, 0.25, seed=3))
    assert not torch.equal(val, split_by_sequence(data.seq_key, 0.25, seed=4))
    # interleaved tokens of many sequences: still whole sequences on each side
    keys = torch.randint(0, 50, (5000,), generator=torch.Generator().manual_seed(0))
    v = split_by_sequence(keys, 0.2, seed=0)
    assert not (set(keys[v].tolist()) & set(keys[~v].tolist()))
    with pytest.raises(DataError, match="at least 2 sequences"):
        split_by_sequence(torch.zeros(10, dtype=torch.int64), 0.2, 0)


def test_norm_stats():
    from sedac.probes.datamodule import train_norm_stats

    h = (torch.randn(1000, 8) * 3 + 2).to(torch.float16)
    mean, std = train_norm_stats(h, chunk=128)
    torch.testing.assert_close(mean, h.float().mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std, h.float().std(0, unbiased=False), rtol=1e-4, atol=1e-4)


def test_error_missing_dir(tmp_path):
    from sedac.probes.datamodule import load_probe_data

    with pytest.raises(DataError, match="no such directory"):
        load_probe_data([str(tmp_path / "nope")], 2, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="manifest"):
        load_probe_data([str(tmp_path / "empty")], 2, None)


def test_error_empty_shards(tmp_path):
    from sedac.collect.shards import write_manifest
    from sedac.probes.datamodule import load_probe_data

    d = tmp_path / "e"
    d.mkdir()
    write_manifest(d, {"format": "sedac-shards", "version": 1, "config": {}, "model_fingerprint": FP,
                       "dataset_fingerprint": "x", "layers": [2], "bands": [[3, 5]], "hidden_dtype": "float16",
                       "shards": [], "n_tokens": 0, "n_sequences": 0, "complete": True, "provenance": {}})
    with pytest.raises(DataError, match="no tokens"):
        load_probe_data([str(d)], 2, None)


def test_error_layer_band_fingerprint(shards, tmp_path):
    from sedac.probes.datamodule import load_probe_data

    with pytest.raises(DataError, match="--layer 4 was not collected"):
        load_probe_data([str(shards)], 4, None)
    with pytest.raises(DataError, match="--band 2-5 was not collected"):
        load_probe_data([str(shards)], 2, [[2, 5]])
    other = make_shards(tmp_path / "o", n_seqs=4, seqs_per_shard=4, fingerprint=dict(FP, config_hash="zzz"))
    with pytest.raises(DataError, match="different model.*config_hash"):
        load_probe_data([str(shards), str(other)], 2, None)


def test_config_validation_names_flags(shards):
    from sedac.probes.train import TrainProbeConfig

    ok = dict(data=[str(shards)], layer=2)
    for bad, flag in ((dict(target="x"), "--target"), (dict(head="mlp"), "--head"),
                      (dict(head="lowrank", rank=0), "--rank"), (dict(val_fraction=1.0), "--val-fraction"),
                      (dict(bands=["5-3"]), "--band"), (dict(bands=["1-5"]), "starts before --layer"),
                      (dict(target="safety", score_target="entropy"), "--score-target"),
                      (dict(lr=0), "--lr"), (dict(out="p.pt"), "--out"), (dict(data=[]), "--data")):
        with pytest.raises(ConfigError, match=flag):
            TrainProbeConfig(**{**ok, **bad})
    assert TrainProbeConfig(**ok, target="both").score_target == "safety"
    assert TrainProbeConfig(**ok, target="entropy").score_target == "entropy"
    assert TrainProbeConfig(**ok, head="lowrank").rank == 16


def test_incomplete_warns_and_corrupt_shard_refused(tmp_path):
    from sedac.probes.datamodule import load_probe_data

    d = make_shards(tmp_path / "p", n_seqs=6, seqs_per_shard=3)
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps(dict(m, complete=False)))
    with pytest.warns(UserWarning, match="incomplete"):
        assert load_probe_data([str(d)], 2, None).n_tokens == m["n_tokens"]
    (d / "shard-00001.safetensors").write_bytes(b"\x00" * 16)
    with pytest.warns(UserWarning, match="incomplete"), pytest.raises(DataError, match="cannot read shard"):
        load_probe_data([str(d)], 2, None)
