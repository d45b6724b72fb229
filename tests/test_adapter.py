import pytest

from sedac.adapter import adapt, fingerprint_from_config, parse_band, parse_layers
from sedac.errors import ConfigError, ModelError
from sedac.models.loading import load_hf


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_adapt_hf(fixture, request):
    model, _ = load_hf(str(request.getfixturevalue(fixture)))
    parts = adapt(model)
    assert parts.num_layers == 4 and len(parts.mlps) == 4
    assert parts.mlps[2] is model.model.layers[2].mlp
    assert parts.final_norm is model.model.norm and parts.lm_head is model.lm_head
    assert parts.embed is model.model.embed_tokens
    fp = parts.fingerprint
    assert fp["architecture"] == model.config.architectures[0]
    assert (fp["hidden_size"], fp["num_layers"], fp["vocab_size"]) == (128, 4, 512)


def test_fingerprint_sensitive_and_stable(tiny_llama):
    import json

    cfg = json.loads((tiny_llama / "config.json").read_text())
    a = fingerprint_from_config(cfg)
    assert a == fingerprint_from_config(dict(cfg, transformers_version="0.0", _name_or_path="x"))
    assert a["config_hash"] != fingerprint_from_config(dict(cfg, intermediate_size=512))["config_hash"]


def test_unsupported_architecture_is_clear():
    class Fake:
        config = {"architectures": ["GPT2LMHeadModel"]}

        def generate(self):
            pass

    with pytest.raises(ModelError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM"):
        adapt(Fake())


def test_parse_band_and_layers():
    assert parse_band("20-27", 30) == (20, 27)
    assert parse_band("5") == (5, 5)
    assert parse_layers("20,18,20", 30) == [18, 20]
    for bad in ("27-20", "x-3", "-1"):
        with pytest.raises(ConfigError):
            parse_band(bad, 30)
    with pytest.raises(ConfigError, match="out of range"):
        parse_band("25-30", 30)
    with pytest.raises(ConfigError, match="out of range"):
        parse_layers("31", 30)
    with pytest.raises(ConfigError):
        parse_layers("a,b")
