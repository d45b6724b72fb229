"""The skip-aware MLP kernels (sedac/runtime/kernels) against their PyTorch reference.

CPU: the op's CPU implementation against an independent dense formula; the Triton kernels through
Triton's interpreter (``TRITON_INTERPRET=1`` must be set before triton is imported, hence a
subprocess) at tiny shapes; the decode benchmark end to end on the tiny shape.
GPU (``gpu`` marker, run by scripts/gpu_bench.sh): every kernel path on fresh random bf16 inputs at
real and odd shapes, poisoned outputs, skipped rows exactly 0, a skipped step ignoring (NaN) weights,
skip-all far cheaper than keep-all, and one CUDA graph replayed under changing masks.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import sedac.runtime.mlp_ops  # noqa: F401  (defines torch.ops.sedac.skip_mlp)
from sedac.testing.interp import run_interpreted

ROOT = Path(__file__).resolve().parents[2]
BF16_TOL = 1e-2  # METHOD.md: bf16 operands land between 1e-3 and 1e-2


def dense_reference(x, keep, w_gate_up, w_down):
    """float64 dense MLP on every row, then skipped rows set to 0 (independent of skip_mlp_reference)."""
    inter = w_down.shape[1]
    gu = x.double() @ w_gate_up.double().T
    y = (torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]) @ w_down.double().T
    return y * keep.double().unsqueeze(1)


def rel_err(y, ref):
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _inputs(n, hid, inter, dtype, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, hid, generator=g, device=device).to(dtype)
    wgu = (torch.randn(2 * inter, hid, generator=g, device=device) / hid**0.5).to(dtype)
    wd = (torch.randn(hid, inter, generator=g, device=device) / inter**0.5).to(dtype)
    return x, wgu, wd


@pytest.mark.parametrize("n", [1, 5, 70])
def test_cpu_op_matches_dense_formula(n):
    x, wgu, wd = _inputs(n, 24, 40, torch.float32)
    for keep in (torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), torch.rand(n) < 0.5):
        y = torch.ops.sedac.skip_mlp(x, keep, wgu, wd)
        assert rel_err(y, dense_reference(x, keep, wgu, wd)) < 1e-5 or not keep.any()
        assert (y[~keep] == 0).all()


def test_op_is_opaque_to_torch_compile():
    """fullgraph compile through the op (fake impl gives the shape; the real impl runs at call time)."""
    x, wgu, wd = _inputs(6, 24, 40, torch.float32, seed=2)
    keep = torch.tensor([True, False, True, True, False, False])

    def f(x, keep):
        return torch.ops.sedac.skip_mlp(x * 2.0, keep, wgu, wd) + 1.0

    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, keep)
    assert rel_err(y - 1.0, dense_reference(x * 2.0, keep, wgu, wd)) < 1e-5


INTERP_SCRIPT = textwrap.dedent("""
    import torch, json, sys
    from sedac.runtime.kernels.mlp_triton import skip_mlp_triton
    sys.path.insert(0, "tests/runtime")
    from test_kernels import dense_reference, rel_err, _inputs
    res = []
    # gemv path (n=1) in bf16 too; the interpreter's bf16 tl.dot is wrong, so dot paths use fp32/fp16
    cases = [(1, torch.bfloat16), (1, torch.float32), (3, torch.float16), (17, torch.float32), (33, torch.float16)]
    for seed, (n, dt) in enumerate(cases):
        x, wgu, wd = _inputs(n, 40, 72, dt, seed=seed)  # odd sizes: not multiples of the block sizes
        for keep in (torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool),
                     torch.arange(n) % 2 == 0):
            out = torch.full((n, 40), float("nan"), dtype=dt)
            h = torch.full((n, 72), float("nan"), dtype=dt)
            y = skip_mlp_triton(x, keep, wgu, wd, out=out, h=h)
            ref = dense_reference(x, keep, wgu, wd)
            res.append(dict(n=n, dt=str(dt), kept=int(keep.sum()), finite=bool(torch.isfinite(y).all()),
                            zeros=bool((y[~keep] == 0).all()), err=rel_err(y, ref) if keep.any() else 0.0))
    print(json.dumps(res))
