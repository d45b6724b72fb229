"""Which rows of a vLLM step are real tokens (the batch policy's vote excludes padding rows).

vLLM pads a step's token axis for CUDA graphs (rows beyond the real token count, with arbitrary
hidden states). ``sedac::real_rows`` is a ``torch.library`` custom op (opaque to torch.compile) that
reads vLLM's forward context at run time, like :mod:`sedac.runtime.vllm_dynamic`:

* ``forward_context.is_padding`` (vLLM >= 0.3x: a view of a persistent buffer the model runner
  fills before every step, so a captured CUDA graph reads the current step's mask), else
* ``attn_metadata.query_start_loc[-1]`` (the real token count, also a persistent buffer), else
* every row (profiling / warm-up forwards without metadata; eager CPU runs never pad).
"""

from __future__ import annotations

import torch


def _context():
    from vllm.forward_context import get_forward_context, is_forward_context_available

    return get_forward_context() if is_forward_context_available() else None


def real_rows_reference(raw: torch.Tensor, ctx) -> torch.Tensor:
    """bool ``[N]``: True for real rows of a step whose scores are ``raw: [N, B]``."""
    n = raw.shape[0]
    ones = torch.ones(n, dtype=torch.bool, device=raw.device)
    if ctx is None:
        return ones
    pad = getattr(ctx, "is_padding", None)
    if pad is not None and pad.shape[0] == n:
        return ~pad.to(device=raw.device, dtype=torch.bool)
    md = ctx.attn_metadata
    if isinstance(md, list):
        md = md[0] if md else None
    if isinstance(md, dict):
        md = next((v for v in md.values() if hasattr(v, "query_start_loc")), None)
    qsl = getattr(md, "query_start_loc", None)
    if qsl is None:
        return ones
    return torch.arange(n, device=raw.device) < qsl[-1].to(raw.device)


@torch.library.custom_op("sedac::real_rows", mutates_args=())
def real_rows(raw: torch.Tensor) -> torch.Tensor:
    """Real-row mask of the current vLLM step (see module docstring)."""
    return real_rows_reference(raw, _context()).clone()


@real_rows.register_fake
def _fake(raw):
    return torch.empty(raw.shape[0], dtype=torch.bool, device=raw.device)
