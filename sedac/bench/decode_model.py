"""The pieces of `sedac bench decode`: random-weight decoder, skip control, timing, ideals, checks.

Pure tensor functions with static shapes; a decode step has no host synchronisation, so it is
captured once into a CUDA graph (see :mod:`sedac.bench.decode`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import sedac.runtime.mlp_ops  # noqa: F401  (defines torch.ops.sedac.skip_mlp)

FIRE, NEVER = float("-inf"), float("inf")  # thresholds: raw >= -inf always skips, raw >= inf never


class Model:
    """Random-weight decoder of a :class:`ShapeConfig` (weights ``normal_(0, 0.02)``) plus a KV cache."""

    def __init__(self, shape, dev, dtype, seed: int, kv_len: int, max_batch: int):
        g = torch.Generator(device=dev).manual_seed(seed)

        def rnd(*size, std=0.02):
            return torch.empty(size, device=dev, dtype=dtype).normal_(0.0, std, generator=g)

        s = shape
        qkv = (s.heads + 2 * s.kv_heads) * s.head_dim
        self.shape, self.kv_len = s, kv_len
        self.embed = rnd(s.vocab, s.hidden)
        self.layers = []
        for _ in range(s.layers):
            w_gate_up = rnd(2 * s.intermediate, s.hidden)  # stacked; gate/up are contiguous row views
            self.layers.append(dict(
                ln1=1.0 + rnd(s.hidden), wqkv=rnd(qkv, s.hidden), bqkv=rnd(qkv) if s.qkv_bias else None,
                wo=rnd(s.hidden, s.heads * s.head_dim), ln2=1.0 + rnd(s.hidden), w_gate_up=w_gate_up,
                wg=w_gate_up[: s.intermediate], wu=w_gate_up[s.intermediate:], wd=rnd(s.hidden, s.intermediate),
                k=rnd(max_batch, s.kv_heads, kv_len, s.head_dim, std=1.0),
                v=rnd(max_batch, s.kv_heads, kv_len, s.head_dim, std=1.0)))
        self.norm = 1.0 + rnd(s.hidden)
        self.lm_head = rnd(s.vocab, s.hidden)
        self.attn_impl = "sdpa(enable_gqa)"
        try:
            F.scaled_dot_product_attention(torch.zeros(1, s.heads, 1, s.head_dim, device=dev, dtype=dtype),
                                           self.layers[0]["k"][:1], self.layers[0]["v"][:1], enable_gqa=True)
        except (RuntimeError, TypeError):
            self.attn_impl = "bmm"


def attn_sdpa(q, k, v):
    """``q [B, heads, 1, d]`` over the cache ``k, v [B, kv_heads, L, d]`` (GQA) -> ``[B, heads * d]``."""
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True).reshape(q.shape[0], -1)


def attn_bmm(q, k, v):
    """Same as :func:`attn_sdpa` with two batched matmuls over query groups (K/V read once, no expand)."""
    bsz, heads, _, d = q.shape
    kvh = k.shape[1]
    qg = q.reshape(bsz, kvh, heads // kvh, d)
    p = torch.softmax((qg @ k.transpose(-1, -2)).float() * d**-0.5, dim=-1).to(q.dtype)
    return (p @ v).reshape(bsz, heads * d)


def build_model(shape, dev, dtype, seed, kv_len, max_batch) -> Model:
    return Model(shape, dev, dtype, seed, kv_len, max_batch)


def rms(x, w, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


@dataclass
class Control:
    """Device-side skip control for one variant: probe weights, threshold schedule, step counter."""

    band: int  #: last ``band`` layers are skippable
    policy: str  #: "batch" or "token"
    schedule: list  #: [STEPS][B] thresholds (FIRE / NEVER)
    label_fraction: float  #: fraction of (row-)MLP work skipped on average
    apply: bool = True  #: False: probe + decision run, but the band keeps the PyTorch MLP (decision cost alone)

    @staticmethod
    def steps(band, fraction, bsz, policy):
        """Fire on the first ``fraction * 4`` steps of every 4-step cycle, all rows."""
        n_fire = round(fraction * 4)
        return Control(band, policy, [[FIRE if t < n_fire else NEVER] * bsz for t in range(4)], fraction)

    @staticmethod
    def rows(band, fraction, bsz):
        """``token`` policy: the first ``fraction * B`` rows fire on every step."""
        n = round(fraction * bsz)
        return Control(band, "token", [[FIRE if r < n else NEVER for r in range(bsz)]] * 4, n / bsz)

    def to(self, shape, dev, dtype, seed):
        g = torch.Generator(device=dev).manual_seed(seed + 1)
        self.probe_w = torch.empty(shape.hidden, device=dev, dtype=dtype).normal_(0, 0.02, generator=g)
        self.probe_b = torch.zeros((), device=dev, dtype=torch.float32)
        self.thr = torch.tensor(self.schedule, device=dev, dtype=torch.float32)  # [4, B]
        self.counter = torch.zeros(1, device=dev, dtype=torch.long)
        self.first = shape.layers - self.band  # probe layer = band start
        return self

    def keep(self, x):
        """Probe + decision on the device: ``x [B, H]`` -> keep ``[B]`` bool (no host sync)."""
        raw = (x @ self.probe_w).float() + self.probe_b  # [B]
        thr = self.thr.index_select(0, self.counter.remainder(self.thr.shape[0])).squeeze(0)  # [B]
        keep = raw < thr
        if self.policy == "batch":
            keep = keep.any().expand_as(keep).contiguous()
        return keep


def _pre(x, ln1, wqkv, bqkv):
    """RMSNorm -> QKV projection: ``x [B, H]`` -> ``qkv [B, (heads + 2 kv_heads) * head_dim]``."""
    return F.linear(rms(x, ln1), wqkv, bqkv)


def _post(x, a, wo, ln2):
    """O projection + residual -> RMSNorm: returns ``(x, h)``."""
    x = x + F.linear(a, wo)
    return x, rms(x, ln2)


def _mlp(x, h, wg, wu, wd):
    """Plain PyTorch SiLU-gated MLP (HF's module, as ``F.linear`` calls) + residual."""
    return x + F.linear(F.silu(F.linear(h, wg)) * F.linear(h, wu), wd)


def _head(x, norm, lm_head):
    return F.linear(rms(x, norm), lm_head)


class Fns:
    """The per-layer tensor functions, optionally ``torch.compile``-d (shared by every variant)."""

    def __init__(self, compile_: bool, attn: str = "sdpa"):
        wrap = (lambda f: torch.compile(f, dynamic=False, fullgraph=True)) if compile_ else (lambda f: f)
        self.pre, self.post, self.mlp, self.head = wrap(_pre), wrap(_post), wrap(_mlp), wrap(_head)
        self.attn = attn_sdpa if attn == "sdpa" else wrap(attn_bmm)


def step(model: Model, tok, ctl: Control | None, fns: Fns | None = None):
    """One decode step for tokens ``tok [B]`` -> logits ``[B, V]``."""
    fns = fns or Fns(False)
    s, bsz = model.shape, tok.shape[0]
    x = model.embed.index_select(0, tok)  # [B, H]
    keep = None
    soft = ctl is not None and getattr(ctl, "soft", False)  # decode_soft.SoftControl: every MLP soft-skips
    for li, w in enumerate(model.layers):
        if ctl is not None and li == ctl.first:
            keep = ctl.keep(x)
        qkv = fns.pre(x, w["ln1"], w["wqkv"], w["bqkv"])
        q, k, v = qkv.split([s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1)
        w["k"][:bsz, :, -1].copy_(k.view(bsz, s.kv_heads, s.head_dim))  # write the new token's slot
        w["v"][:bsz, :, -1].copy_(v.view(bsz, s.kv_heads, s.head_dim))
        a = fns.attn(q.reshape(bsz, s.heads, 1, s.head_dim), w["k"][:bsz], w["v"][:bsz])  # [B, heads*d]
        x, h = fns.post(x, a, w["wo"], w["ln2"])
        if soft:
            x = x + ctl.mlp(li, h, w)
        elif keep is not None and ctl.apply:
            x = x + torch.ops.sedac.skip_mlp(h, keep, w["w_gate_up"], w["wd"])
        else:
            x = fns.mlp(x, h, w["wg"], w["wu"], w["wd"])
    logits = fns.head(x, model.norm, model.lm_head)
    if ctl is not None:
        ctl.counter.add_(1)
    return logits


def _events_time(fn, n_inner, repeats):
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n_inner):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / n_inner)
    return times