""")


def test_triton_kernels_under_interpreter():
    res = run_interpreted(INTERP_SCRIPT, ROOT)
    assert len(res) == 15
    for r in res:
        assert r["finite"] and r["zeros"], r
        tol = BF16_TOL if r["dt"] == "torch.bfloat16" else (2e-3 if r["dt"] == "torch.float16" else 1e-5)
        assert r["err"] < tol, r


SILU_MUL_SCRIPT = textwrap.dedent("""
    import torch, json
    from sedac.runtime.kernels.act_triton import silu_mul_triton
    res = []
    # inter 1030 > the 1024-column block: a second, partial block; a row-strided view of a wider tensor
    for m, inter, dt, sliced in ((1, 40, torch.float32, False), (3, 1030, torch.float32, False),
                                 (5, 7, torch.float16, True), (2, 300, torch.bfloat16, False)):
        g = torch.Generator().manual_seed(m)
        wide = (torch.randn(m, 2 * inter + (6 if sliced else 0), generator=g) * 3).to(dt)
        gu = wide[:, : 2 * inter]
        h = silu_mul_triton(gu)
        ref = torch.nn.functional.silu(gu[:, :inter].double()) * gu[:, inter:].double()
        res.append(dict(dt=str(dt), shape=list(h.shape), same_dtype=h.dtype == dt, inter=inter,
                        err=((h.double() - ref).norm() / ref.norm()).item()))
    print(json.dumps(res))
""")


def test_silu_mul_kernel_under_interpreter():
    res = run_interpreted(SILU_MUL_SCRIPT, ROOT)
    assert len(res) == 4
    for r in res:
        tol = BF16_TOL if r["dt"] == "torch.bfloat16" else (2e-3 if r["dt"] == "torch.float16" else 1e-6)
        assert r["shape"][1] == r["inter"] and r["same_dtype"] and r["err"] < tol, r


DENSE_REFS_SCRIPT = textwrap.dedent("""
    import torch, json, sys
    from sedac.bench.decode_model import DENSE_REFERENCES, dense_references
    sys.path.insert(0, "tests/runtime")
    from test_kernels import dense_reference, rel_err, _inputs
    sets = [_inputs(3, 24, 40, torch.float32, seed=s) for s in (1, 2)]
    x = sets[0][0]
    fns = dense_references(x, [w for _, w, _ in sets], [d for _, _, d in sets])
    keep = torch.ones(3, dtype=torch.bool)
    print(json.dumps({"names": sorted(fns) == sorted(DENSE_REFERENCES),
                      "err": [rel_err(fns[k](i), dense_reference(x, keep, sets[i][1], sets[i][2]))
                              for k in DENSE_REFERENCES for i in (0, 1)]}))
