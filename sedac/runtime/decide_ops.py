"""The static token decision of one step as one op: ``torch.ops.sedac.token_decide``.

    stream = hidden + residual           (the residual stream entering the probe layer; residual may be None)
    raw    = (stream @ W.T) in the model dtype, then float32 + b              = Probe.raw_scores(stream)
    skip   = raw >= thr                                                       = policy.token_skip
    counts[0] += skip.sum(0) (only when N <= count_rows), counts[1] += N      = the runtime's counting rule
    returns keep = ~skip, transposed: ``[B, N]`` bool, so ``keep[band]`` is a contiguous row for the MLP op

Why an op: on the compiled CUDA path the same math was about 15 tiny kernels per step (the stream sum,
the probe GEMV, the compare, three for the counters, one ``~skip[:, band]`` per band layer), about 60 us
of a 4.6 ms Qwen2.5-7B decode step in CUDA graphs on an H200 (never-firing sedac at 0.986x plain vLLM,
docs/perf.md). The CUDA kernel (:mod:`sedac.runtime.kernels.decide_triton`) does it in one launch,
without a host sync. The CPU implementation below is the PyTorch reference, built from the functions
the other paths use; :meth:`sedac.runtime.vllm_runtime.SedacRuntime.decide` uses the op for the static
token policy with impl ``op`` and the plain PyTorch path for everything else.
"""

from __future__ import annotations

from typing import Optional

import torch

from sedac.runtime.policy import token_skip
from sedac.runtime.stats import accumulate_skips

NO_LIMIT = 1 << 62  #: ``count_rows`` when every step's skips are counted


def raw_scores(stream: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N, B]`` float32 raw probe scores of the stream (= ``Probe.raw_scores`` with folded weights ``w``, ``b``):
    the product in the model dtype, then float32 plus the bias."""
    return (stream @ w.T).to(torch.float32) + b


def token_decide_reference(hidden: torch.Tensor, residual: torch.Tensor | None, w: torch.Tensor, b: torch.Tensor,
                           thr: torch.Tensor, counts: torch.Tensor, count_rows: int) -> torch.Tensor:
    """PyTorch reference (see module docstring). hidden/residual ``[N, d]``, w ``[B, d]`` (model dtype),
    b and thr ``[B]`` float32, counts ``[2, B]`` int64 (updated in place) -> keep ``[B, N]`` bool."""
    stream = hidden if residual is None else hidden + residual
    skip = token_skip(raw_scores(stream, w, b), thr)
    accumulate_skips(counts, skip if skip.shape[0] <= count_rows else torch.zeros_like(skip))  # the counting op
    return (~skip).T.contiguous()


@torch.library.custom_op("sedac::token_decide", mutates_args=("counts",))
def token_decide(hidden: torch.Tensor, residual: Optional[torch.Tensor], w: torch.Tensor, b: torch.Tensor,
                 thr: torch.Tensor, counts: torch.Tensor, count_rows: int) -> torch.Tensor:
    """Opaque static token decision + counting; see module docstring. CPU: the PyTorch reference."""
    return token_decide_reference(hidden, residual, w, b, thr, counts, count_rows)


@token_decide.register_fake
def _token_decide_fake(hidden, residual, w, b, thr, counts, count_rows):
    return hidden.new_empty((w.shape[0], hidden.shape[0]), dtype=torch.bool)
