"""Soft skip: a SiLU-gated MLP whose inputs are magnitude-thresholded per row (``sedac::sparse_mlp``).

Contract (what :func:`sparse_mlp_reference` computes, and what the CUDA kernels of
:mod:`sedac.runtime.kernels.sparse_triton` compute within bf16 rounding)::

    x [N, H], thr_x [N] float32, thr_h [N] float32, w1 [H, 2I], w2 [I, H]  ->  y [N, H] (x.dtype)
    xm = where(|x| >= thr_x[:, None], x, 0)
    gu = xm @ w1                      (fp32 accumulation, result in x.dtype; gate = gu[:, :I], up = gu[:, I:])
    h  = silu(gu[:, :I]) * gu[:, I:]  (in x.dtype, as vLLM's SiluAndMul)
    hm = where(|h| >= thr_h[:, None], h, 0)
    y  = hm @ w2                      (fp32 accumulation, result in x.dtype)

* ``w1 = Wgu^T`` and ``w2 = Wd^T`` are the **input-major** weights made once by
  :func:`prepare_sparse_weights` (vLLM/HF keep ``Wgu [2I, H]`` and ``Wd [H, I]``): a skipped input
  ``k`` then skips one contiguous weight row, which is what lets the kernels skip bytes.
* Each row masks only its own inputs (a token's output never depends on its batch-mates); the
  kernels read the union of the weight rows the batch needs.
* ``thr_x = +inf`` for a row: its output is exactly 0 and (CUDA) no weight is read for it; with every
  row at ``+inf`` the step reads no weight at all (whole-MLP skip). ``thr <= 0`` keeps every entry
  (the dense MLP). x is assumed finite.
* Thresholds live in device memory: no host sync, so one captured CUDA graph serves every decision.

The op is a ``torch.library`` custom op (opaque to ``torch.compile``, with a fake implementation);
its default (CPU) implementation is :func:`sparse_mlp_reference`. The CUDA implementation is
registered by :func:`sedac.runtime.kernels.register` (call it once, outside any traced forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prepare_sparse_weights(w_gate_up: torch.Tensor, w_down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-major weights for ``sedac::sparse_mlp``, made once at load time.

    ``w_gate_up [2I, H]`` (gate rows first, vLLM's ``gate_up_proj``) and ``w_down [H, I]`` ->
    ``(w1 [H, 2I], w2 [I, H])`` with ``w1 = w_gate_up.T`` and ``w2 = w_down.T``.

    Memory cost: on CUDA both are contiguous copies, i.e. **one extra copy of the MLP weights**
    (``3 * H * I`` elements per layer: 407 MB per layer, 11.4 GB for Qwen2.5-7B's 28 layers in bf16)
    unless the caller drops the originals and runs its own dense path on ``w1.T`` / ``w2.T`` (views
    holding the same values; cuBLAS reads either layout). On CPU they are transposed views (no copy):
    the CPU implementation is the PyTorch reference, which does not care about the layout.
    """
    if w_gate_up.dim() != 2 or w_down.dim() != 2 or w_gate_up.shape[0] != 2 * w_down.shape[1] \
            or w_gate_up.shape[1] != w_down.shape[0]:
        raise ValueError(f"prepare_sparse_weights: w_gate_up {tuple(w_gate_up.shape)} must be [2I, H] and "
                         f"w_down {tuple(w_down.shape)} must be [H, I]")
    w1, w2 = w_gate_up.detach().t(), w_down.detach().t()
    if w_gate_up.is_cuda:
        w1, w2 = w1.contiguous(), w2.contiguous()
    return w1, w2


def _check(x, thr_x, thr_h, w1, w2) -> int:
    if x.dim() != 2 or w1.dim() != 2 or w2.dim() != 2:
        raise ValueError("sparse_mlp: x, w1, w2 must be 2-D")
    n, hid = x.shape
    inter = w2.shape[0]
    if w1.shape != (hid, 2 * inter) or w2.shape != (inter, hid):
        raise ValueError(f"sparse_mlp: w1 {tuple(w1.shape)} must be [H, 2I] and w2 {tuple(w2.shape)} [I, H] "
                         f"for x [N, H={hid}] (use prepare_sparse_weights)")
    if thr_x.shape != (n,) or thr_h.shape != (n,):
        raise ValueError(f"sparse_mlp: thr_x {tuple(thr_x.shape)} and thr_h {tuple(thr_h.shape)} must be [N={n}]")
    return inter


def sparse_mlp_reference(x: torch.Tensor, thr_x: torch.Tensor, thr_h: torch.Tensor, w1: torch.Tensor,
                         w2: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch soft-skip MLP (the contract in the module docstring; any device, any layout)."""
    inter = _check(x, thr_x, thr_h, w1, w2)
    xm = torch.where(x.abs() >= thr_x.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    gu = (xm @ w1).to(x.dtype)  # [N, 2I]
    h = F.silu(gu[:, :inter]) * gu[:, inter:]  # [N, I]
    hm = torch.where(h.abs() >= thr_h.unsqueeze(1), h, torch.zeros((), dtype=h.dtype, device=h.device))
    return (hm @ w2).to(x.dtype)


@torch.library.custom_op("sedac::sparse_mlp", mutates_args=())
def sparse_mlp(x: torch.Tensor, thr_x: torch.Tensor, thr_h: torch.Tensor, w1: torch.Tensor,
               w2: torch.Tensor) -> torch.Tensor:
    """Opaque soft-skip MLP (see module docstring). Default/CPU implementation: the reference."""
    return sparse_mlp_reference(x, thr_x, thr_h, w1, w2)


@sparse_mlp.register_fake
def _sparse_mlp_fake(x, thr_x, thr_h, w1, w2):
    return torch.empty_like(x)


def mlp_bytes_read(x: torch.Tensor, thr_x: torch.Tensor, thr_h: torch.Tensor, w1: torch.Tensor,
                   w2: torch.Tensor) -> dict:
    """Weight rows a step needs (the union over rows), from the reference's masks: a diagnostic.

    Returns ``{"x_union": fraction of w1 rows read, "h_union": fraction of w2 rows read,
    "weight_fraction": fraction of all MLP weight bytes read}`` (host values: not for a hot path).
    """
    inter = w2.shape[0]
    xm = x.abs() >= thr_x.unsqueeze(1)
    gu = (torch.where(xm, x, 0) @ w1).to(x.dtype)
    h = F.silu(gu[:, :inter]) * gu[:, inter:]
    hm = (h.abs() >= thr_h.unsqueeze(1)) & (h != 0)
    fx = xm.any(0).float().mean().item()
    fh = hm.any(0).float().mean().item()
    return {"x_union": fx, "h_union": fh, "weight_fraction": (2 * fx + fh) / 3}
