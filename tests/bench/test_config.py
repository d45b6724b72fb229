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


def test_unavailable_variants_have_reasons():
    from sedac.bench.config import SpecSpec, Variant
    from sedac.bench.offline import unavailable_reason

    import importlib.util

    reason = unavailable_reason(Variant(name="s", speculative=SpecSpec(method="suffix")))
    assert (reason is None) == (importlib.util.find_spec("arctic_inference") is not None)
    assert unavailable_reason(Variant(name="v")) is None
