"""train-probe on soft-skip labels of a real tiny-model collection: band, label, soft table, errors, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from sedac.errors import ConfigError, DataError
from sedac.probes import load_probe


@pytest.fixture(scope="module")
def collected(tiny_llama, tmp_path_factory):
    """A tiny-model collection with one skip band and one soft level (corpus mode, ~20 sequences)."""
    from sedac.collect import CollectConfig, collect

    root = tmp_path_factory.mktemp("soft_train")
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i]) + f" number {i}."}) + "\n"
                            for i in range(12)))
    out = root / "c"
    collect(CollectConfig(out=str(out), model=str(tiny_llama), dataset=str(data), mode="corpus", max_length=32,
                          layers=[1, 2], bands=[(2, 3)], soft_levels=[0.5], batch_size=4, progress=False))
    return out


def _cfg(data, out, **kw):
    from sedac.probes.train import TrainProbeConfig

    base = dict(data=[str(data)], layer=2, out=str(out), max_epochs=3, batch_size=64, lr=1e-2, progress=False)
    return TrainProbeConfig(**{**base, **kw})


def test_soft_label_probe_band_label_and_table(collected, tmp_path):
    from sedac.collect.shards import load_shard, open_shards
    from sedac.collect.soft import read_hist
    from sedac.probes.datamodule import load_probe_data
    from sedac.probes.train import train_probe
    from sedac.runtime.soft import table_from_histograms

    m, paths = open_shards(collected)
    want = table_from_histograms(read_hist(collected, m))
    data = load_probe_data([str(collected)], 1, None, soft_level=0.5)
    keep = torch.cat([load_shard(p, ["keep_top1.soft@0.5"])["keep_top1.soft@0.5"] for p in paths]).float()
    assert data.bands == [[1, 3]] and data.label_names == ["soft@0.5"]
    assert torch.equal(data.keep[:, 0], keep) and 0 < keep.mean() < 1  # the soft column, not the band's

    r = train_probe(_cfg(collected, tmp_path / "s.safetensors", layer=1, soft_level=0.5))
    p = load_probe(r.path)
    assert p.meta.bands == [[1, 3]] and p.meta.training["label"] == "soft@0.5"  # layers 1..last
    assert list(p.meta.training["comparison"]) == ["soft@0.5"]
    assert p.meta.soft["source"] == "collect" and torch.equal(p.soft_table(), want)

    band = load_probe(train_probe(_cfg(collected, tmp_path / "b.safetensors", bands=["2-3"])).path)
    assert band.meta.training["label"] == "band" and torch.equal(band.soft_table(), want)


def test_soft_level_errors(collected, tmp_path):
    from sedac.probes.train import train_probe

    with pytest.raises(DataError, match=r"--soft-level 0.25 was not collected in .* \(collected soft levels: 0.5\)"):
        train_probe(_cfg(collected, tmp_path / "x.safetensors", soft_level=0.25))
    with pytest.raises(ConfigError, match="--soft-level and --band are alternatives"):
        _cfg(collected, tmp_path / "x.safetensors", soft_level=0.5, bands=["2-3"])
    with pytest.raises(ConfigError, match=r"--soft-level must be a number in \(0, 1\]"):
        _cfg(collected, tmp_path / "x.safetensors", soft_level=0.0)
    with pytest.raises(DataError, match="--soft-level needs a probe --layer below"):
        train_probe(_cfg(collected, tmp_path / "x.safetensors", layer=4, soft_level=0.5))


def test_cli_soft_level_and_evaluate(collected, tmp_path):
    from typer.testing import CliRunner

    from sedac.cli import app

    out = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(app, ["train-probe", "--data", str(collected), "--layer", "2", "--soft-level", "0.5",
                                 "--out", str(out), "--max-epochs", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "soft@0.5" in r.output and load_probe(out).meta.bands == [[2, 3]]
    r = CliRunner().invoke(app, ["train-probe", "--data", str(collected), "--evaluate", str(out)])
    assert r.exit_code == 0 and "soft@0.5" in r.output and "cli.safetensors: safety probe" in r.output, r.output
