"""CUDA implementations of sedac's ``torch.library`` ops (Triton kernels).

:func:`register` (the one entry point; idempotent; call it once, outside any traced forward) installs

* :func:`sedac.runtime.kernels.mlp_triton.skip_mlp_triton` as the CUDA kernel of ``sedac::skip_mlp``
  (defined, with its CPU/PyTorch implementation, in :mod:`sedac.runtime.mlp_ops`), and
* :func:`sedac.runtime.kernels.sparse_triton.sparse_mlp_triton` as the CUDA kernel of
  ``sedac::sparse_mlp`` (soft skip; defined in :mod:`sedac.runtime.sparse_ops`; batch 1 runs the
  compacting GEMVs of :mod:`~sedac.runtime.kernels.sparse_gemv`).

Triton is imported only by :func:`register`, so CPU-only installs never need a GPU build of triton.

CUDA dispatch rule (the one visible place for kernel choice):

* ``1 <= N <= 64`` rows (decode): the Triton kernels - device-side keep mask, no host sync, a skipped
  step reads no weights, one CUDA graph serves every decision;
* larger ``N`` (prefill chunks): the dense cuBLAS MLP on every row (GEMM, fused ``silu_and_mul``
  of :mod:`~sedac.runtime.kernels.act_triton`, GEMM), then ``where(keep, y, 0)`` -
  also sync-free and capturable; at those sizes skipping rows would need compaction and a grouped
  GEMM, which is not built (prefill is a small share of decode-time cost).
* ``sedac::token_decide`` (the static token decision of a step, :mod:`sedac.runtime.decide_ops`): one
  Triton launch at every ``N``.
* ``sedac::sparse_mlp`` follows the same rule with its own limit: ``1 <= N <= 32`` the Triton soft-skip
  kernels (``sparse_triton.MAX_ROWS``; the tuning may still pick masked cuBLAS for a row bucket), larger ``N``
  the masked PyTorch reference on cuBLAS (dense GEMMs over the masked inputs, sync-free).
"""

from __future__ import annotations

_REGISTERED = False


def _skip_mlp_cuda(x, keep, w_gate_up, w_down):
    import torch

    from sedac.runtime.kernels.mlp_triton import MAX_ROWS, skip_mlp_triton

    if 1 <= x.shape[0] <= MAX_ROWS and w_gate_up.is_contiguous() and w_down.is_contiguous() and x.stride(1) == 1:
        return skip_mlp_triton(x, keep, w_gate_up, w_down)
    if x.shape[0] == 0:
        return torch.empty_like(x)
    from sedac.runtime.kernels.act_triton import silu_mul_triton

    y = silu_mul_triton(x @ w_gate_up.T) @ w_down.T
    return torch.where(keep.unsqueeze(1), y, torch.zeros((), dtype=y.dtype, device=y.device))


def _sparse_mlp_cuda(x, thr_x, thr_h, w1, w2):
    from sedac.runtime.kernels.sparse_triton import MAX_ROWS, sparse_mlp_triton
    from sedac.runtime.sparse_ops import sparse_mlp_reference

    if 1 <= x.shape[0] <= MAX_ROWS and w1.is_contiguous() and w2.is_contiguous() and x.stride(1) == 1:
        return sparse_mlp_triton(x, thr_x, thr_h, w1, w2)
    return sparse_mlp_reference(x, thr_x, thr_h, w1, w2)


def _token_decide_cuda(hidden, residual, w, b, thr, counts, count_rows):
    from sedac.runtime.kernels.decide_triton import token_decide_triton

    return token_decide_triton(hidden, residual, w, b, thr, counts, count_rows)


def dense_rows_above() -> int:
    """Steps with more rows than this run dense on CUDA (every row computed, skipped rows zeroed):
    callers count their rows as evaluated, not skipped."""
    from sedac.runtime.kernels.mlp_triton import MAX_ROWS

    return MAX_ROWS


def register() -> None:
    """Register the CUDA kernels of ``sedac::skip_mlp``, ``sedac::sparse_mlp`` and ``sedac::token_decide``
    (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import torch

    import sedac.runtime.decide_ops  # noqa: F401  (defines sedac::token_decide)
    import sedac.runtime.mlp_ops  # noqa: F401  (defines sedac::skip_mlp)
    import sedac.runtime.sparse_ops  # noqa: F401  (defines sedac::sparse_mlp)

    torch.library.register_kernel("sedac::skip_mlp", "cuda", _skip_mlp_cuda)
    torch.library.register_kernel("sedac::sparse_mlp", "cuda", _sparse_mlp_cuda)
    torch.library.register_kernel("sedac::token_decide", "cuda", _token_decide_cuda)
    _REGISTERED = True