""")


def test_dense_references_compute_the_mlp():
    """The microbenchmarks' dense baselines (incl. the fused-activation one, under the interpreter) are the MLP
    on the weight set they are asked for."""
    res = run_interpreted(DENSE_REFS_SCRIPT, ROOT)
    assert res["names"] and len(res["err"]) == 6 and max(res["err"]) < 1e-5, res


def test_silu_mul_refuses_odd_widths():
    pytest.importorskip("triton")
    from sedac.runtime.kernels.act_triton import silu_mul_triton

    with pytest.raises(ValueError, match=r"\[M, 2I\]"):
        silu_mul_triton(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="unit column stride"):
        silu_mul_triton(torch.zeros(8, 2).T)


def test_shape_recipes_load():
    from sedac.bench.decode import SHAPES_DIR, load_shape

    names = sorted(p.stem for p in SHAPES_DIR.glob("*.yaml"))
    assert "qwen2.5-7b" in names and "tiny" in names
    q = load_shape("qwen2.5-7b")
    assert (q.hidden, q.intermediate, q.layers, q.heads, q.kv_heads, q.head_dim, q.vocab) == (
        3584, 18944, 28, 28, 4, 128, 152064)
    for name in names:
        load_shape(name)


def test_decode_bench_config_errors():
    from sedac.bench.decode import DecodeBenchConfig
    from sedac.errors import ConfigError

    with pytest.raises(ConfigError, match="--backend"):
        DecodeBenchConfig(backend="vllm")
    with pytest.raises(ConfigError, match="--fraction"):
        DecodeBenchConfig(fractions=[0.3])


def test_decode_bench_cpu_smoke():
    from sedac.bench.decode import DecodeBenchConfig, format_table, run_decode_bench

    cfg = DecodeBenchConfig(shape="tiny", device="cpu", batches=[1, 4], bands=[1, 2], kv_len=16, repeats=1, cycles=1)
    res = run_decode_bench(cfg, progress=lambda s: None)
    assert res["check"]["never_vs_baseline"] < 1e-6
    assert res["check"]["always_vs_band_removed"] < 1e-6
    rows = {(r["batch"], r["variant"]): r for r in res["steps"]}
    assert rows[(1, "sedac band=2 steps=100%")]["ideal_speedup"] > rows[(1, "sedac band=1 steps=100%")]["ideal_speedup"] > 1
    assert rows[(1, "sedac band=1 steps=0%")]["ideal_speedup"] == 1.0
    assert rows[(4, "sedac band=1 token rows=50%")]["ideal_by_bytes"] == 1.0  # weights still read
    assert "| 4 |" in format_table(res)


# ------------------------------------------------------------------------------------------- GPU
gpu = pytest.mark.gpu


def _gpu_case(n, hid, inter, seed):
    from sedac.runtime.kernels.mlp_triton import skip_mlp_triton

    x, wgu, wd = _inputs(n, hid, inter, torch.bfloat16, device="cuda", seed=seed)
    masks = [torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), torch.rand(n) < 0.5]
    for keep in masks:
        keep = keep.cuda()
        out = torch.full((n, hid), float("nan"), device="cuda", dtype=torch.bfloat16)
        h = torch.full((n, inter), float("nan"), device="cuda", dtype=torch.bfloat16)
        y = skip_mlp_triton(x, keep, wgu, wd, out=out, h=h)
        torch.cuda.synchronize()
        assert torch.isfinite(y).all()
        assert (y[~keep] == 0).all()
        if keep.any():
            assert rel_err(y, dense_reference(x, keep, wgu, wd)) < BF16_TOL


@gpu
@pytest.mark.parametrize("n", [1, 2, 5, 16, 32, 64])
def test_gpu_kernels_qwen_shape(n):
    _gpu_case(n, 3584, 18944, seed=n)


@gpu
@pytest.mark.parametrize("n", [1, 3, 17, 33])
def test_gpu_kernels_odd_shape(n):
    _gpu_case(n, 200, 328, seed=100 + n)


@gpu
@pytest.mark.parametrize("n", [2, 4, 33])
def test_gpu_float32_rows_at_full_precision(n):
    """float32 models (vLLM's default matmul precision is "highest"): the tensor-core path must not round
    to TF32, or a row's output would depend on how many rows share the step (spec decoding vs not)."""
    from sedac.runtime.kernels.mlp_triton import skip_mlp_triton

    x, wgu, wd = _inputs(n, 512, 1024, torch.float32, device="cuda", seed=11)
    keep = torch.ones(n, dtype=torch.bool, device="cuda")
    y = skip_mlp_triton(x, keep, wgu, wd)
    ref = dense_reference(x.double(), keep, wgu.double(), wd.double())
    assert rel_err(y.double(), ref) < 1e-5  # TF32 (10-bit mantissa) gives ~1e-3
    y1 = skip_mlp_triton(x[:1].contiguous(), keep[:1], wgu, wd)
    assert rel_err(y[:1].double(), y1.double()) < 1e-5


@gpu
@pytest.mark.parametrize("n", [1, 8, 130])
def test_gpu_op_dispatch(n):
    from sedac.runtime.mlp_ops import ensure_cuda_kernels

    ensure_cuda_kernels()
    x, wgu, wd = _inputs(n, 256, 512, torch.bfloat16, device="cuda", seed=7)
    keep = (torch.rand(n) < 0.5).cuda()
    y = torch.ops.sedac.skip_mlp(x, keep, wgu, wd)
    assert (y[~keep] == 0).all()
    assert rel_err(y, dense_reference(x, keep, wgu, wd)) < BF16_TOL


@gpu
@pytest.mark.parametrize("n", [1, 32])
def test_gpu_skipped_step_ignores_weights(n):
    from sedac.runtime.kernels.mlp_triton import skip_mlp_triton

    x, wgu, wd = _inputs(n, 512, 1024, torch.bfloat16, device="cuda", seed=3)
    keep = torch.zeros(n, dtype=torch.bool, device="cuda")
    y = skip_mlp_triton(x, keep, torch.full_like(wgu, float("nan")), torch.full_like(wd, float("nan")))
    assert (y == 0).all()


@gpu
@pytest.mark.parametrize("n", [1, 32])
def test_gpu_skip_all_is_cheap(n):
    """A skipped step reads no weights: in one CUDA graph (no launch overhead) it costs < 10% of a kept one."""
    from sedac.runtime.kernels.mlp_triton import skip_mlp_triton

    x, wgu, wd = _inputs(n, 3584, 18944, torch.bfloat16, device="cuda", seed=4)
    keep = torch.ones(n, dtype=torch.bool, device="cuda")
    skip_mlp_triton(x, keep, wgu, wd)  # autotune with every row kept
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(10):
            skip_mlp_triton(x, keep, wgu, wd)
    times = {}
    for kept in (True, False):
        keep.fill_(kept)
        graph.replay()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(5):
            graph.replay()
        b.record()
        torch.cuda.synchronize()
        times[kept] = a.elapsed_time(b)
    assert times[False] < 0.1 * times[True], times


@gpu
@pytest.mark.parametrize("n", [1, 32])
def test_gpu_cuda_graph_changing_masks(n):
    from sedac.runtime.mlp_ops import ensure_cuda_kernels

    ensure_cuda_kernels()
    x, wgu, wd = _inputs(n, 1024, 2816, torch.bfloat16, device="cuda", seed=5)
    keep = torch.ones(n, dtype=torch.bool, device="cuda")
    for _ in range(2):
        torch.ops.sedac.skip_mlp(x, keep, wgu, wd)  # warm-up (autotune) outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = torch.ops.sedac.skip_mlp(x, keep, wgu, wd)
    masks = [torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)]
    masks += [torch.rand(n) < p for p in (0.3, 0.7, 0.5)]
    for m in masks:
        keep.copy_(m.cuda())
        x.copy_(torch.randn_like(x))  # fresh inputs every replay
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.isfinite(y).all()
        assert (y[~keep] == 0).all()
        if keep.any():
            assert rel_err(y, dense_reference(x, keep, wgu, wd)) < BF16_TOL


def test_decode_soft_bench_cpu_smoke():
    """--soft on the tiny shape: thresholds calibrated per row give the asked sparsity; union grows with batch."""
    from sedac.bench.decode import DecodeBenchConfig, format_soft_table, run_soft_bench

    cfg = DecodeBenchConfig(shape="tiny", device="cpu", batches=[1, 4], kv_len=16, repeats=1, cycles=1, soft=True,
                            levels=[0.0, 0.5])
    res = run_soft_bench(cfg, progress=lambda s: None)
    rows = {(r["batch"], r["level"]): r for r in res["soft_steps"] if r["level"] is not None}
    assert rows[(1, 0.0)]["weight_fraction"] == 1.0 and rows[(1, 0.0)]["ideal_speedup"] == 1.0
    assert abs(rows[(1, 0.5)]["weight_fraction"] - 0.5) < 0.03  # one row: its own mask
    assert rows[(4, 0.5)]["weight_fraction"] > rows[(1, 0.5)]["weight_fraction"]  # union of 4 masks
    assert rows[(1, 0.5)]["ideal_speedup"] > 1.0
    assert res["check"]["soft_dense_vs_baseline"] < 1e-6
    assert "| eager | 4 |" in format_soft_table(res)
