"""Bench config dataclasses: YAML mapping, validation errors naming the key."""

from __future__ import annotations

import pytest

from sedac.bench.config import OfflineBenchConfig, from_dict, load_recipe
from sedac.errors import ConfigError

BASE = {"kind": "bench_offline", "probe": "p.safetensors",
        "variants": [{"name": "vanilla"}, {"name": "s", "sedac": {"mode": "static"}}]}


def test_nested_mapping():
    cfg = from_dict(OfflineBenchConfig, {**BASE, "prompts": {"n": 3}})
    assert cfg.prompts.n == 3 and cfg.variants[1].sedac.mode == "static" and cfg.variants[0].sedac is None
    assert cfg.probe_for(cfg.variants[1]) == "p.safetensors"


@pytest.mark.parametrize("patch, key", [
    ({"repeats": 2}, "repeats"),
    ({"variants": [{"name": "vanilla"}, {"name": "s", "sedac": {"mode": "fast"}}]}, "variants[1].sedac"),
    ({"variants": [{"name": "vanilla", "sedac": {}}]}, "baseline"),
    ({"baseline": "nope"}, "baseline"),
    ({"prompts": {"n": "many"}}, "prompts.n"),
    ({"bogus": 1}, "bogus"),
    ({"variants": [{"name": "vanilla"}, {"name": "g", "speculative": {"method": "eagle"}}]}, "speculative.method"),
])
def test_errors_name_the_key(patch, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        from_dict(OfflineBenchConfig, {**BASE, **patch})


def test_load_recipe_checks_kind(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("kind: bench_online\nconcurrency: [1, 2]\n")
    assert load_recipe(p).concurrency == [1, 2]
    with pytest.raises(ConfigError, match="expected 'bench_offline'"):
        load_recipe(p, expect="bench_offline")
    p.write_text("model: x\n")
    with pytest.raises(ConfigError, match="kind"):
        load_recipe(p)


def test_refuses_global_sedac_env(monkeypatch):
    from sedac.bench.offline import run_offline

    monkeypatch.setenv("SEDAC_VLLM_CONFIG", '{"probe": "p"}')
    with pytest.raises(ConfigError, match="SEDAC_VLLM_CONFIG"):
        run_offline(from_dict(OfflineBenchConfig, BASE))


@pytest.mark.parametrize("installed", [False, True])
def test_suffix_variant_needs_arctic_inference(monkeypatch, installed):
    import importlib.util

    from sedac.bench import offline
    from sedac.bench.config import SpecSpec, Variant

    real = importlib.util.find_spec
    monkeypatch.setattr(offline.importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "arctic_inference"
                        else real(name, *a))
    reason = offline.unavailable_reason(Variant(name="s", speculative=SpecSpec(method="suffix")))
    if installed:
        assert reason is None
    else:
        assert reason.startswith("suffix decoding needs arctic-inference") and "pip install sedac[suffix]" in reason
    assert offline.unavailable_reason(Variant(name="n", speculative=SpecSpec(method="ngram"))) is None
    assert offline.unavailable_reason(Variant(name="v")) is None


def test_sedac_variant_without_certified_thresholds_is_unavailable(tmp_path):
    from sedac.bench.config import SedacSpec, Variant
    from sedac.bench.offline import unavailable_reason
    from sedac.probes import update_calibration
    from sedac.testing.probes import random_probe

    fp = {"architecture": "LlamaForCausalLM", "hidden_size": 64, "num_layers": 4}
    path = random_probe(fp, layer=1, bands=[(2, 3)]).save(tmp_path / "p.safetensors")
    static, dynamic = Variant(name="s", sedac=SedacSpec()), Variant(name="d", sedac=SedacSpec(mode="dynamic"))
    assert "no certified static/token thresholds" in unavailable_reason(static, str(path))
    assert unavailable_reason(Variant(name="o", sedac=SedacSpec(threshold=0.5)), str(path)) is None
    update_calibration(path, {"thresholds": {"static": {"token": {"2-3": 0.7}}}})
    assert unavailable_reason(static, str(path)) is None
    assert "no certified dynamic/token thresholds" in unavailable_reason(dynamic, str(path))
