"""sedac-wrapped vLLM model classes (registered by :mod:`sedac.runtime.vllm_plugin`).

Each ``Sedac<Arch>ForCausalLM`` subclasses vLLM's own class. Unconfigured (no ``sedac`` block, see
:mod:`sedac.runtime.config`) it *is* vLLM's class: same construction, same forward. Configured, the
inner decoder model is built as a subclass whose ``forward`` is :func:`_sedac_forward`; module and
parameter paths are unchanged, so vLLM's weight loading is untouched, and the subclass keeps vLLM's
``@support_torch_compile`` (the whole decision + skip is traced into the compiled graph).

Decision point: vLLM decoder layers use a fused add-norm, so the residual stream *entering* layer L
(HF ``hidden_states[L]``) is ``hidden_states + residual`` (just ``hidden_states`` at layer 0). For
each step (prefill and decode tokens mixed, all flattened to ``[N, d]``) the probe scores that
stream, :func:`sedac.runtime.policy.decide` turns scores into the ``[N, B]`` skip mask (for the static token
rule with impl ``op``: the single op ``sedac::token_decide``), and the band layers run attention as usual and
their MLP through :func:`sedac.runtime.mlp_ops.run_mlp` on their row of the ``[B, N]`` keep mask. The per-worker
state and the decision live in :class:`sedac.runtime.vllm_runtime.SedacRuntime`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types
from itertools import islice

import torch

from sedac.errors import ConfigError
from sedac.runtime import vllm_checks as C
from sedac.runtime.config import SedacVllmConfig, load_config
from sedac.runtime.mlp_ops import run_mlp
from sedac.runtime.vllm_runtime import SedacRuntime


def _layer_forward(layer, mlp, positions, hidden_states, residual, keep, impl):
    """A decoder layer (Llama/Qwen2/Qwen3/Mistral body) with its MLP run on the ``keep`` rows only."""
    if residual is None:
        residual = hidden_states
        hidden_states = layer.input_layernorm(hidden_states)
    else:
        hidden_states, residual = layer.input_layernorm(hidden_states, residual)
    hidden_states = layer.self_attn(positions=positions, hidden_states=hidden_states)  # always computed
    hidden_states, residual = layer.post_attention_layernorm(hidden_states, residual)
    if impl == "soft":  # keep = per-token soft level; mlp = the runtime's soft MLP for this layer
        return mlp(hidden_states, keep), residual
    hidden_states = run_mlp(mlp, hidden_states, keep, impl=impl)
    return hidden_states, residual


def _sedac_forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **extra_layer_kwargs):
    """Inner decoder ``forward`` with sedac skipping (single pipeline stage)."""
    rt: SedacRuntime = self._sedac
    hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
    residual = None
    keep = None
    aux: list[torch.Tensor] = []
    has_aux = hasattr(self, "_maybe_add_hidden_state")
    if has_aux:
        self._maybe_add_hidden_state(aux, self.start_layer, hidden_states, residual)
    soft = rt.soft is not None
    level = rt.soft_levels(None, hidden_states.shape[0], hidden_states.device) if soft else None
    for idx, layer in enumerate(islice(self.layers, self.start_layer, self.end_layer), start=self.start_layer):
        if soft:
            if idx == rt.probe_layer and rt.soft.family == "probe":
                level = rt.soft_levels(hidden_states if residual is None else hidden_states + residual,
                                       hidden_states.shape[0], hidden_states.device)
                if rt.cfg.record:
                    rt.record(input_ids, positions, level.unsqueeze(-1))
            hidden_states, residual = _layer_forward(layer, functools.partial(rt.soft_mlp, layer.mlp, idx),
                                                     positions, hidden_states, residual, level, "soft")
            if has_aux:
                self._maybe_add_hidden_state(aux, idx + 1, hidden_states, residual)
            continue
        if idx == rt.probe_layer:  # the stream entering layer idx is hidden_states + residual
            keep = rt.decide(hidden_states, residual, positions)  # [B, N]
            if rt.cfg.record:
                rt.record(input_ids, positions, ~keep.T)
        band = rt.layer_band.get(idx)
        if band is None:
            hidden_states, residual = layer(positions, hidden_states, residual, **extra_layer_kwargs)
        else:
            mlp = rt.op_mlps.get(idx, layer.mlp)
            hidden_states, residual = _layer_forward(layer, mlp, positions, hidden_states, residual,
                                                     keep[band], rt.impl)
        if has_aux:
            self._maybe_add_hidden_state(aux, idx + 1, hidden_states, residual)
    hidden_states, _ = self.norm(hidden_states, residual)
    if aux:
        return hidden_states, aux
    return hidden_states


_INNER_CACHE: dict[type, type] = {}


def sedac_inner_class(base: type) -> type:
    """Subclass of vLLM's inner decoder model ``base`` whose forward is :func:`_sedac_forward`."""
    if base not in _INNER_CACHE:
        f = _sedac_forward
        fwd = types.FunctionType(f.__code__.replace(), f.__globals__, "forward", f.__defaults__, f.__closure__)
        fwd.__qualname__ = f"Sedac{base.__name__}.forward"
        _INNER_CACHE[base] = type(f"Sedac{base.__name__}", (base,), {"forward": fwd, "__module__": __name__})
    return _INNER_CACHE[base]


