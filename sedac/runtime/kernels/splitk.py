"""Split-K plumbing shared by the MLP kernels: the epilogue that turns per-split partial sums into the
output, and the device buffers it needs.

A split-K launch has grid ``(column blocks, S)``: program ``(j, s)`` sums its slice of the reduction
dimension into an fp32 tile. :func:`finish_tile` then either

* ``S == 1``: writes the tile to the output (dtype of the output), or
* ``FUSED``: writes the fp32 partial to ``part [S, N, C]``, bumps the column block's counter
  (``acq_rel``, after a CTA barrier, the pattern of a grid barrier); the program that arrives last
  sums the S partials (L2 reads, ``.cg``), writes the output and resets the counter to 0 for the next
  launch - one launch, no extra kernel, no host sync, CUDA-graph safe (the counters are allocated
  once outside capture, zeroed, and left zeroed by every launch);
* otherwise writes the partial; :func:`reduce_partials` (a second, tiny launch) finishes.

Counters are per device and shared by sequential launches on one stream (decode runs one stream).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_COUNTERS: dict = {}
MAX_COLUMN_BLOCKS = 1 << 14


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for operands of ``dtype``: IEEE for float32 (Triton's default is TF32,
    which PyTorch's "highest" matmul precision - vLLM's default - does not use: a float32 model's outputs
    would then depend on the row count), the native tensor-core path otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def arrived_last(cnt_ptr, S):
    """After this program stored its partial: a CTA barrier, then bump the column block's counter (``acq_rel``,
    the pattern of a grid barrier). True in the one program that arrives last (it alone may read every
    partial; it resets the counter to 0 when done)."""
    tl.debug_barrier()
    return tl.atomic_add(cnt_ptr, 1, sem="acq_rel") == S - 1


@triton.jit
def finish_tile(acc, rm, rn, N, C, out_ptr, stride_o, part_ptr, cnt_ptr, pid_n, pid_s, S,
                FUSED: tl.constexpr):
    """Write ``acc [BM, BN]`` (rows ``rm``, columns ``rn`` of an ``[N, C]`` output): see module docstring."""
    omask = (rm[:, None] < N) & (rn[None, :] < C)
    optrs = out_ptr + rm[:, None] * stride_o + rn[None, :]
    if S == 1:
        tl.store(optrs, acc.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        pptrs = part_ptr + (pid_s * N + rm[:, None]) * C + rn[None, :]
        tl.store(pptrs, acc, mask=omask)
        if FUSED:
            if arrived_last(cnt_ptr + pid_n, S):
                tot = tl.zeros(acc.shape, dtype=tl.float32)
                for s in range(0, S):
                    tot += tl.load(part_ptr + (s * N + rm[:, None]) * C + rn[None, :], mask=omask, other=0.0,
                                   cache_modifier=".cg")
                tl.store(optrs, tot.to(out_ptr.dtype.element_ty), mask=omask)
                tl.atomic_xchg(cnt_ptr + pid_n, 0)


@triton.jit
def sum_splits(part_ptr, rn, C, stride_s, S: tl.constexpr, SP: tl.constexpr, FIN: tl.constexpr):
    """``sum_s part[s * stride_s + rn]`` over ``s < S`` (fp32, L2 reads ``.cg``) in the program that finishes a
    column block, so its latency is the launch's tail. ``FIN`` 0: a loop (S dependent L2 round trips, ~0.4 us
    each on an H200); 1: one ``[SP, BN]`` tile load (``SP = pow2 >= S``); 2: S loads unrolled. 1 and 2 issue
    every load at once."""
    cm = rn < C
    if FIN == 1:
        sp = tl.arange(0, SP)
        v = tl.load(part_ptr + sp[:, None] * stride_s + rn[None, :], mask=(sp[:, None] < S) & cm[None, :],
                    other=0.0, cache_modifier=".cg")
        tot = tl.sum(v, axis=0)
    elif FIN == 2:
        tot = tl.zeros(rn.shape, dtype=tl.float32)
        for s in tl.static_range(S):
            tot += tl.load(part_ptr + s * stride_s + rn, mask=cm, other=0.0, cache_modifier=".cg")
    else:
        tot = tl.zeros(rn.shape, dtype=tl.float32)
        for s in range(0, S):
            tot += tl.load(part_ptr + s * stride_s + rn, mask=cm, other=0.0, cache_modifier=".cg")
    return tot


@triton.jit
def _reduce_kernel(part_ptr, out_ptr, N, C, S, stride_o, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < N * C
    tot = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, S):
        tot += tl.load(part_ptr + s * N * C + idx, mask=mask, other=0.0)
    row, col = idx // C, idx % C
    tl.store(out_ptr + row * stride_o + col, tot.to(out_ptr.dtype.element_ty), mask=mask)


def reduce_partials(part: torch.Tensor, out: torch.Tensor) -> None:
    """``out [N, C] = part [S, N, C].sum(0)`` in out's dtype (one launch)."""
    s, n, c = part.shape
    block = 1024
    _reduce_kernel[(triton.cdiv(n * c, block),)](part, out, n, c, s, out.stride(0), BLOCK=block)


def counters(device: torch.device, needed: int = 1) -> torch.Tensor:
    """Zeroed int32 counters of ``device``: allocated once and cached outside graph capture; inside a
    capture with none cached, a fresh ``zeros`` (its memset is captured and replays, so still correct)."""
    key = (device.type, device.index)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < needed:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return torch.zeros(needed, dtype=torch.int32, device=device)  # never cache a graph-pool buffer
        buf = torch.zeros(max(needed, MAX_COLUMN_BLOCKS), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def splits_for(programs: int, column_blocks: int, k: int, bk: int) -> tuple[int, int]:
    """``(S, KS)``: about ``programs`` programs over ``column_blocks`` columns; KS rows per split, BK multiple."""
    s = max(1, min(round(programs / column_blocks), triton.cdiv(k, bk)))
    ks = triton.cdiv(triton.cdiv(k, s), bk) * bk
    return triton.cdiv(k, ks), ks
