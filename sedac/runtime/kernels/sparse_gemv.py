"""Batch-1 kernels of ``sedac::sparse_mlp`` (soft skip): compacting split-K GEMVs.

Contract and the ``N >= 2`` kernels: :mod:`sedac.runtime.kernels.sparse_triton`. Weights are input-major
(``w1 = Wgu^T [H, 2I]``, ``w2 = Wd^T [I, H]``), the mask is fused into the weight load (TEAL-style).

Both launches have grid ``(column blocks, S)``: program ``(j, s)`` owns BN output columns and the inputs
``[s * L, (s + 1) * L)`` (``L = ceil(K / S)``). It first **compacts** its kept inputs: the keep mask of its
``L`` inputs (``KS = pow2 >= L`` lanes) becomes an index list (``tl.cumsum``, a scratch row of int32 per
program, a CTA barrier), then it loops over ``ceil(kept / BK)`` dense tiles of gathered weight rows - the
loop trip count, not only the bytes, shrinks with sparsity. (A first version with predicated loads over
every input ran 128 / 97 us at 0 / 50 % sparsity on an H200: 0.58 of ideal; the loop set the time.)

``gate/up``  keeps input k when ``|x[k]| >= thr_x``; gathers 2 x BN contiguous weights per kept row (gate
             and up), fp32 accumulation; epilogue = vLLM's SiluAndMul in x's dtype, then the h mask
             (``|h| >= thr_h``), stored as ``hm [1, I]``.
``down``     keeps input k when ``hm[k] != 0`` (a masked or exactly-zero h entry adds nothing: exact).

With ``S > 1`` every program stores fp32 partials and bumps its column block's counter; the program that
arrives last sums the S partials (:func:`sedac.runtime.kernels.splitk.sum_splits`, ``FIN`` picks a loop, one
``[pow2(S), BN]`` tile load or an unrolled sum) and writes the output (down without ``FUSED``: a second,
tiny launch). ``S`` is a tuning knob: it sets the program count, hence how the grid fills the SMs' slots
(a second wave of a few programs is a tail of one program's duration).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sedac.runtime.kernels.act_triton import act_mask_store
from sedac.runtime.kernels.splitk import arrived_last, counters, reduce_partials, sum_splits


@triton.jit
def _stamp(trace_ptr, slot: tl.constexpr, TRACE: tl.constexpr):
    """TRACE only (``scripts/soft_kernel_phases.py``): this program's %globaltimer (ns) at ``slot`` of its 8-slot
    row, and its SM id at slot 7. Compiled out otherwise."""
    if TRACE:
        row = trace_ptr + (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) * 8
        tl.store(row + slot, tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64,
                                                       is_pure=False, pack=1))
        if slot == 0:
            tl.store(row + 7, tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32,
                                                        is_pure=True, pack=1).to(tl.int64))


@triton.jit
def _program_slice(scr_ptr, L, K, S: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr):
    """Program (j, s): its output columns ``rn`` (BN of them), its input lanes ``ka`` with ``kin`` = inside
    ``[s * L, (s + 1) * L)`` and below ``K``, and its scratch row (KS int32)."""
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    ka = pid_s * L + tl.arange(0, KS)
    return (pid_n * BN + tl.arange(0, BN), ka, ka < tl.minimum(pid_s * L + L, K),
            scr_ptr + (pid_n * S + pid_s) * KS)


@triton.jit
def _compact(ka, keep, scr_ptr):
    """The inputs ``ka`` whose lane is kept, in order, into ``scr_ptr[0:count]`` (then a CTA barrier); returns
    ``count``."""
    need = keep.to(tl.int32)
    pos = tl.cumsum(need, axis=0) - 1
    tl.store(scr_ptr + pos, ka, mask=need != 0)
    tl.debug_barrier()
    return tl.sum(need, axis=0)


@triton.jit
def _gate_up_gemv(x_ptr, tx_ptr, w_ptr, th_ptr, h_ptr, scr_ptr, part_ptr, cnt_ptr, trace_ptr, H, I, L,
                  S: tl.constexpr, SP: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  FIN: tl.constexpr, EV: tl.constexpr, TRACE: tl.constexpr):
    _stamp(trace_ptr, 0, TRACE)
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    rn, ka, kin, scr = _program_slice(scr_ptr, L, H, S, KS, BN)
    nmask = rn < I
    xa = tl.load(x_ptr + ka, mask=kin, other=0.0).to(tl.float32)
    th = tl.load(th_ptr + tl.arange(0, 1))
    cnt = _compact(ka, (tl.abs(xa) >= tl.load(tx_ptr)) & kin, scr)
    _stamp(trace_ptr, 1, TRACE)
    accg = tl.zeros([BK, BN], dtype=tl.float32)
    accu = tl.zeros([BK, BN], dtype=tl.float32)
    for j in range(0, cnt, BK):
        jj = j + tl.arange(0, BK)
        jm = jj < cnt
        kk = tl.load(scr + jj, mask=jm, other=0)
        x = tl.load(x_ptr + kk, mask=jm, other=0.0).to(tl.float32)
        wmask = jm[:, None] & nmask[None, :]
        wg = tl.load(w_ptr + kk[:, None] * (2 * I) + rn[None, :], mask=wmask, other=0.0, eviction_policy=EV)
        wu = tl.load(w_ptr + kk[:, None] * (2 * I) + I + rn[None, :], mask=wmask, other=0.0, eviction_policy=EV)
        accg += wg.to(tl.float32) * x[:, None]
        accu += wu.to(tl.float32) * x[:, None]
    g = tl.sum(accg, axis=0)
    u = tl.sum(accu, axis=0)
    _stamp(trace_ptr, 2, TRACE)
    if S == 1:
        act_mask_store(g[None, :], u[None, :], th, tl.arange(0, 1), rn, 1, I, h_ptr, I)
    else:  # partials part [S, 2, I]; the column block's last program sums them and applies the activation
        tl.store(part_ptr + (pid_s * 2) * I + rn, g, mask=nmask)
        tl.store(part_ptr + (pid_s * 2 + 1) * I + rn, u, mask=nmask)
        if arrived_last(cnt_ptr + pid_n, S):
            tg = sum_splits(part_ptr, rn, I, 2 * I, S, SP, FIN)
            tu = sum_splits(part_ptr + I, rn, I, 2 * I, S, SP, FIN)
            act_mask_store(tg[None, :], tu[None, :], th, tl.arange(0, 1), rn, 1, I, h_ptr, I)
            tl.atomic_xchg(cnt_ptr + pid_n, 0)
    _stamp(trace_ptr, 3, TRACE)


@triton.jit
def _down_gemv(h_ptr, w_ptr, out_ptr, part_ptr, cnt_ptr, scr_ptr, trace_ptr, H, I, L, S: tl.constexpr,
               SP: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, FUSED: tl.constexpr,
               FIN: tl.constexpr, EV: tl.constexpr, TRACE: tl.constexpr):
    _stamp(trace_ptr, 0, TRACE)
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    rn, ka, kin, scr = _program_slice(scr_ptr, L, I, S, KS, BN)
    nmask = rn < H
    ha = tl.load(h_ptr + ka, mask=kin, other=0.0)
    cnt = _compact(ka, (ha != 0.0) & kin, scr)
    _stamp(trace_ptr, 1, TRACE)
    acc = tl.zeros([BK, BN], dtype=tl.float32)
    for j in range(0, cnt, BK):
        jj = j + tl.arange(0, BK)
        jm = jj < cnt
        kk = tl.load(scr + jj, mask=jm, other=0)
        hv = tl.load(h_ptr + kk, mask=jm, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + kk[:, None] * H + rn[None, :], mask=jm[:, None] & nmask[None, :], other=0.0,
                    eviction_policy=EV)
        acc += w.to(tl.float32) * hv[:, None]
    tot = tl.sum(acc, axis=0)
    _stamp(trace_ptr, 2, TRACE)
    if S == 1:
        tl.store(out_ptr + rn, tot.to(out_ptr.dtype.element_ty), mask=nmask)
    else:  # partials part [S, 1, H] (the layout reduce_partials finishes when not FUSED)
        tl.store(part_ptr + pid_s * H + rn, tot, mask=nmask)
        if FUSED:
            if arrived_last(cnt_ptr + pid_n, S):
                fin = sum_splits(part_ptr, rn, H, H, S, SP, FIN)
                tl.store(out_ptr + rn, fin.to(out_ptr.dtype.element_ty), mask=nmask)
                tl.atomic_xchg(cnt_ptr + pid_n, 0)
    _stamp(trace_ptr, 3, TRACE)


# --------------------------------------------------------------------------------------------- launch
#: gate/up (BN, BK, warps, stages, S, FIN[, EV]); down (BN, BK, S, warps, stages, FUSED, FIN[, EV]). S: splits of the
#: inputs (> 0: S equal splits; < 0: -S inputs per split, last shorter: _splits). FIN: 0 loop, 1 one-tile, 2 unrolled
#: finish (splitk.sum_splits). EV 1: weights loaded evict_first. Stages never mattered (run 4: 2/3/5 equal to 0.1 us:
#: these gathers are not software-pipelined), so 3 throughout. Run 6 (H200, sweep): the best grids are one wave of
#: about 9 programs per SM (gate/up 296 column blocks x 4 = 1,184; down 56 x 19 = 1,064), fewer programs lose bytes in
#: flight (gate/up S = 2: 113 us dense vs 75), a second wave adds a tail; the one-tile finish costs gate/up 12 us.
#: Run 8: evict_first made down 46.2 -> 40.8 us dense, gate/up 79.5 -> 76.0. The first entry serves captures with
#: no tuned entry.
GATE_UP_GEMV = [(64, 16, 4, 3, 4, 0, 1), (64, 32, 4, 3, 4, 0, 1), (64, 32, 4, 3, 4, 2, 1), (64, 16, 4, 3, 4, 2, 1),
                (64, 16, 4, 3, 5, 0, 1), (64, 32, 4, 3, 4, 0)]
DOWN_GEMV = [(64, 32, 19, 4, 3, True, 1, 1), (64, 32, 19, 4, 3, True, 1), (64, 32, 16, 4, 3, True, 1, 1),
             (128, 32, 19, 8, 3, True, 1, 1), (64, 32, -1024, 4, 3, True, 1, 1), (64, 32, 19, 4, 3, True, 0, 1),
             (64, 32, 19, 4, 3, True, 2, 1)]


def _splits(k: int, s: int) -> tuple[int, int, int]:
    """``(S, L, KS)``: ``s > 0``: about s equal splits of ``k`` inputs, L = ceil(k / s) inputs each, KS = pow2 >= L
    lanes; ``s < 0``: L = KS = -s (a power of two) inputs per split, the last one shorter."""
    length = -s if s < 0 else triton.cdiv(k, max(1, s))
    return triton.cdiv(k, length), length, triton.next_power_of_2(length)


def _ev(cfg: tuple, n: int) -> str:
    """The weight loads' eviction policy: ``cfg[n]`` (optional) 1 -> ``evict_first`` (weights are read once per
    step; x, h, partials and index lists then stay in L2), else the default."""
    return "evict_first" if len(cfg) > n and cfg[n] else ""


def trace_rows(k: int, cols: int, s: int) -> int:
    """Programs of a launch over ``k`` inputs (``cfg`` S = ``s``) and ``cols`` column blocks: rows of a trace."""
    return cols * _splits(k, s)[0]


def launch_gate_up_gemv(x, tx, w1, th, h, cfg, trace=None):
    """``hm [1, I]`` from ``x [1, H]``: cfg = (BN, BK, warps, stages, S, FIN[, EV]). Returns the compiled kernel.
    ``trace``: int64 ``[programs, 8]`` filled with per-program timestamps (diagnostics only)."""
    hid, inter = x.shape[1], h.shape[1]
    bn, bk, warps, stages, s, fin = cfg[:6]
    s, length, ks = _splits(hid, s)
    cols = triton.cdiv(inter, bn)
    scr = torch.empty((cols * s * ks,), device=x.device, dtype=torch.int32)  # per-program index lists
    part = torch.empty((s, 2, inter), device=x.device, dtype=torch.float32) if s > 1 else h
    cnt = counters(x.device, cols) if s > 1 else h
    return _gate_up_gemv[(cols, s)](x, tx, w1, th, h, scr, part, cnt, scr if trace is None else trace, hid, inter,
                                    length, S=s, SP=triton.next_power_of_2(s), KS=ks, BN=bn, BK=bk, FIN=fin,
                                    EV=_ev(cfg, 6), TRACE=trace is not None, num_warps=warps, num_stages=stages)


def launch_down_gemv(h, w2, out, cfg, trace=None):
    """``out [1, H]`` from ``hm [1, I]``: cfg = (BN, BK, S, warps, stages, FUSED, FIN[, EV]). Returns the compiled
    kernel.
    ``trace``: as :func:`launch_gate_up_gemv`."""
    inter, hid = h.shape[1], out.shape[1]
    bn, bk, s, warps, stages, fused, fin = cfg[:7]
    s, length, ks = _splits(inter, s)
    cols = triton.cdiv(hid, bn)
    fused = fused and s > 1
    cnt = counters(out.device, cols) if fused else out
    part = torch.empty((s, 1, hid), device=out.device, dtype=torch.float32) if s > 1 else out
    scr = torch.empty((cols * s * ks,), device=out.device, dtype=torch.int32)
    k = _down_gemv[(cols, s)](h, w2, out, part, cnt, scr, scr if trace is None else trace, hid, inter, length, S=s,
                              SP=triton.next_power_of_2(s), KS=ks, BN=bn, BK=bk, FUSED=fused, FIN=fin,
                              EV=_ev(cfg, 7), TRACE=trace is not None, num_warps=warps, num_stages=stages)
    if s > 1 and not fused:
        reduce_partials(part, out)
    return k