def time_steps(model: Model, bsz, ctl, graphs: bool, repeats: int, n_steps: int, fns: Fns | None = None,
               tok=None) -> list[float]:
    """ms per decode step for each repeat (``n_steps`` steps per repeat; one CUDA graph per step)."""
    import time

    dev = model.embed.device
    tok = torch.randint(0, model.shape.vocab, (bsz,), device=dev) if tok is None else tok
    if not graphs:
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n_steps):
                step(model, tok, ctl, fns)
            out.append((time.perf_counter() - t) * 1e3 / n_steps)
        return out
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(model, tok, ctl, fns)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(model, tok, ctl, fns)
    for _ in range(8):
        graph.replay()
    times = _events_time(graph.replay, n_steps, repeats)
    del graph
    return times


def ideal(shape, bsz, kv_len, ctl) -> dict:
    """Ideal speedup of a variant: by bytes at batch 1, by FLOPs at batch > 1 (both reported)."""
    s = shape
    kv_bytes = 2 * bsz * s.kv_heads * kv_len * s.head_dim * 2
    layer_bytes = (s.attn_params + s.mlp_params) * 2 + kv_bytes
    total_bytes = s.layers * layer_bytes + s.vocab * s.hidden * 2
    attn_flops = 2 * 2 * bsz * s.heads * kv_len * s.head_dim
    total_flops = s.layers * (2 * bsz * (s.attn_params + s.mlp_params) + attn_flops) + 2 * bsz * s.vocab * s.hidden
    saved_bytes = saved_flops = step_all = 0.0
    if ctl is not None:
        mlp_layers = ctl.band
        fired = [[t == FIRE for t in row] for row in ctl.schedule]
        step_all = sum(all(r) for r in fired) / len(fired)  # steps where every row skips: no weight reads
        row_frac = sum(sum(r) for r in fired) / (len(fired) * bsz)
        saved_bytes = mlp_layers * s.mlp_params * 2 * step_all
        saved_flops = mlp_layers * 2 * bsz * s.mlp_params * row_frac
    by_bytes = total_bytes / (total_bytes - saved_bytes)
    by_flops = total_flops / (total_flops - saved_flops)
    basis = "bytes" if bsz == 1 else "flops"
    return {"bytes_per_step": total_bytes, "flops_per_step": total_flops, "ideal_by_bytes": by_bytes,
            "ideal_by_flops": by_flops, "ideal_speedup": by_bytes if basis == "bytes" else by_flops,
            "ideal_basis": basis,
            "skipped_mlps_per_step": (ctl.band * step_all) if ctl is not None else 0.0}


