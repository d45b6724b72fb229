"""Soft-skip variants of `sedac bench decode` (``--soft``): every layer's MLP runs ``sedac::sparse_mlp``.

Soft skip at level ``s``: each token drops the fraction ``s`` of its smallest-magnitude MLP inputs (x,
the gate/up input) and of its SiLU*up activations (h, the down input) - per-row thresholds, held in
device memory, so one CUDA graph per step serves them. The thresholds are calibrated once per
variant on the tokens that are then timed (per-row quantiles of ``|x|`` and of ``|h|`` after x is
masked), so each row's sparsity is ``s`` exactly; what a batch reads is the **union** of its rows'
needed weight rows (``weight_fraction``, measured in the same calibration step).

Ideal speedups are by bytes (decode is weight-bound at every batch here): MLP level
``1 / weight_fraction``; step level ``bytes / (bytes - layers * MLP bytes * (1 - weight_fraction))``.
``realised/ideal`` = measured speedup / ideal. The dense baseline (HF-style PyTorch MLP on cuBLAS) runs
in the same process, before and after the soft variants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sedac.runtime.sparse_ops import mlp_bytes_read, prepare_sparse_weights, sparse_mlp_reference

LEVELS = (0.0, 0.25, 0.4, 0.5)  #: 0.0 = the soft kernels with dense thresholds (their dense-path cost)


def row_quantile(t: torch.Tensor, s: float) -> torch.Tensor:
    """Per-row threshold dropping the fraction ``s`` of ``|t|`` (0 -> keep all)."""
    if s <= 0:
        return torch.zeros(t.shape[0], device=t.device, dtype=torch.float32)
    return torch.quantile(t.abs().float(), s, dim=1).contiguous()


@dataclass
class SoftControl:
    """Device-side thresholds ``[layers, B]`` of one soft variant (calibrated by one eager step)."""

    level: float
    layers: int
    bsz: int
    soft: bool = True
    calibrating: bool = True
    first: int = -1  #: no probe layer (step() contract of decode_model.Control)
    weight_fraction: list = field(default_factory=list)

    def to(self, dev):
        self.thr_x = torch.zeros(self.layers, self.bsz, device=dev, dtype=torch.float32)
        self.thr_h = torch.zeros_like(self.thr_x)
        self.counter = torch.zeros(1, device=dev, dtype=torch.long)
        return self

    def mlp(self, li: int, h: torch.Tensor, w: dict) -> torch.Tensor:
        """The layer's soft-skip MLP on ``h [B, H]``; while calibrating, set this layer's thresholds first."""
        if self.calibrating:
            tx, th = level_thresholds(h, self.level, w["w1"], w["w2"])
            self.thr_x[li].copy_(tx)
            self.thr_h[li].copy_(th)
            self.weight_fraction.append(mlp_bytes_read(h, self.thr_x[li], self.thr_h[li], w["w1"], w["w2"])
                                        ["weight_fraction"])
        return torch.ops.sedac.sparse_mlp(h, self.thr_x[li], self.thr_h[li], w["w1"], w["w2"])


def level_thresholds(x: torch.Tensor, level: float, w1: torch.Tensor, w2: torch.Tensor) -> tuple:
    """``(thr_x, thr_h)`` of soft level ``level`` for rows ``x``: per-row quantiles of ``|x|``, then of ``|h|`` where
    ``h`` is the activation computed from the kept inputs (input-major ``w1 [H, 2I]``, ``w2 [I, H]``)."""
    tx = row_quantile(x, level)
    inter = w2.shape[0]
    gu = (torch.where(x.abs() >= tx[:, None], x, 0) @ w1).to(x.dtype)
    return tx, row_quantile(F.silu(gu[:, :inter]) * gu[:, inter:], level)


def prepare(model) -> None:
    """Input-major MLP weights for every layer (once; one extra copy of the MLP weights on the GPU)."""
    for w in model.layers:
        if "w1" not in w:
            w["w1"], w["w2"] = prepare_sparse_weights(w["w_gate_up"], w["wd"])


def calibrate(model, ctl: SoftControl, tok, fns) -> SoftControl:
    from sedac.bench.decode_model import step

    ctl.calibrating, ctl.weight_fraction = True, []
    step(model, tok, ctl, fns)
    ctl.calibrating = False
    return ctl


def step_ideal(shape, bsz, kv_len, weight_fraction: list) -> float:
    from sedac.bench.decode_model import ideal

    total = ideal(shape, bsz, kv_len, None)["bytes_per_step"]
    saved = sum(shape.mlp_params * 2 * (1.0 - f) for f in weight_fraction)
    return total / (total - saved)


def mlp_soft_microbench(shape, rows: int, levels, dev, dtype, seed: int) -> dict:
    """One MLP at M=``rows``: dense PyTorch (best of HF layout / fused gate_up / fused gate_up + fused activation,
    i.e. vLLM's) vs ``sparse_mlp`` per level."""
    from sedac.bench.decode_model import best_dense_ms, dense_references, rotating_graph_ms

    g = torch.Generator(device=dev).manual_seed(seed + 11)
    s, n_sets = shape, 3  # rotate over 3 weight sets (each >> L2)
    inter = s.intermediate
    wgu = [torch.empty(2 * inter, s.hidden, device=dev, dtype=dtype).normal_(0, 0.02, generator=g) for _ in range(n_sets)]
    wd = [torch.empty(s.hidden, inter, device=dev, dtype=dtype).normal_(0, 0.02, generator=g) for _ in range(n_sets)]
    prep = [prepare_sparse_weights(a, b) for a, b in zip(wgu, wd)]
    x = torch.randn(rows, s.hidden, device=dev, dtype=dtype, generator=g)
    fns = dense_references(x, wgu, wd)
    info = {}
    for lv in levels:
        tx, th = level_thresholds(x, lv, *prep[0])
        y = torch.ops.sedac.sparse_mlp(x, tx, th, *prep[0]).double()  # also tunes (dense + 50 %) on first call
        ref = sparse_mlp_reference(x.double(), tx, th, prep[0][0].double(), prep[0][1].double())
        info[lv] = {"rel_err_vs_fp64": ((y - ref).norm() / ref.norm()).item(),
                    **mlp_bytes_read(x, tx, th, *prep[0])}
        fns[f"soft {lv}"] = (lambda tx, th: lambda i: torch.ops.sedac.sparse_mlp(x, tx, th, *prep[i]))(tx, th)
    ms = {name: rotating_graph_ms(fn, n_sets) for name, fn in fns.items()}
    dense = best_dense_ms(ms)
    out = {"rows": rows, "ms": ms, "dense_best_ms": dense, "mlp_bytes": s.mlp_params * 2, "levels": {}}
    for lv in levels:
        wf = info[lv]["weight_fraction"]
        speed = dense / ms[f"soft {lv}"]
        out["levels"][str(lv)] = {**info[lv], "speedup": speed, "ideal": 1.0 / wf, "realised_over_ideal": speed * wf,
                                  "GBps": s.mlp_params * 2 * wf / ms[f"soft {lv}"] / 1e6}
    from sedac.runtime.kernels import sparse_triton as st

    out["configs"] = {str(k): str(v) for k, v in st._TUNED.items()}
    return out


def card_slug(card: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", card.lower().replace("nvidia", "")).strip("-") or "cpu"


def evidence(result: dict) -> dict:
    """The issue-12 evidence record (``docs/evidence/decode-soft-<card>.json``) from a soft run's result."""
    mlp1 = next(m for m in result["mlp_soft"] if m["rows"] == 1)
    steps = {(r["mode"], r["batch"], r["level"]): r for r in result["soft_steps"] if r["level"] is not None}
    dense = {str(m["rows"]): m["speed_vs_best_torch"] for m in result.get("mlp_skip", [])}
    return {"card": result["card"],
            "mlp_realised_over_ideal": {k: mlp1["levels"][k]["realised_over_ideal"] for k in ("0.25", "0.4", "0.5")
                                        if k in mlp1["levels"]},
            "step_speedup_40_compiled_b1": steps.get(("compiled", 1, 0.4), {}).get("speedup"),
            "dense_vs_cublas": dense,
            "baseline_ms": {f"{r['mode']} b{r['batch']}": r["ms_median"] for r in result["soft_steps"]
                            if r["level"] is None and r["variant"] == "baseline"},
            "provenance": result["provenance"]}
