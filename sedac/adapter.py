"""Model adapter: the one place that knows where a decoder's parts live.

For an HF transformers model and for a vLLM model object alike, :func:`adapt` returns the decoder
layers, each layer's MLP, the final norm, the LM head and the token embedding, plus the model
fingerprint. Everything else in sedac (collect, runtime, calibrate, bench) goes through this.

Layer-index convention used across sedac: *probe layer* ``L`` means the residual stream **entering**
decoder layer ``L`` (HF ``output_hidden_states[L]``; ``L = 0`` is the embedding output and
``L = num_layers`` the stream before the final norm). A *skip band* ``a-b`` (inclusive) names the
decoder layers whose MLPs a positive decision skips; a probe at layer ``L`` may only drive bands
with ``a >= L``, because the decision must exist before the first skipped MLP runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sedac.errors import ModelError
from sedac.provenance import stable_hash

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
)

# Config keys that define the computation. The fingerprint hashes exactly these, so that the HF
# and the vLLM view of the same checkpoint (which carry different bookkeeping keys) agree.
_FINGERPRINT_KEYS = (
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "hidden_act",
    "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings",
)


@dataclass
class ModelParts:
    """Handles to a decoder's parts (modules of the live model, not copies)."""

    layers: list[Any]  #: decoder layers, index = layer number
    mlps: list[Any]  #: ``layers[i].mlp``
    final_norm: Any
    lm_head: Any
    embed: Any
    fingerprint: dict[str, Any]
    backend: str  #: "hf" or "vllm"

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(vars(config))


def fingerprint_from_config(config: Any) -> dict[str, Any]:
    """Model fingerprint: architecture, hidden size, layer count, vocab size, hash of the config."""
    cfg = _config_dict(config)
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else cfg.get("model_type", "unknown")
    subset = {k: cfg.get(k) for k in _FINGERPRINT_KEYS}
    if subset.get("head_dim") is None and cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        subset["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    if isinstance(subset.get("rms_norm_eps"), float):
        subset["rms_norm_eps"] = float(f"{subset['rms_norm_eps']:.6g}")
    return {
        "architecture": arch,
        "hidden_size": int(cfg.get("hidden_size", 0)),
        "num_layers": int(cfg.get("num_hidden_layers", 0)),
        "vocab_size": int(cfg.get("vocab_size", 0)),
        "config_hash": stable_hash(subset),
    }


def check_architecture(config: Any) -> str:
    cfg = _config_dict(config)
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"architecture {arch!r} is not supported by sedac; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def adapt(model: Any) -> ModelParts:
    """Return the :class:`ModelParts` of an HF ``*ForCausalLM`` or a vLLM model object."""
    config = getattr(model, "config", None)
    backend = "hf"
    if config is None or not hasattr(model, "generate"):
        # vLLM model classes keep the HF config on the inner model or as ``hf_config``.
        backend = "vllm"
        config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    if config is None:
        raise ModelError(f"cannot find a config on {type(model).__name__}")
    check_architecture(config)
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise ModelError(f"{type(model).__name__} has no .model.layers; cannot adapt it")
    layers = list(inner.layers)
    lm_head = getattr(model, "lm_head", None)
    if lm_head is None:
        raise ModelError(f"{type(model).__name__} has no lm_head")
    return ModelParts(
        layers=layers,
        mlps=[layer.mlp for layer in layers],
        final_norm=inner.norm,
        lm_head=lm_head,
        embed=inner.embed_tokens,
        fingerprint=fingerprint_from_config(config),
        backend=backend,
    )


def parse_band(spec: str, num_layers: int | None = None) -> tuple[int, int]:
    """Parse ``"20-27"`` (inclusive) or ``"25"`` into ``(first, last)``, validating the range."""
    from sedac.errors import ConfigError

    try:
        if "-" in spec:
            a_s, b_s = spec.split("-", 1)
            a, b = int(a_s), int(b_s)
        else:
            a = b = int(spec)
    except ValueError as exc:
        raise ConfigError(f"bad skip band {spec!r}: expected FIRST-LAST, e.g. 20-27") from exc
    if a < 0 or b < a:
        raise ConfigError(f"bad skip band {spec!r}: need 0 <= FIRST <= LAST")
    if num_layers is not None and b >= num_layers:
        raise ConfigError(f"skip band {spec!r} is out of range: the model has layers 0..{num_layers - 1}")
    return a, b


def parse_layers(spec: str | list[int], num_layers: int | None = None) -> list[int]:
    """Parse ``"18,20"`` into sorted unique probe layers, validating ``0 <= L <= num_layers``."""
    from sedac.errors import ConfigError

    if isinstance(spec, str):
        try:
            layers = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError as exc:
            raise ConfigError(f"bad --layers {spec!r}: expected comma-separated integers, e.g. 18,20") from exc
    else:
        layers = [int(x) for x in spec]
    if not layers:
        raise ConfigError("--layers is empty")
    for L in layers:
        if L < 0 or (num_layers is not None and L > num_layers):
            raise ConfigError(f"probe layer {L} is out of range: valid layers are 0..{num_layers}")
    return sorted(set(layers))
