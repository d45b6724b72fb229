"""``sedac::token_decide`` (sedac/runtime/decide_ops.py, kernels/decide_triton.py): the static token decision
of a step as one op.

CPU: the op equals the runtime's unfused path (probe score -> policy.token_skip -> counting rule) and is
opaque to torch.compile. The Triton kernel runs under the interpreter (subprocess: ``TRITON_INTERPRET=1``
must be set before triton is imported) and on the GPU (``gpu`` marker, scripts/gpu_vllm.sh) against the
reference: the same keep mask wherever the score is not within rounding of the threshold, the same counts.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from sedac.runtime import policy as P
from sedac.runtime.decide_ops import NO_LIMIT, token_decide_reference
from sedac.testing.interp import run_interpreted

ROOT = Path(__file__).resolve().parents[2]


def make(n, d, nb, dtype=torch.float32, device="cpu", seed=0, residual=True):
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, device=device).to(dtype)
    res = torch.randn(n, d, generator=g, device=device).to(dtype) if residual else None
    w = (torch.randn(nb, d, generator=g, device=device) / d**0.5).to(dtype)
    b = torch.randn(nb, generator=g, device=device) * 0.5
    thr = torch.randn(nb, generator=g, device=device) * 0.3  # near the middle of the scores: both outcomes
    return hidden, res, w, b, thr


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("n,nb,limit", [(1, 1, NO_LIMIT), (7, 2, NO_LIMIT), (70, 1, 64), (33, 3, 64)])
def test_op_equals_the_unfused_runtime_path(n, nb, limit, residual):
    hidden, res, w, b, thr = make(n, 48, nb, seed=n, residual=residual)
    counts = torch.zeros(2, nb, dtype=torch.long)
    keep = torch.ops.sedac.token_decide(hidden, res, w, b, thr, counts, limit)
    stream = hidden if res is None else hidden + res
    skip = P.decide((stream @ w.T).float() + b, P.SkipConfig(mode="static", thresholds=[0.0] * nb), thr=thr)
    assert keep.dtype == torch.bool and keep.shape == (nb, n) and keep.is_contiguous()
    assert torch.equal(keep, ~skip.T)
    assert 0 < int(skip.sum()) < skip.numel() or n == 1
    assert counts[1].tolist() == [n] * nb
    assert counts[0].tolist() == (skip.sum(0).tolist() if n <= limit else [0] * nb)


def test_nan_rows_keep_their_mlp_and_op_is_opaque_to_compile():
    hidden, res, w, b, thr = make(5, 32, 2, seed=9)
    hidden[2] = float("nan")  # vLLM warm-up rows may be uninitialised: never skip on a NaN score
    counts = torch.zeros(2, 2, dtype=torch.long)

    def f(h, r):
        return torch.ops.sedac.token_decide(h * 1.0, r, w, b, thr, counts, NO_LIMIT)

    keep = torch.compile(f, backend="aot_eager", fullgraph=True)(hidden, res)
    assert keep[:, 2].all()
    assert torch.equal(keep, token_decide_reference(hidden, res, w, b, thr, torch.zeros(2, 2, dtype=torch.long),
                                                    NO_LIMIT))
    assert counts[1].tolist() == [5, 5]


INTERP_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, "tests/runtime")
    from test_decide_ops import make
    from sedac.runtime.decide_ops import NO_LIMIT, token_decide_reference
    from sedac.runtime.kernels.decide_triton import token_decide_triton
    res = []
    for dt in (torch.float32, torch.float16):
        for n, nb, limit, residual in ((1, 1, NO_LIMIT, True), (25, 2, NO_LIMIT, False), (40, 1, 16, True),
                                       (19, 3, NO_LIMIT, True)):
            hidden, r, w, b, thr = make(n, 300, nb, dtype=dt, seed=n + nb, residual=residual)
            c1, c2 = torch.zeros(2, nb, dtype=torch.long), torch.zeros(2, nb, dtype=torch.long)
            k1 = token_decide_triton(hidden, r, w, b, thr, c1, limit)
            k2 = token_decide_reference(hidden, r, w, b, thr, c2, limit)
            res.append(dict(n=n, nb=nb, dt=str(dt), same=bool(torch.equal(k1, k2)), counts=c1.tolist(),
                            ref_counts=c2.tolist(), mixed=bool(k2.any() and not k2.all())))
    print(json.dumps(res))
""")


def test_triton_kernel_under_interpreter():
    res = run_interpreted(INTERP_SCRIPT, ROOT)
    assert len(res) == 8 and any(r["mixed"] for r in res)
    for r in res:
        assert r["same"] and r["counts"] == r["ref_counts"], r


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 32, 300])
def test_gpu_kernel_matches_reference(n):
    """bf16 on the GPU: accumulation order differs from cuBLAS's, so only scores within bf16 rounding of the
    threshold may decide differently; the counters agree with the kernel's own keep mask."""
    from sedac.runtime.mlp_ops import ensure_cuda_kernels

    ensure_cuda_kernels()
    hidden, res, w, b, thr = make(n, 3584, 2, dtype=torch.bfloat16, device="cuda", seed=n)
    c1, c2 = torch.zeros(2, 2, dtype=torch.long, device="cuda"), torch.zeros(2, 2, dtype=torch.long, device="cuda")
    keep = torch.ops.sedac.token_decide(hidden, res, w, b, thr, c1, 64)
    ref = token_decide_reference(hidden, res, w, b, thr, c2, 64)
    raw = ((hidden.float() + res.float()) @ w.float().T + b).T  # [B, N]
    near = (raw - thr[:, None]).abs() < 0.02 * raw.abs().clamp_min(1.0)
    assert torch.equal(keep[~near], ref[~near])
    assert c1[1].tolist() == [n, n]
    assert c1[0].tolist() == ((~keep).sum(1).tolist() if n <= 64 else [0, 0])
    graph = torch.cuda.CUDAGraph()  # capturable: no host sync inside
    with torch.cuda.graph(graph):
        out = torch.ops.sedac.token_decide(hidden, res, w, b, thr, c1, 64)
    thr.fill_(-1e30)  # the device threshold is read at replay: everything skips
    graph.replay()
    torch.cuda.synchronize()
    assert not out.any()
