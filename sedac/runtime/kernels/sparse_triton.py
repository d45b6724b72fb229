"""Triton kernels of ``sedac::sparse_mlp`` (soft skip) at decode shapes (N = 1..32 rows).

Contract: :mod:`sedac.runtime.sparse_ops` (``x [N, H]``, per-row fp32 thresholds ``thr_x``,
``thr_h``, input-major weights ``w1 = Wgu^T [H, 2I]``, ``w2 = Wd^T [I, H]``).

Two launches (TEAL-style: weights ``[in, out]``, the mask fused into the weight load). ``N == 1``: the
compacting split-K GEMVs of :mod:`sedac.runtime.kernels.sparse_gemv`. ``2 <= N <= 32``: ``tl.dot`` tiles with
rows padded to ``BM = max(16, pow2(N))``:

``gate/up``  grid over column blocks of I; each program walks H in ``BK`` chunks, loads the x chunk,
             masks it per row (``|x| >= thr_x[row]``), and loads the gate and up weight rows (2 x BN
             contiguous elements each) **only for inputs some row keeps** (the union); fp32
             accumulation; epilogue = vLLM's SiluAndMul in x.dtype, then the h mask
             (``|h| >= thr_h[row]``), stored as ``hm [N, I]`` (:func:`act_triton.act_mask_store`).
``down``     split-K GEMM over ``hm``: a weight row of ``w2`` is loaded only when some row's ``hm``
             is non-zero there (a masked or exactly-zero h entry adds nothing, so this is exact);
             the splits are combined by :func:`sedac.runtime.kernels.splitk.finish_tile` (in-kernel
             "last program reduces", or a tiny second launch).

Each row masks its own inputs, so a row's output never depends on its batch-mates. A row with
``thr_x = +inf`` loads no weight (its x mask is empty, its hm row is 0); a step where every row has
``+inf`` reads no weight byte.

Launch configuration: tuned once per (device, H, I, row bucket) on dense thresholds and at 50 % sparsity
(the sum of both times picks) with the caller's real weights, before any graph capture
(:func:`tuned_config`); the same configuration serves every sparsity level (no per-level retuning is
possible per token). Inside a capture with no tuned entry, a default configuration is used (never a
tuning run). Candidates are timed replayed in a
CUDA graph (:func:`graph_ms`), as decode runs them. For ``N >= 2`` the tuning also
times the masked PyTorch path (dense cuBLAS GEMMs on the masked inputs): at batch >= 4 the rows'
masks union to 94-100 % of the weight rows, and when cuBLAS is faster the bucket runs it.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from sedac.runtime.kernels.act_triton import act_mask_store
from sedac.runtime.kernels.sparse_gemv import DOWN_GEMV, GATE_UP_GEMV, launch_down_gemv, launch_gate_up_gemv
from sedac.runtime.kernels.splitk import counters, dot_precision, finish_tile, reduce_partials, splits_for

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_ROWS = 32  #: N > 32 -> masked cuBLAS (BM = 64 tiles gave wrong results on an H200, not diagnosed)


@triton.jit
def _gate_up_dot(x_ptr, tx_ptr, w_ptr, th_ptr, h_ptr, N, H, I, stride_x,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """2 <= N <= BM: hm[m, j]; each row masks its own x; w1 rows loaded for the union of kept inputs."""
    pid = tl.program_id(0)
    rm = tl.arange(0, BM)
    rn = pid * BN + tl.arange(0, BN)
    nmask = rn < I
    tx = tl.load(tx_ptr + rm, mask=rm < N, other=float("inf"))
    accg = tl.zeros([BM, BN], dtype=tl.float32)
    accu = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, H, BK):
        kk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * stride_x + kk[None, :], mask=(rm[:, None] < N) & (kk[None, :] < H),
                    other=0.0)
        keep = tl.abs(x.to(tl.float32)) >= tx[:, None]
        x = tl.where(keep, x, 0.0)
        need = (tl.max(keep.to(tl.int32), axis=0) > 0) & (kk < H)
        wmask = need[:, None] & nmask[None, :]
        wg = tl.load(w_ptr + kk[:, None] * (2 * I) + rn[None, :], mask=wmask, other=0.0)
        wu = tl.load(w_ptr + kk[:, None] * (2 * I) + I + rn[None, :], mask=wmask, other=0.0)
        accg += tl.dot(x, wg, input_precision=PREC)
        accu += tl.dot(x, wu, input_precision=PREC)
    th = tl.load(th_ptr + rm, mask=rm < N, other=float("inf"))
    act_mask_store(accg, accu, th, rm, rn, N, I, h_ptr, I)


@triton.jit
def _down_dot(h_ptr, w_ptr, out_ptr, part_ptr, cnt_ptr, N, H, I, KS, S, stride_o,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, FUSED: tl.constexpr,
              PREC: tl.constexpr):
    """2 <= N <= BM, split s: hm rows times w2 rows needed by some row (union of non-zeros)."""
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < H
    k_end = tl.minimum(pid_s * KS + KS, I)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(pid_s * KS, k_end, BK):
        kk = k0 + tl.arange(0, BK)
        hv = tl.load(h_ptr + rm[:, None] * I + kk[None, :], mask=(rm[:, None] < N) & (kk[None, :] < k_end),
                     other=0.0)
        need = tl.max((hv != 0.0).to(tl.int32), axis=0) > 0
        w = tl.load(w_ptr + kk[:, None] * H + rn[None, :], mask=need[:, None] & nmask[None, :], other=0.0)
        acc += tl.dot(hv, w, input_precision=PREC)
    finish_tile(acc, rm, rn, N, H, out_ptr, stride_o, part_ptr, cnt_ptr, pid_n, pid_s, S, FUSED)


# ------------------------------------------------------------------------------------ launch + tuning
#: N >= 2 (tl.dot): gate/up (BN, BK, warps, stages); down (BN, BK, target programs, warps, stages, fused).
#: N == 1: sparse_gemv.GATE_UP_GEMV / DOWN_GEMV.
GATE_UP_DOT = [(64, 64, 4, 4), (128, 64, 8, 3), (64, 128, 4, 3), (32, 128, 4, 4), (128, 32, 4, 4)]
DOWN_DOT = [(64, 64, 528, 4, 4, True), (128, 64, 264, 8, 3, True), (64, 128, 264, 4, 3, True),
            (32, 128, 528, 4, 4, True), (64, 64, 528, 4, 4, False)]
_INTERP = {"gu": (16, 16, 1, 1), "down": (16, 16, 8, 1, 1, True), "gu1": (16, 16, 1, 1, 3, 1),
           "down1": (16, 16, 3, 1, 1, True, 1)}
_TUNED: dict = {}


def _launch_gate_up(x, tx, w1, th, h, cfg):
    """``N == 1``: :func:`sparse_gemv.launch_gate_up_gemv` (cfg of GATE_UP_GEMV); else ``tl.dot`` tiles, cfg =
    (BN, BK, warps, stages)."""
    n, hid = x.shape
    if n == 1:
        return launch_gate_up_gemv(x, tx, w1, th, h, cfg)
    inter = h.shape[1]
    bn, bk, warps, stages = cfg
    bm = max(16, triton.next_power_of_2(n))
    return _gate_up_dot[(triton.cdiv(inter, bn),)](x, tx, w1, th, h, n, hid, inter, x.stride(0), BM=bm, BN=bn,
                                                   BK=bk, PREC=dot_precision(x.dtype), num_warps=warps,
                                                   num_stages=stages)


def _launch_down(h, w2, out, cfg):
    """``N == 1``: :func:`sparse_gemv.launch_down_gemv` (cfg of DOWN_GEMV); else split-K ``tl.dot`` tiles, cfg =
    (BN, BK, target programs, warps, stages, fused)."""
    n, inter = h.shape
    if n == 1:
        return launch_down_gemv(h, w2, out, cfg)
    hid = out.shape[1]
    bn, bk, programs, warps, stages, fused = cfg
    cols = triton.cdiv(hid, bn)
    s, ks = splits_for(programs, cols, inter, bk)
    fused = fused and s > 1
    cnt = counters(out.device, cols) if fused else out
    part = torch.empty((s, n, hid), device=out.device, dtype=torch.float32) if s > 1 else out
    bm = max(16, triton.next_power_of_2(n))
    k = _down_dot[(cols, s)](h, w2, out, part, cnt, n, hid, inter, ks, s, out.stride(0), BM=bm, BN=bn, BK=bk,
                             FUSED=fused, PREC=dot_precision(h.dtype), num_warps=warps, num_stages=stages)
    if s > 1 and not fused:
        reduce_partials(part, out)
    return k


def _bucket(n: int) -> int:
    return 1 if n == 1 else max(16, triton.next_power_of_2(n))


def graph_ms(fn, calls: int = 8, replays: int = 7) -> float:
    """Median ms of one ``fn()`` replayed in a CUDA graph of ``calls`` calls: decode replays graphs, so the
    candidates are compared without launch overhead. (Eager timing once made the 8-kernel masked-cuBLAS path
    look slower than a 169 us Triton kernel at batch 4 on an H200 - the CPU, not the GPU, set its time.)"""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / calls)
    del graph
    return sorted(times)[len(times) // 2]


def tuned_config(x, w1, w2) -> tuple:
    """``(gate/up config, down config)`` for this device, shape and row bucket (tunes once, dense)."""
    if INTERPRET:
        return (_INTERP["gu1"], _INTERP["down1"]) if x.shape[0] == 1 else (_INTERP["gu"], _INTERP["down"])
    n, hid = x.shape
    inter = w2.shape[0]
    key = (x.device.index, hid, inter, _bucket(n), x.dtype)
    if key in _TUNED:
        return _TUNED[key]
    gu_space, down_space = (GATE_UP_GEMV, DOWN_GEMV) if n == 1 else (GATE_UP_DOT, DOWN_DOT)
    if torch.cuda.is_current_stream_capturing():
        return gu_space[0], down_space[0]  # no tuning inside a capture; not cached
    counters(x.device)
    g = torch.Generator(device=x.device).manual_seed(0)
    xd = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=g)
    zero = torch.zeros(n, device=x.device, dtype=torch.float32)
    h = torch.empty((n, inter), device=x.device, dtype=x.dtype)
    out = torch.empty_like(xd)
    _launch_gate_up(xd, zero, w1, zero, h, gu_space[0])  # dense h for the down timings
    hd = h.clone()
    # each candidate is timed dense and at 50 % sparsity (x: the median |x| of each row; h: half its entries 0),
    # and the sum picks: configurations with the same dense time differ in fixed cost (run 8: a second wave of
    # programs was a tie dense and 1.2 us slower at 25 %)
    tx50 = xd.float().abs().median(dim=1).values.contiguous()
    ha = hd.float().abs()
    h50 = torch.where(ha >= ha.median(dim=1, keepdim=True).values, hd, torch.zeros_like(hd))
    best_gu = min(gu_space, key=lambda c: sum(graph_ms(lambda t=t: _launch_gate_up(xd, t, w1, zero, h, c))
                                              for t in (zero, tx50)))
    best_dn = min(down_space, key=lambda c: sum(graph_ms(lambda hh=hh: _launch_down(hh, w2, out, c))
                                                for hh in (hd, h50)))
    _TUNED[key] = (best_gu, best_dn)
    if n > 1:  # batches: per-row masks union to nearly dense; the masked cuBLAS path may be faster
        from sedac.runtime.sparse_ops import sparse_mlp_reference

        t_tri = graph_ms(lambda: sparse_mlp_triton(xd, zero, zero, w1, w2, config=(best_gu, best_dn)))
        t_ref = graph_ms(lambda: sparse_mlp_reference(xd, zero, zero, w1, w2))
        if t_ref < t_tri:
            _TUNED[key] = ("torch", None)
    return _TUNED[key]


def sparse_mlp_triton(x: torch.Tensor, thr_x: torch.Tensor, thr_h: torch.Tensor, w1: torch.Tensor,
                      w2: torch.Tensor, out: torch.Tensor | None = None, h: torch.Tensor | None = None,
                      config: tuple | None = None) -> torch.Tensor:
    """Both launches for ``1 <= N <= MAX_ROWS`` (see module docstring); weights contiguous.

    ``out [N, H]`` / ``h [N, I]``: optional caller buffers (tests poison them); ``config``: force a
    ``(gate/up, down)`` configuration instead of the tuned one.
    """
    n, hid = x.shape
    inter = w2.shape[0]
    if not 1 <= n <= MAX_ROWS:
        raise ValueError(f"sparse_mlp_triton serves 1..{MAX_ROWS} rows, got {n}")
    if not (w1.is_contiguous() and w2.is_contiguous() and x.stride(1) == 1):
        raise ValueError("sparse_mlp_triton needs contiguous w1/w2 and unit column stride of x")
    if w1.shape != (hid, 2 * inter) or w2.shape != (inter, hid):
        raise ValueError(f"sparse_mlp_triton: w1 {tuple(w1.shape)} / w2 {tuple(w2.shape)} do not match H={hid}")
    tx = thr_x.to(torch.float32).contiguous()
    th = thr_h.to(torch.float32).contiguous()
    gu_cfg, dn_cfg = config or tuned_config(x, w1, w2)
    if gu_cfg == "torch":  # tuned choice for this row bucket: masked dense GEMMs on cuBLAS (sync-free)
        from sedac.runtime.sparse_ops import sparse_mlp_reference

        return sparse_mlp_reference(x, thr_x, thr_h, w1, w2)
    if h is None:
        h = torch.empty((n, inter), device=x.device, dtype=x.dtype)
    if out is None:
        out = torch.empty((n, hid), device=x.device, dtype=x.dtype)
    _launch_gate_up(x, tx, w1, th, h, gu_cfg)
    _launch_down(h, w2, out, dn_cfg)
    return out