def measure_ceilings(dev) -> dict:
    """Measured copy bandwidth (read+write bytes) and bf16 matmul rate, on random data."""
    a = torch.empty(1 << 29, device=dev, dtype=torch.bfloat16).normal_()
    b = torch.empty_like(a)
    t = statistics.median(_events_time(lambda: b.copy_(a), 10, 5))
    m = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    tm = statistics.median(_events_time(lambda: m @ m, 5, 5))
    del a, b, m
    return {"copy_GBps": 2 * (1 << 29) * 2 / t / 1e6, "matmul_TFLOPs": 2 * 8192**3 / tm / 1e9}


#: the dense MLP variants of the microbenchmarks; "best cuBLAS" is the fastest of them
DENSE_REFERENCES = ("torch_hf", "torch_fused", "torch_fused_act")


def dense_references(x, wgu: list, wd: list) -> dict:
    """The :data:`DENSE_REFERENCES` as ``name -> fn(i)`` on weight set ``i`` (``wgu[i] [2I, H]``, ``wd[i] [H, I]``):
    HF layout (separate gate/up GEMMs, ``F.silu(g) * u``), fused gate_up (one GEMM, ``F.silu(g) * u``) and vLLM's
    MLP (one GEMM, one fused ``silu_and_mul`` kernel, one GEMM)."""
    from sedac.runtime.kernels.act_triton import silu_mul_triton

    inter = wd[0].shape[1]
    return {
        "torch_hf": lambda i: F.linear(F.silu(F.linear(x, wgu[i][:inter])) * F.linear(x, wgu[i][inter:]), wd[i]),
        "torch_fused": lambda i: (lambda gu: F.linear(F.silu(gu[:, :inter]) * gu[:, inter:], wd[i]))(x @ wgu[i].T),
        "torch_fused_act": lambda i: F.linear(silu_mul_triton(x @ wgu[i].T), wd[i]),
    }


def best_dense_ms(ms: dict) -> float:
    """Time of the fastest dense reference present in ``ms`` (older results lack ``torch_fused_act``)."""
    return min(ms[k] for k in DENSE_REFERENCES if k in ms)