@contextlib.contextmanager
def _patched(module_name: str, attr: str, new):
    mod = importlib.import_module(module_name)
    old = getattr(mod, attr)
    setattr(mod, attr, new)
    try:
        yield
    finally:
        setattr(mod, attr, old)


def _make(base_module: str, base_name: str, inner_name: str) -> type:
    mod = importlib.import_module(base_module)
    base = getattr(mod, base_name)

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        cfg = load_config(getattr(vllm_config, "additional_config", None))
        if cfg is None or C.is_draft(vllm_config):  # a speculative draft model runs as vLLM's own
            base.__init__(self, vllm_config=vllm_config, prefix=prefix, **kwargs)
            self._sedac = None
            return
        from sedac.runtime.vllm_plugin import check_vllm_version

        check_vllm_version()
        inner = sedac_inner_class(getattr(mod, inner_name))
        C.check_mirrored(getattr(mod, inner_name).forward)  # _sedac_forward reproduces this body
        with _patched(base_module, inner_name, inner):
            base.__init__(self, vllm_config=vllm_config, prefix=prefix, **kwargs)
        if type(self.model) is not inner:
            raise ConfigError(f"sedac: vLLM built {type(self.model).__name__}, not {inner.__name__}, for "
                              f"{base_name}; this vLLM version is not supported")
        rt = SedacRuntime(cfg, vllm_config, self)
        self._sedac = rt
        self.model._sedac = rt
        _set_cache_key(vllm_config, cfg)

    def load_weights(self, weights):
        loaded = base.load_weights(self, weights)
        if self._sedac is not None:
            self._sedac.capture_weights(self)
        return loaded

    def forward(self, *args, **kwargs):
        if self._sedac is not None:
            if not self._sedac._bound:
                self._sedac.bind(self)
            self._sedac.before_step()
        out = base.forward(self, *args, **kwargs)
        if self._sedac is not None:
            self._sedac.after_step()
        return out

    return type(f"Sedac{base_name}", (base,), {"__init__": __init__, "forward": forward, "load_weights": load_weights,
                                               "__module__": __name__,
                                               "__qualname__": f"Sedac{base_name}"})


def _set_cache_key(vllm_config, cfg: SedacVllmConfig) -> None:
    """Make vLLM's compile-cache key (a hash of ``additional_config``, computed when it first compiles,
    after this) follow what sedac traces, and nothing else: the config (also when it came from
    ``$SEDAC_VLLM_CONFIG``), the probe's bytes and sedac's source. Host-side keys (``stats_file``, e.g. a
    per-process path from ``sedac serve``) are dropped from the hashed copy; the runtime keeps them."""
    ac = vllm_config.additional_config
    if not isinstance(ac, dict):
        return
    new = dict(ac)  # a copy: the caller's dict is left as it was
    if isinstance(ac.get("sedac"), dict):
        new["sedac"] = {k: v for k, v in ac["sedac"].items() if k not in C.HOST_ONLY_KEYS}
    new["sedac_graph_key"] = C.graph_key(cfg.to_dict(), cfg.probe)
    vllm_config.additional_config = new


_ARCHS = {
    "LlamaForCausalLM": ("vllm.model_executor.models.llama", "LlamaForCausalLM", "LlamaModel"),
    "Qwen2ForCausalLM": ("vllm.model_executor.models.qwen2", "Qwen2ForCausalLM", "Qwen2Model"),
    "Qwen3ForCausalLM": ("vllm.model_executor.models.qwen3", "Qwen3ForCausalLM", "Qwen3Model"),
    "MistralForCausalLM": ("vllm.model_executor.models.mistral", "MistralForCausalLM", "MistralModel"),
}


def __getattr__(name: str):  # lazy: Sedac<Arch> classes are built on first access (imports vLLM)
    arch = name.removeprefix("Sedac")
    if name.startswith("Sedac") and arch in _ARCHS:
        cls = _make(*_ARCHS[arch])
        globals()[name] = cls
        return cls
    raise AttributeError(name)
