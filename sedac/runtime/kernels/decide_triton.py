"""Triton kernel of ``sedac::token_decide`` (contract: :mod:`sedac.runtime.decide_ops`).

One launch per step, grid ``cdiv(N, BM)``: a program takes ``BM`` rows, sums ``hidden + residual`` tile by
tile (rounded to the model dtype, as the PyTorch path's add is), multiplies by every band's probe row
(fp32 accumulation, result rounded to the model dtype like ``stream @ W.T``), adds the bias, compares with
the device-side threshold, writes ``keep [B, N]`` and adds its rows to the counters with two atomics per
band. No host sync, CUDA-graph safe (the threshold and the counters are read / updated on the device).
Bytes: ``N * d`` (twice with a residual) + ``B * d`` weights, a few microseconds at decode sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _token_decide(h_ptr, r_ptr, w_ptr, b_ptr, thr_ptr, cnt_ptr, keep_ptr, N, D, stride_h, stride_r, count_rows,
                  B: tl.constexpr, HAS_RES: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    rm = pid * BM + tl.arange(0, BM)
    mmask = rm < N
    dt = h_ptr.dtype.element_ty
    counted = (N <= count_rows).to(tl.int64)
    for band in tl.static_range(B):
        acc = tl.zeros([BM], dtype=tl.float32)
        for d0 in range(0, D, BD):
            dd = d0 + tl.arange(0, BD)
            dmask = dd < D
            m2 = mmask[:, None] & dmask[None, :]
            s = tl.load(h_ptr + rm[:, None] * stride_h + dd[None, :], mask=m2, other=0.0)
            if HAS_RES:
                r = tl.load(r_ptr + rm[:, None] * stride_r + dd[None, :], mask=m2, other=0.0)
                s = (s.to(tl.float32) + r.to(tl.float32)).to(dt)
            w = tl.load(w_ptr + band * D + dd, mask=dmask, other=0.0)
            acc += tl.sum(s.to(tl.float32) * w.to(tl.float32)[None, :], axis=1)
        raw = acc.to(dt).to(tl.float32) + tl.load(b_ptr + band)
        skip = raw >= tl.load(thr_ptr + band)
        tl.store(keep_ptr + band * N + rm, tl.where(skip, 0, 1).to(tl.int8), mask=mmask)
        tl.atomic_add(cnt_ptr + band, tl.sum((skip & mmask).to(tl.int64), axis=0) * counted)
        tl.atomic_add(cnt_ptr + B + band, tl.sum(mmask.to(tl.int64), axis=0))


def token_decide_triton(hidden: torch.Tensor, residual: torch.Tensor | None, w: torch.Tensor, b: torch.Tensor,
                        thr: torch.Tensor, counts: torch.Tensor, count_rows: int) -> torch.Tensor:
    """Launch :func:`_token_decide`; returns keep ``[B, N]`` bool (see :mod:`sedac.runtime.decide_ops`)."""
    n, d = hidden.shape
    nb = w.shape[0]
    keep = torch.empty((nb, n), device=hidden.device, dtype=torch.int8)
    if n == 0:
        return keep.view(torch.bool)
    if not (w.is_contiguous() and hidden.stride(1) == 1 and counts.is_contiguous() and counts.dtype == torch.int64
            and (residual is None or residual.stride(1) == 1)):
        raise ValueError("token_decide_triton needs contiguous w / counts (int64) and unit column strides")
    res = hidden if residual is None else residual
    bm = 16 if n <= 64 else 32
    _token_decide[(triton.cdiv(n, bm),)](hidden, res, w, b, thr, counts, keep, n, d, hidden.stride(0), res.stride(0),
                                         count_rows, B=nb, HAS_RES=residual is not None, BM=bm, BD=256, num_warps=4)
    return keep.view(torch.bool)
