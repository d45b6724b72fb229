"""The one small function where the skip decision meets the MLP.

Every backend calls :func:`run_mlp` for an MLP in a skip band. Two implementations:

``module`` (default on CPU, and for HF models)
    gather the kept rows, run the model's own MLP module on them, scatter back; skipped rows get 0
    (a skipped MLP adds nothing to the residual stream). When every row is kept the module runs on
    the untouched input, so a decision that never fires is bit-identical to the unmodified model.
    Uses a host-side ``keep.all()/any()`` check: free on CPU, a sync on GPU.

``op``
    ``torch.ops.sedac.skip_mlp(x, keep, w_gate_up, w_down)``: a ``torch.library`` custom op that
    torch.compile treats as opaque. Its CUDA kernel (:mod:`sedac.runtime.kernels`) reads the
    device-side mask and returns early for skipped rows/steps without reading weights, so one
    captured CUDA graph serves every decision; its CPU implementation is the PyTorch reference
    below. Works for SiLU-gated MLPs whose gate/up weights are stacked ``[2I, H]`` (vLLM's
    ``gate_up_proj``) or given separately.
"""

from __future__ import annotations

import torch


def masked_mlp(fn, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``fn`` on the rows of ``x: [N, H]`` where ``keep: [N]`` is True; zeros elsewhere."""
    if bool(keep.all()):
        return fn(x)
    out = torch.zeros_like(x)
    if bool(keep.any()):
        idx = keep.nonzero().squeeze(1)
        out.index_copy_(0, idx, fn(x.index_select(0, idx)).to(out.dtype))
    return out


def skip_mlp_reference(x: torch.Tensor, keep: torch.Tensor, w_gate_up: torch.Tensor,
                       w_down: torch.Tensor) -> torch.Tensor:
    """PyTorch reference of the SiLU-gated MLP on kept rows only (zeros for skipped rows).

    x [N, H], keep [N] bool, w_gate_up [2I, H] (gate rows first), w_down [H, I] -> [N, H]
    """
    inter = w_down.shape[1]
    out = torch.zeros_like(x)
    idx = keep.nonzero().squeeze(1)
    if idx.numel() == 0:
        return out
    xs = x.index_select(0, idx)
    gu = xs @ w_gate_up.T  # [n, 2I]
    h = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
    out.index_copy_(0, idx, (h @ w_down.T).to(out.dtype))
    return out


@torch.library.custom_op("sedac::skip_mlp", mutates_args=())
def skip_mlp(x: torch.Tensor, keep: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Opaque SiLU-gated MLP over kept rows; see module docstring. CPU: the PyTorch reference."""
    return skip_mlp_reference(x, keep, w_gate_up, w_down)


@skip_mlp.register_fake
def _skip_mlp_fake(x, keep, w_gate_up, w_down):
    return torch.empty_like(x)


def ensure_cuda_kernels() -> None:
    """Register the Triton CUDA kernel of ``sedac::skip_mlp`` (imports triton; idempotent).

    Call it before a compiled graph is traced (vLLM: :class:`sedac.runtime.vllm_runtime.SedacRuntime` does
    at start-up): ``torch.library.register_kernel`` cannot run inside a Dynamo trace."""
    from sedac.runtime.kernels import register

    register()


def run_mlp(mlp, x: torch.Tensor, keep: torch.Tensor, impl: str = "module") -> torch.Tensor:
    """Run ``mlp`` (an HF or vLLM MLP module) on the kept rows of ``x`` with implementation ``impl``."""
    if impl == "module":
        return masked_mlp(mlp, x, keep)
    if impl == "op":
        w_gate_up, w_down = gated_mlp_weights(mlp)
        if x.is_cuda and not torch.compiler.is_compiling():
            ensure_cuda_kernels()  # eager callers (HF runtime); compiled callers registered before tracing
        return torch.ops.sedac.skip_mlp(x, keep, w_gate_up, w_down)
    raise ValueError(f"unknown MLP implementation {impl!r}")


def gated_mlp_weights(mlp) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w_gate_up [2I, H], w_down [H, I])`` of a SiLU-gated MLP module (vLLM or HF layout).

    For HF modules (separate gate/up) the stacked weight is built once and cached on the module.
    """
    if hasattr(mlp, "gate_up_proj"):
        return mlp.gate_up_proj.weight, mlp.down_proj.weight
    cached = getattr(mlp, "_sedac_gate_up", None)
    if cached is None or cached.device != mlp.gate_proj.weight.device:
        cached = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], dim=0).detach()
        mlp._sedac_gate_up = cached
    return cached, mlp.down_proj.weight
