"""Triton kernels for the skip-aware SiLU-gated MLP at decode shapes (M = 1..64 rows).

Contract (same as :func:`sedac.runtime.mlp_ops.skip_mlp_reference`)::

    x [N, H], keep [N] bool, w_gate_up [2I, H] (gate rows first), w_down [H, I]  ->  out [N, H]
    out[n] = down(silu(gate(x[n])) * up(x[n]))   where keep[n]
    out[n] = 0                                     where not keep[n]

No host synchronisation: every program reads the device-side ``keep`` vector itself and

* when no row is kept (``batch`` policy skip, or a ``token`` step where every row skips), the gate/up
  kernel returns at once and the down kernel only writes zeros: **no weight byte is read**;
* a skipped row's activations are never loaded (masked loads), so its output is exactly 0 and its
  intermediate row is 0 - "skipped rows untouched" means: nothing of a skipped row is read and its
  output row holds 0, never a stale or partial value.

So one captured CUDA graph serves every decision. Two kernel families:

``gemv`` (N == 1): plain multiply-add over ``[BN, BK]`` weight tiles, fp32 accumulation; silu*mul is
fused into the gate/up epilogue, so the intermediate is written once in bf16.
``dot``  (2 <= N <= 64): tensor-core ``tl.dot`` with the rows padded to ``BM = max(16, pow2(N))``.

At these shapes the MLP is bound by weight bytes (arithmetic intensity N FLOP/byte, far below the
H100/H200 ridge of ~250), so a partially kept step reads every weight once whatever the row count;
row skipping saves tensor-core FLOPs only, which do not set the time. See docs/perf.md.

Config choice is the only tuning knob: ``triton.autotune`` over a short list on GPU (runs during the
warm-up call, before any CUDA-graph capture), one fixed config under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from sedac.runtime.kernels.splitk import counters, dot_precision, finish_tile

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_ROWS = 64  #: largest N served by the kernels; bigger batches (prefill) use the masked torch path


def _configs(space, interp, evict_first=()):
    """Autotune configs of ``space`` (weights loaded with the default policy) plus ``evict_first`` (configs of the
    space again with ``evict_first`` weight loads: weights are read once per step, so x, h and the split-K
    partials stay in L2; on an H200 this made the soft-skip kernels' down 5-12 % faster, perf.md soft-kernel run 8)."""
    if INTERPRET:
        return [triton.Config({**interp, "EV": ""}, num_warps=4)]
    keys = ("BN", "BK", "S") if len(space[0]) == 5 else ("BN", "BK")
    return [triton.Config({**dict(zip(keys, c[:len(keys)])), "EV": ev}, num_warps=c[-2], num_stages=c[-1])
            for cs, ev in ((space, ""), (evict_first, "evict_first")) for c in cs]


# (BN, BK, warps, stages)
# run 1 (H100) picked gemv (8,512,4,2)/(4,512,4,3) and dot (64,128,4,4)/(16,256,4,3): space widened around them.
# H200, 2026-11-28 evening (scripts/mlp_dense_refs.py, docs/perf.md): configs with fewer stages / smaller BK added
# (likely reason, not profiled: 2-3 gate/up programs share an SM; 296 programs at BN 64 with ~160 KB of shared
# memory each ran as 2.24 waves of one per SM): M=32 0.931 -> 1.030 of cuBLAS +
# fused activation (picked (64,64,4,3)); M=1 0.974 -> 0.987 (picked gemv (16,512,4,3)). The old configs stay in.
_GEMV_SPACE = [(8, 512, 4, 2), (16, 256, 4, 3), (16, 512, 8, 2), (8, 1024, 8, 2), (4, 512, 4, 3), (4, 1024, 4, 2),
               (2, 1024, 4, 3), (8, 256, 4, 4), (8, 512, 4, 3), (16, 512, 4, 3), (32, 256, 4, 3), (16, 256, 8, 4)]
_DOT_SPACE = [(32, 128, 4, 4), (64, 128, 4, 4), (64, 64, 4, 6), (64, 128, 8, 4), (128, 64, 8, 4), (128, 128, 8, 3),
              (16, 256, 4, 3), (16, 512, 4, 3), (16, 256, 8, 4), (32, 256, 8, 3), (16, 128, 4, 6),
              (64, 64, 4, 3), (64, 64, 4, 4), (32, 64, 4, 4), (64, 128, 4, 2), (128, 64, 4, 3), (32, 128, 4, 3)]
# down kernels (issue 12): split-K over I (S slices, in-kernel reduce) for more programs in flight - the
# H100-chosen S = 1 configs (56-448 programs) left the H200's faster memory under-used (0.944 / 0.861 of cuBLAS)
# (BN, BK, S, warps, stages)
MAX_SPLITS = 8
_DOWN_GEMV_SPACE = [(8, 512, 1, 4, 2), (4, 512, 1, 4, 3), (16, 256, 1, 4, 3), (8, 256, 2, 4, 3), (16, 256, 2, 4, 3),
                    (32, 128, 4, 4, 3), (16, 512, 2, 8, 2), (32, 256, 4, 8, 3), (64, 128, 8, 4, 3),
                    (8, 512, 2, 4, 3), (16, 256, 4, 4, 3), (8, 256, 4, 4, 3), (16, 512, 4, 8, 3)]
_DOWN_DOT_SPACE = [(16, 256, 1, 4, 3), (32, 128, 1, 4, 4), (16, 256, 2, 4, 3), (32, 128, 2, 4, 4), (32, 256, 4, 8, 3),
                   (64, 128, 4, 4, 4), (64, 64, 8, 4, 4), (128, 64, 8, 8, 3), (64, 128, 8, 8, 3), (32, 128, 8, 4, 4),
                   (64, 128, 8, 4, 3), (32, 128, 8, 4, 3), (32, 64, 8, 4, 4), (64, 64, 4, 4, 3)]

# the same configs with evict_first weight loads (soft-kernel run 8 of perf.md, H200: cuBLAS ran 3.80 TB/s on
# that machine, the keep-all Triton MLP 0.965 of it at M = 1): the configs picked in earlier runs and their neighbours
_GEMV_EVICT = [(8, 256, 4, 4), (8, 512, 4, 3), (16, 512, 4, 3), (32, 256, 4, 3)]
_DOWN_GEMV_EVICT = [(32, 256, 4, 8, 3), (64, 128, 8, 4, 3), (16, 256, 4, 4, 3), (16, 512, 4, 8, 3)]
_DOT_EVICT = [(64, 64, 4, 3), (64, 64, 4, 4), (32, 64, 4, 4)]
_DOWN_DOT_EVICT = [(64, 128, 4, 4, 4), (64, 64, 8, 4, 4)]

@triton.autotune(configs=_configs(_GEMV_SPACE, {"BN": 16, "BK": 32}, _GEMV_EVICT), key=["H", "I"])
@triton.jit
def _gate_up_gemv(x_ptr, keep_ptr, w_ptr, h_ptr, H, I, BN: tl.constexpr, BK: tl.constexpr, EV: tl.constexpr):
    """N == 1: h[0, n] = silu(x . Wg[n]) * (x . Wu[n]) for n in this program's BN columns."""
    pid = tl.program_id(0)
    kept = tl.load(keep_ptr) != 0
    if kept:
        rn = pid * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        nmask = rn < I
        accg = tl.zeros([BN, BK], dtype=tl.float32)
        accu = tl.zeros([BN, BK], dtype=tl.float32)
        for k0 in range(0, H, BK):
            kk = k0 + rk
            kmask = kk < H
            x = tl.load(x_ptr + kk, mask=kmask, other=0.0).to(tl.float32)
            wmask = nmask[:, None] & kmask[None, :]
            wg = tl.load(w_ptr + rn[:, None] * H + kk[None, :], mask=wmask, other=0.0, eviction_policy=EV)
            wu = tl.load(w_ptr + (rn[:, None] + I) * H + kk[None, :], mask=wmask, other=0.0, eviction_policy=EV)
            accg += wg.to(tl.float32) * x[None, :]
            accu += wu.to(tl.float32) * x[None, :]
        g = tl.sum(accg, axis=1)
        u = tl.sum(accu, axis=1)
        h = g * tl.sigmoid(g) * u
        tl.store(h_ptr + rn, h.to(h_ptr.dtype.element_ty), mask=nmask)


@triton.autotune(configs=_configs(_DOWN_GEMV_SPACE, {"BN": 16, "BK": 32, "S": 2}, _DOWN_GEMV_EVICT),
                 key=["H", "I"])
@triton.jit
def _down_gemv(h_ptr, keep_ptr, w_ptr, out_ptr, part_ptr, cnt_ptr, H, I,
               BN: tl.constexpr, BK: tl.constexpr, S: tl.constexpr, EV: tl.constexpr):
    """N == 1: out[0, n] = h . Wd[n] (0 when the row is skipped; weights then unread); split-K over I
    in S slices, finished by :func:`sedac.runtime.kernels.splitk.finish_tile` (in-kernel reduce)."""
    pid, pid_s = tl.program_id(0), tl.program_id(1)
    kept = tl.load(keep_ptr) != 0
    rn = pid * BN + tl.arange(0, BN)
    nmask = rn < H
    acc = tl.zeros([BN], dtype=tl.float32)
    if kept:
        ks = tl.cdiv(tl.cdiv(I, S), BK) * BK
        k_end = tl.minimum(pid_s * ks + ks, I)
        rk = tl.arange(0, BK)
        acc2 = tl.zeros([BN, BK], dtype=tl.float32)
        for k0 in range(pid_s * ks, k_end, BK):
            kk = k0 + rk
            kmask = kk < k_end
            h = tl.load(h_ptr + kk, mask=kmask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rn[:, None] * I + kk[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0,
                        eviction_policy=EV)
            acc2 += w.to(tl.float32) * h[None, :]
        acc = tl.sum(acc2, axis=1)
    finish_tile(acc[None, :], tl.arange(0, 1), rn, 1, H, out_ptr, H, part_ptr, cnt_ptr, pid, pid_s, S, True)


@triton.autotune(configs=_configs(_DOT_SPACE, {"BN": 16, "BK": 16}, _DOT_EVICT), key=["BM", "H", "I"])
@triton.jit
def _gate_up_dot(x_ptr, keep_ptr, w_ptr, h_ptr, N, H, I, stride_x,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, EV: tl.constexpr):
    """2 <= N <= BM: h[m, n] = silu(x[m] . Wg[n]) * (x[m] . Wu[n]) for kept rows (0 for skipped rows)."""
    pid = tl.program_id(0)
    rm = tl.arange(0, BM)
    kv = tl.load(keep_ptr + rm, mask=rm < N, other=0) != 0
    count = tl.sum(kv.to(tl.int32), axis=0)
    if count > 0:
        rn = pid * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        nmask = rn < I
        accg = tl.zeros([BM, BN], dtype=tl.float32)
        accu = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, H, BK):
            kk = k0 + rk
            kmask = kk < H
            x = tl.load(x_ptr + rm[:, None] * stride_x + kk[None, :], mask=kv[:, None] & kmask[None, :], other=0.0)
            wmask = kmask[:, None] & nmask[None, :]
            wg = tl.load(w_ptr + rn[None, :] * H + kk[:, None], mask=wmask, other=0.0, eviction_policy=EV)  # [BK, BN]
            wu = tl.load(w_ptr + (rn[None, :] + I) * H + kk[:, None], mask=wmask, other=0.0, eviction_policy=EV)
            accg += tl.dot(x, wg, input_precision=PREC)
            accu += tl.dot(x, wu, input_precision=PREC)
        h = accg * tl.sigmoid(accg) * accu
        tl.store(h_ptr + rm[:, None] * I + rn[None, :], h.to(h_ptr.dtype.element_ty),
                 mask=(rm[:, None] < N) & nmask[None, :])


@triton.autotune(configs=_configs(_DOWN_DOT_SPACE, {"BN": 16, "BK": 16, "S": 2}, _DOWN_DOT_EVICT),
                 key=["BM", "H", "I"])
@triton.jit
def _down_dot(h_ptr, keep_ptr, w_ptr, out_ptr, part_ptr, cnt_ptr, N, H, I, stride_o,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, S: tl.constexpr,
              PREC: tl.constexpr, EV: tl.constexpr):
    """2 <= N <= BM: out[m, n] = h[m] . Wd[n] for kept rows; 0 for skipped rows and skipped steps.
    Split-K over I in S slices (see _down_gemv)."""
    pid, pid_s = tl.program_id(0), tl.program_id(1)
    rm = tl.arange(0, BM)
    kv = tl.load(keep_ptr + rm, mask=rm < N, other=0) != 0
    count = tl.sum(kv.to(tl.int32), axis=0)
    rn = pid * BN + tl.arange(0, BN)
    nmask = rn < H
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    if count > 0:
        ks = tl.cdiv(tl.cdiv(I, S), BK) * BK
        k_end = tl.minimum(pid_s * ks + ks, I)
        rk = tl.arange(0, BK)
        for k0 in range(pid_s * ks, k_end, BK):
            kk = k0 + rk
            kmask = kk < k_end
            h = tl.load(h_ptr + rm[:, None] * I + kk[None, :], mask=kv[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_ptr + rn[None, :] * I + kk[:, None], mask=kmask[:, None] & nmask[None, :], other=0.0,
                        eviction_policy=EV)
            acc += tl.dot(h, w, input_precision=PREC)
    finish_tile(acc, rm, rn, N, H, out_ptr, stride_o, part_ptr, cnt_ptr, pid, pid_s, S, True)


def skip_mlp_triton(x: torch.Tensor, keep: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                    out: torch.Tensor | None = None, h: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the two kernels (see module docstring). ``N <= MAX_ROWS``; weights contiguous.

    x [N, H] (row stride free, unit column stride), keep [N] bool, w_gate_up [2I, H], w_down [H, I].
    ``out [N, H]`` / ``h [N, I]`` (contiguous, optional): caller-provided output / intermediate buffers
    (tests poison them to check that every output element is written).
    """
    n, hid = x.shape
    inter = w_down.shape[1]
    if not (1 <= n <= MAX_ROWS):
        raise ValueError(f"skip_mlp_triton serves 1..{MAX_ROWS} rows, got {n}")
    if not (w_gate_up.is_contiguous() and w_down.is_contiguous() and x.stride(1) == 1):
        raise ValueError("skip_mlp_triton needs contiguous weights and unit column stride of x")
    if w_gate_up.shape != (2 * inter, hid) or w_down.shape != (hid, inter):
        raise ValueError(f"weight shapes {tuple(w_gate_up.shape)}, {tuple(w_down.shape)} do not match H={hid}")
    keep_u8 = keep.contiguous().view(torch.uint8) if keep.dtype == torch.bool else (keep != 0).view(torch.uint8)
    if h is None:
        h = torch.empty((n, inter), device=x.device, dtype=x.dtype)
    if out is None:
        out = torch.empty((n, hid), device=x.device, dtype=x.dtype)
    # split-K scratch of the down kernel: fp32 partials for the largest S of the space, zeroed counters
    part = torch.empty((MAX_SPLITS, n, hid), device=x.device, dtype=torch.float32)
    cnt = counters(x.device, triton.cdiv(hid, 4))
    if n == 1:
        _gate_up_gemv[lambda m: (triton.cdiv(inter, m["BN"]),)](x, keep_u8, w_gate_up, h, hid, inter)
        _down_gemv[lambda m: (triton.cdiv(hid, m["BN"]), m["S"])](h, keep_u8, w_down, out, part, cnt, hid, inter)
    else:
        bm = max(16, triton.next_power_of_2(n))
        _gate_up_dot[lambda m: (triton.cdiv(inter, m["BN"]),)](
            x, keep_u8, w_gate_up, h, n, hid, inter, x.stride(0), BM=bm, PREC=dot_precision(x.dtype))
        _down_dot[lambda m: (triton.cdiv(hid, m["BN"]), m["S"])](
            h, keep_u8, w_down, out, part, cnt, n, hid, inter, out.stride(0), BM=bm,
            PREC=dot_precision(h.dtype))
    return out