def rotating_graph_ms(fn, n_sets: int = 3) -> float:
    """ms of one ``fn(i)`` (``i`` = weight set, rotated so no set stays in L2): ``20 // n_sets + 1`` rounds over
    every set in one CUDA graph, median of 11 timings of 5 replays, divided by the calls per replay."""
    for i in range(n_sets):
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    reps = 20 // n_sets + 1
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for i in range(n_sets):
                fn(i)
    ms = statistics.median(_events_time(graph.replay, 5, 11)) / (reps * n_sets)
    del graph
    return ms


def mlp_microbench(shape, rows, dev, dtype, seed) -> dict:
    """One MLP at M=``rows``: PyTorch (HF layout; fused gate_up; fused gate_up + fused activation, i.e. vLLM's)
    vs the Triton op; graphs of 20 calls."""
    from sedac.runtime.kernels.mlp_triton import skip_mlp_triton
    from sedac.runtime.mlp_ops import skip_mlp_reference

    g = torch.Generator(device=dev).manual_seed(seed + 7)
    s, n_layers = shape, 3  # rotate over 3 weight sets (each >> L2)
    wgu = [torch.empty(2 * s.intermediate, s.hidden, device=dev, dtype=dtype).normal_(0, 0.02, generator=g)
           for _ in range(n_layers)]
    wd = [torch.empty(s.hidden, s.intermediate, device=dev, dtype=dtype).normal_(0, 0.02, generator=g)
          for _ in range(n_layers)]
    x = torch.randn(rows, s.hidden, device=dev, dtype=dtype, generator=g)
    ones = torch.ones(rows, device=dev, dtype=torch.bool)
    zeros = torch.zeros(rows, device=dev, dtype=torch.bool)
    half = torch.arange(rows, device=dev) >= rows // 2
    variants = {
        **dense_references(x, wgu, wd),
        "triton_keep_all": lambda i: skip_mlp_triton(x, ones, wgu[i], wd[i]),
        "triton_keep_half": lambda i: skip_mlp_triton(x, half, wgu[i], wd[i]),
        "triton_skip_all": lambda i: skip_mlp_triton(x, zeros, wgu[i], wd[i]),
    }
    err = 0.0
    for keep in (ones, half, zeros):  # correctness on these weights (also triggers autotune, keep-all first)
        y = skip_mlp_triton(x, keep, wgu[0], wd[0]).double()
        r = skip_mlp_reference(x.double(), keep, wgu[0].double(), wd[0].double())
        err = max(err, ((y - r).norm() / r.norm().clamp_min(1e-30)).item())
    ms = {name: rotating_graph_ms(fn, n_layers) for name, fn in variants.items()}
    from sedac.runtime.kernels import mlp_triton as mt

    kern = (mt._gate_up_gemv, mt._down_gemv) if rows == 1 else (mt._gate_up_dot, mt._down_dot)
    configs = {k.fn.__name__: str(getattr(k, "best_config", None)) for k in kern}
    best = best_dense_ms(ms)
    mlp_bytes = s.mlp_params * 2
    return {"rows": rows, "ms": ms, "speed_vs_best_torch": best / ms["triton_keep_all"], "rel_err": err,
            "triton_keep_all_GBps": mlp_bytes / ms["triton_keep_all"] / 1e6,
            "torch_best_GBps": mlp_bytes / best / 1e6, "configs": configs}


def check_outputs(model: Model, shape, dev, dtype, seed) -> dict:
    """Logits of sedac-never vs baseline, and sedac-always vs a reference step with the band's MLPs removed."""
    bsz = min(2, model.layers[0]["k"].shape[0])  # the KV cache holds max(batches) rows
    tok = torch.randint(0, shape.vocab, (bsz,), device=dev)
    base = step(model, tok, None).double()
    # the same baseline step again: non-zero = the step itself is not bitwise reproducible on this card
    out = {"baseline_vs_baseline": ((step(model, tok, None).double() - base).norm() / base.norm()).item()}
    band = max(1, shape.layers // 4)
    never = Control.steps(band, 0.0, bsz, "batch").to(shape, dev, dtype, seed)
    out["never_vs_baseline"] = ((step(model, tok, never).double() - base).norm() / base.norm()).item()
    always = Control.steps(band, 1.0, bsz, "batch").to(shape, dev, dtype, seed)
    got = step(model, tok, always).double()
    saved = [dict(w) for w in model.layers]
    for w in model.layers[shape.layers - band:]:
        w["wd"] = torch.zeros_like(w["wd"])  # reference: those MLPs contribute exactly 0
    ref = step(model, tok, None).double()
    for w, old in zip(model.layers, saved):
        w.update(old)
    out["always_vs_band_removed"] = ((got - ref).norm() / ref.norm()).item()
    return out
