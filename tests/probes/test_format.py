"""Probe file format: round trip and every refusal case."""

import json
import struct

import pytest
import torch

from sedac.errors import ProbeError
from sedac.probes import Probe, ProbeMeta, load_probe, update_calibration

FP = {"architecture": "LlamaForCausalLM", "hidden_size": 16, "num_layers": 6, "vocab_size": 100,
      "config_hash": "abc"}


def make_probe(head="linear", targets=("entropy", "safety"), score="safety", bands=((3, 5),), d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    meta = ProbeMeta(model_fingerprint=dict(FP), layer=2, bands=[list(b) for b in bands], head=head,
                     rank=4 if head == "lowrank" else None, targets=list(targets), score_target=score,
                     training={"metrics": {"val_auroc": 0.8}}, provenance={"git_revision": "x"})
    k = len(meta.outputs)
    t = {"norm.mean": torch.randn(d, generator=g), "norm.std": torch.rand(d, generator=g) + 0.5,
         "head.bias": torch.randn(k, generator=g)}
    if head == "linear":
        t["head.weight"] = torch.randn(k, d, generator=g)
    else:
        t["head.down"] = torch.randn(4, d, generator=g)
        t["head.up"] = torch.randn(k, 4, generator=g)
    return Probe(meta, t)


@pytest.mark.parametrize("head", ["linear", "lowrank"])
@pytest.mark.parametrize("score", ["safety", "entropy"])
def test_round_trip_identical_outputs(tmp_path, head, score):
    p = make_probe(head=head, score=score, bands=((3, 5), (4, 5)))
    p.save(tmp_path / "p.safetensors")
    q = load_probe(tmp_path / "p.safetensors", model_fingerprint=FP)
    h = torch.randn(32, 16)
    assert torch.equal(p.outputs(h), q.outputs(h))
    assert torch.equal(p.scores(h), q.scores(h))
    assert q.meta.training == p.meta.training and q.band_names == ["3-5", "4-5"]


@pytest.mark.parametrize("head", ["linear", "lowrank"])
def test_folded_scores_match_unfolded(head):
    p = make_probe(head=head, bands=((3, 5), (4, 5)))
    h = torch.randn(64, 16)
    out = p.outputs(h)
    torch.testing.assert_close(p.raw_scores(h), out[:, 1:], rtol=1e-4, atol=1e-4)
    e = make_probe(head=head, score="entropy", bands=((3, 5), (4, 5)))
    torch.testing.assert_close(e.raw_scores(h), -e.outputs(h)[:, :1].expand(-1, 2), rtol=1e-4, atol=1e-4)
    # thresholds on sigmoid scores map exactly onto raw logits
    s = p.scores(h)[:, 0]
    thr = float(s.median())
    assert torch.equal(s >= thr, p.raw_scores(h)[:, 0] >= p.raw_threshold(thr)) or \
        ((s >= thr) != (p.raw_scores(h)[:, 0] >= p.raw_threshold(thr))).sum() <= 1


def test_mismatched_model_refused(tmp_path):
    make_probe().save(tmp_path / "p.safetensors")
    with pytest.raises(ProbeError, match="different model: config_hash"):
        load_probe(tmp_path / "p.safetensors", model_fingerprint=dict(FP, config_hash="zzz"))
    with pytest.raises(ProbeError, match="num_layers"):
        load_probe(tmp_path / "p.safetensors", model_fingerprint=dict(FP, num_layers=8))


def _rewrite_meta(src, dst, mutate):
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["sedac"])
    mutate(meta, header)
    header["__metadata__"]["sedac"] = json.dumps(meta)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    dst.write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])


def test_newer_format_version_refused(tmp_path):
    make_probe().save(tmp_path / "p.safetensors")
    _rewrite_meta(tmp_path / "p.safetensors", tmp_path / "q.safetensors",
                  lambda m, h: m.update(format_version=99))
    with pytest.raises(ProbeError, match="newer than this sedac"):
        load_probe(tmp_path / "q.safetensors")


def test_nan_weights_refused(tmp_path):
    from safetensors.torch import save_file

    p = make_probe()
    t = dict(p.tensors)
    t["head.weight"] = t["head.weight"].clone()
    t["head.weight"][0, 0] = float("nan")
    save_file(t, str(tmp_path / "nan.safetensors"), metadata={"sedac": p.meta.to_json()})
    with pytest.raises(ProbeError, match="NaN or Inf"):
        load_probe(tmp_path / "nan.safetensors")
    with pytest.raises(ProbeError, match="NaN/Inf"):
        Probe(p.meta, t).save(tmp_path / "x.safetensors")


@pytest.mark.parametrize("cut", [0, 4, 20, -3])
def test_truncated_or_corrupt_refused(tmp_path, cut):
    make_probe().save(tmp_path / "p.safetensors")
    data = (tmp_path / "p.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(ProbeError):
        load_probe(tmp_path / "t.safetensors")


def test_not_a_probe_and_missing(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ProbeError, match="not a sedac probe"):
        load_probe(tmp_path / "plain.safetensors")
    with pytest.raises(ProbeError, match="cannot read probe"):
        load_probe(tmp_path / "missing.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    with pytest.raises(ProbeError):
        load_probe(tmp_path / "pickle.safetensors")


def test_wrong_shape_refused(tmp_path):
    from safetensors.torch import save_file

    p = make_probe()
    t = dict(p.tensors, **{"head.weight": torch.randn(2, 15)})
    save_file(t, str(tmp_path / "s.safetensors"), metadata={"sedac": p.meta.to_json()})
    with pytest.raises(ProbeError, match="shape"):
        load_probe(tmp_path / "s.safetensors")


def test_update_calibration_keeps_tensors(tmp_path):
    p = make_probe()
    p.save(tmp_path / "p.safetensors")
    update_calibration(tmp_path / "p.safetensors", {"thresholds": {"static": {"token": {"3-5": 0.9}}}})
    q = load_probe(tmp_path / "p.safetensors")
    assert q.is_calibrated and not p.is_calibrated
    for k in p.tensors:
        assert torch.equal(p.tensors[k], q.tensors[k])
    assert q.meta.training == p.meta.training


def test_band_before_layer_rejected():
    with pytest.raises(ProbeError, match="starts before probe layer"):
        make_probe(bands=((1, 5),))
