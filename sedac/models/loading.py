"""Loading models and tokenizers through HF transformers (the embedded CPU default backend)."""

from __future__ import annotations

from typing import Any

from sedac.errors import ModelError
from sedac.models.registry import resolve_model

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise ModelError(f"unknown dtype {name!r}; use one of {', '.join(sorted(DTYPES))}") from None


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_hf(model: str | None, dtype: str = "float32", device: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode. ``model`` is an alias, a folder or a hub id.

    float32 is the default: on CPU SmolLM2 in bfloat16 degrades badly (see docs/perf.md).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sedac.adapter import check_architecture

    path = resolve_model(model)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
    except OSError as exc:
        raise ModelError(f"cannot load model {model!r} from {path}: {exc}") from None
    check_architecture(hf.config)
    hf.to(device or default_device()).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return hf, tok
