"""``silu(gate) * up`` in one pass: what vLLM's ``silu_and_mul`` does between its two MLP GEMMs.

``gu [M, 2I]`` (gate columns first, the layout of ``x @ w_gate_up.T``) -> ``h [M, I]``, computed in fp32 and
rounded once to ``gu``'s dtype. PyTorch's ``F.silu(g) * u`` is two elementwise kernels with an intermediate
``[M, I]`` tensor in between (one extra write and read of it, one extra launch). Used by the dense cuBLAS
MLP of ``sedac::skip_mlp`` (rows above the Triton kernels' limit) and as the activation of the dense
reference the decode benchmark compares the Triton MLP with, so that reference is the MLP vLLM runs
(cuBLAS GEMMs + one fused activation kernel), not a slower one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_mul(gu_ptr, h_ptr, I, stride_gu, stride_h, BI: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BI + tl.arange(0, BI)
    mask = cols < I
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + I + cols, mask=mask, other=0.0).to(tl.float32)
    h = g / (1.0 + tl.exp(-g)) * u
    tl.store(h_ptr + row * stride_h + cols, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def act_mask_store(g, u, th, rm, rn, N, I, h_ptr, stride_h):
    """The soft-skip kernels' epilogue on fp32 ``g, u [BM, BN]``: SiluAndMul in h's dtype (gate and up rounded
    first, as vLLM), then the per-row h mask (``|h| >= th[row]``, else 0, ``th [BM]`` loaded by the caller - early,
    so its latency is off the finishing program's path); store ``h [N, I]``."""
    dt = h_ptr.dtype.element_ty
    g = g.to(dt).to(tl.float32)
    u = u.to(dt).to(tl.float32)
    s = (g * tl.sigmoid(g)).to(dt).to(tl.float32)
    h = (s * u).to(dt)
    h = tl.where(tl.abs(h.to(tl.float32)) >= th[:, None], h, 0.0)
    tl.store(h_ptr + rm[:, None] * stride_h + rn[None, :], h.to(dt), mask=(rm[:, None] < N) & (rn[None, :] < I))


def silu_mul_triton(gu: torch.Tensor) -> torch.Tensor:
    """``silu(gu[:, :I]) * gu[:, I:]`` for ``gu [M, 2I]`` with unit column stride (one launch, no host sync)."""
    m, two_i = gu.shape
    if two_i % 2 or gu.stride(1) != 1:
        raise ValueError(f"silu_mul_triton needs [M, 2I] with unit column stride, got {tuple(gu.shape)} "
                         f"strides {gu.stride()}")
    inter = two_i // 2
    h = torch.empty((m, inter), device=gu.device, dtype=gu.dtype)
    if m == 0:
        return h
    bi = 1024
    _silu_mul[(m, triton.cdiv(inter, bi))](gu, h, inter, gu.stride(0), h.stride(0), BI=bi, num_warps=4)
    return h
