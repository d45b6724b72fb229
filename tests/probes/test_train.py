"""Probe training: heads, export == module, train-only standardisation, determinism, comparison, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sedac.errors import DataError
from sedac.probes import Probe, ProbeMeta, load_probe
from sedac.probes.format import expected_shapes

sys.path.insert(0, str(Path(__file__).parent))
from test_train_data import FP, make_shards  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards"), n_seqs=60)


def _cfg(shards, out, **kw):
    from sedac.probes.train import TrainProbeConfig

    base = dict(data=[str(shards)], layer=2, out=str(out), max_epochs=4, batch_size=128, lr=1e-2,
                progress=False, seed=0)
    return TrainProbeConfig(**{**base, **kw})


@pytest.mark.parametrize("head", ["linear", "lowrank"])
@pytest.mark.parametrize("targets", [["safety"], ["entropy"], ["entropy", "safety"]])
def test_module_shapes_and_export_match(tmp_path, head, targets):
    from sedac.probes.lightning_module import ProbeModule

    torch.manual_seed(0)
    meta = ProbeMeta(model_fingerprint=FP, layer=2, bands=[[3, 5], [4, 5]], head=head,
                     rank=3 if head == "lowrank" else None, targets=targets, score_target=targets[-1])
    mean, std = torch.randn(16), torch.rand(16) + 0.5
    m = ProbeModule(d=16, outputs=meta.outputs, band_names=["3-5", "4-5"], head=head, rank=meta.rank,
                    mean=mean, std=std)
    h = torch.randn(37, 16).to(torch.float16)
    out = m(h)
    assert out.shape == (37, len(meta.outputs)) and out.dtype == torch.float32
    t = m.net.probe_tensors()
    assert {k: tuple(v.shape) for k, v in t.items()} == expected_shapes(meta, 16)
    Probe(meta, t).save(tmp_path / "p.safetensors")
    p = load_probe(tmp_path / "p.safetensors")
    torch.testing.assert_close(p.outputs(h), out.detach(), rtol=0, atol=1e-5)
    loss = m._loss(out, torch.rand(37) * 3, torch.randint(0, 2, (37, 2)).float())
    loss.backward()
    assert torch.isfinite(loss) and m.net.bias.grad is not None


def test_train_both_learns_and_exports(shards, tmp_path):
    from sedac.probes.train import train_probe

    res = train_probe(_cfg(shards, tmp_path / "both.safetensors", target="both", max_epochs=6))
    p = load_probe(res.path, model_fingerprint=FP)
    assert p.meta.outputs == ["entropy", "safety:3-5", "safety:4-5"] and p.meta.score_target == "safety"
    # exported probe == trained Lightning module on the same inputs
    h = torch.randn(100, 16).to(torch.float16)
    torch.testing.assert_close(p.outputs(h), res.module(h).detach(), rtol=0, atol=1e-5)
    m = res.metrics
    assert m["val_auroc"] > 0.85 and m["val_entropy_spearman"] > 0.85, m
    assert 0 <= m["val_ece"] < 0.2 and m["val_ap"] > 0.85 and m["val_entropy_mae"] < 1.0
    tr = p.meta.training
    assert tr["n_train_tokens"] + tr["n_val_tokens"] == json.loads((shards / "manifest.json").read_text())["n_tokens"]
    assert tr["n_train_seqs"] + tr["n_val_seqs"] == 60 and tr["split"]["unit"] == "sequence"
    cmp = tr["comparison"]["3-5"]["scorers"]
    assert set(cmp) == {"true entropy", "entropy probe", "safety probe"}
    # labels depend on a direction unrelated to entropy: the safety probe must beat entropy gating
    assert cmp["safety probe"]["auroc"] > cmp["true entropy"]["auroc"] + 0.1
    assert p.meta.provenance["data_fingerprints"][0]["dataset_fingerprint"] == "synthetic-0"
    assert p.meta.provenance["config"]["target"] == "both"
    run = tmp_path / "both.run"
    assert (run / "logs" / "version_0" / "metrics.csv").is_file()
    ckpts = list((run / "checkpoints").glob("*.safetensors"))
    assert len(ckpts) == 1 and not list(run.rglob("*.ckpt"))


def test_standardisation_from_train_split_only(tmp_path):
    from sedac.probes.datamodule import load_probe_data, split_by_sequence
    from sedac.probes.train import train_probe

    d = make_shards(tmp_path / "shift", n_seqs=20, seq_shift=0.5)  # each sequence has its own mean
    res = train_probe(_cfg(d, tmp_path / "p.safetensors", max_epochs=1, val_fraction=0.3, seed=7))
    data = load_probe_data([str(d)], 2, None)
    val = split_by_sequence(data.seq_key, 0.3, 7)
    h = data.hidden.double()
    mean = res.probe.tensors["norm.mean"].double()
    torch.testing.assert_close(mean, h[~val].mean(0), rtol=0, atol=1e-4)
    assert (mean - h.mean(0)).abs().max() > 0.1  # all-token mean differs: val tokens did not leak


def test_deterministic_byte_identical(shards, tmp_path, monkeypatch):
    from sedac.probes.train import train_probe

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "det.safetensors"
    train_probe(_cfg(shards, out, head="lowrank", rank=4, max_epochs=2))
    first = out.read_bytes()
    train_probe(_cfg(shards, out, head="lowrank", rank=4, max_epochs=2))
    assert out.read_bytes() == first
    train_probe(_cfg(shards, out, head="lowrank", rank=4, max_epochs=2, seed=1))
    assert out.read_bytes() != first


def test_frac_at_precision_and_auroc():
    from torchmetrics.functional.classification import binary_auroc

    from sedac.probes.train import auroc, frac_at_precision

    y = np.array([1] * 99 + [0] + [1, 0, 0, 0])
    s = np.arange(104, 0, -1, dtype=float)  # descending: first 100 tokens hold 99 safe + 1 unsafe
    frac, thr = frac_at_precision(s, y, 0.99)
    assert frac == pytest.approx(101 / 104) and thr == 4.0  # 100 safe of 101 selected = 0.990...
    assert frac_at_precision(s, y, 0.999)[0] == pytest.approx(99 / 104)
    # ties are selected together: no threshold splits a tied group
    frac, _ = frac_at_precision(np.array([1.0, 1.0, 0.5]), np.array([1, 0, 1]), 0.99)
    assert frac == 0.0
    assert frac_at_precision(np.array([0.0, 1.0]), np.array([0, 0]), 0.99) == (0.0, None)
    rng = np.random.default_rng(0)
    sc, yy = rng.normal(size=500), rng.integers(0, 2, 500)
    assert auroc(sc, yy) == pytest.approx(float(binary_auroc(torch.sigmoid(torch.tensor(sc)), torch.tensor(yy))),
                                          abs=1e-6)
    assert auroc(sc, np.ones(500)) is None


def test_evaluate_probes_and_split_guard(shards, tmp_path):
    from sedac.errors import ConfigError
    from sedac.probes.train import evaluate_probes, train_probe

    s = train_probe(_cfg(shards, tmp_path / "safety.safetensors", max_epochs=2)).path
    e = train_probe(_cfg(shards, tmp_path / "entropy.safetensors", target="entropy", max_epochs=2)).path
    cmp = evaluate_probes([str(shards)], [str(s), str(e)], seed=0, val_fraction=0.2)
    names = set(cmp["4-5"]["scorers"])
    assert names == {"true entropy", "safety.safetensors: safety probe", "entropy.safetensors: entropy probe"}
    trained = load_probe(s).meta.training["comparison"]["4-5"]["scorers"]["safety probe"]["auroc"]
    assert cmp["4-5"]["scorers"]["safety.safetensors: safety probe"]["auroc"] == pytest.approx(trained, abs=1e-6)
    with pytest.raises(ConfigError, match="--seed"):
        evaluate_probes([str(shards)], [str(s)], seed=1, val_fraction=0.2)


def test_band_beyond_collected_and_rerun_guard(shards, tmp_path):
    from sedac.errors import ConfigError
    from sedac.probes.train import train_probe

    with pytest.raises(DataError, match="--band 2-3 was not collected"):
        train_probe(_cfg(shards, tmp_path / "x.safetensors", bands=["2-3"]))
    (tmp_path / "y.run").mkdir()
    with pytest.raises(ConfigError, match="not made by sedac train-probe"):
        train_probe(_cfg(shards, tmp_path / "y.safetensors"))


def test_cli_train_probe(shards, tmp_path):
    from typer.testing import CliRunner

    from sedac.cli import app

    out = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(app, ["train-probe", "--data", str(shards), "--layer", "2", "--band", "3-5",
                                 "--target", "safety", "--head", "lowrank", "--rank", "2", "--out", str(out),
                                 "--max-epochs", "2", "--batch-size", "256", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "frac@P99" in r.output and "val_auroc" in r.output
    p = load_probe(out)
    assert p.band_names == ["3-5"] and p.meta.head == "lowrank" and p.meta.rank == 2
    r = CliRunner().invoke(app, ["train-probe", "--data", str(shards), "--evaluate", str(out)])
    assert r.exit_code == 0 and "cli.safetensors: safety probe" in r.output, r.output


def test_cli_error_is_one_line(tmp_path, monkeypatch, capsys):
    from sedac.cli import main

    monkeypatch.setattr(sys, "argv", ["sedac", "train-probe", "--data", str(tmp_path / "none"), "--layer", "2",
                                      "--out", str(tmp_path / "p.safetensors")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data") and "no such directory" in err and "Traceback" not in err
