"""Every launch configuration of the batch-1 soft-skip kernels, timed alone at each sparsity level (GPU).

Why: the tuner picks one configuration per shape (timed dense and at 50 % sparsity), and `sedac bench decode --soft`
reports only the picked one. This sweep shows each gate/up and down configuration of
:mod:`sedac.runtime.kernels.sparse_gemv` at every level, so a tuning choice (or a kernel change) can be judged
against the bytes it reads. Qwen2.5-7B MLP shape, bf16, M = 1, three rotating weight sets (each >> L2), one
CUDA graph of 21 launches, median of 11 replays; dense = the best of `decode_model.dense_references` in the same
process. Weights ``normal_(0, 0.02)``, x ``randn``; thresholds = per-row quantiles (x), then of |h| (h).

    python scripts/soft_kernel_sweep.py --out sweep.json        # ~1-2 min on an H200 (Triton compiles first)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def graph_us(fn) -> float:
    """µs of one ``fn(i)`` over the three rotating weight sets (the microbenchmarks' timing)."""
    from sedac.bench.decode_model import rotating_graph_ms

    return rotating_graph_ms(fn, 3) * 1e3


def _resources(kernel) -> dict:
    """Registers per thread, spills and shared memory of a compiled Triton kernel (what bounds its occupancy)."""
    meta = getattr(kernel, "metadata", None)
    return {"regs": getattr(kernel, "n_regs", None), "spills": getattr(kernel, "n_spills", None),
            "shared": getattr(meta, "shared", None), "warps": getattr(meta, "num_warps", None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.25, 0.4, 0.5])
    ap.add_argument("--hidden", type=int, default=3584)
    ap.add_argument("--intermediate", type=int, default=18944)
    a = ap.parse_args()
    from sedac.bench.decode_model import best_dense_ms, dense_references
    from sedac.bench.decode_soft import level_thresholds
    from sedac.runtime.kernels import register
    from sedac.runtime.kernels import sparse_triton as st
    from sedac.runtime.sparse_ops import mlp_bytes_read, prepare_sparse_weights

    register()
    dev, dt, hid, inter = torch.device("cuda"), torch.bfloat16, a.hidden, a.intermediate
    g = torch.Generator(device=dev).manual_seed(11)
    wgu = [torch.empty(2 * inter, hid, device=dev, dtype=dt).normal_(0, 0.02, generator=g) for _ in range(3)]
    wd = [torch.empty(hid, inter, device=dev, dtype=dt).normal_(0, 0.02, generator=g) for _ in range(3)]
    prep = [prepare_sparse_weights(x, y) for x, y in zip(wgu, wd)]
    x = torch.randn(1, hid, device=dev, dtype=dt, generator=g)
    dense = {k: graph_us(f) for k, f in dense_references(x, wgu, wd).items()}
    dense_us = best_dense_ms(dense)
    mlp_bytes = 3 * hid * inter * 2
    res = {"card": torch.cuda.get_device_name(0), "hidden": hid, "intermediate": inter, "dense_us": dense,
           "dense_best_us": dense_us, "levels": {}}
    h = torch.empty(1, inter, device=dev, dtype=dt)
    out = torch.empty(1, hid, device=dev, dtype=dt)
    tuned = st.tuned_config(x, *prep[0])
    res["tuned"] = [list(c) for c in tuned]
    tx, th = torch.zeros(1, device=dev), torch.zeros(1, device=dev)
    res["kernels"] = {str(c): _resources(st._launch_gate_up(x, tx, prep[0][0], th, h, c)) for c in st.GATE_UP_GEMV}
    res["kernels"].update({str(c): _resources(st._launch_down(h, prep[0][1], out, c)) for c in st.DOWN_GEMV})
    for lv in a.levels:
        tx, th = level_thresholds(x, lv, *prep[0])
        wf = mlp_bytes_read(x, tx, th, *prep[0])
        st._launch_gate_up(x, tx, prep[0][0], th, h, st.GATE_UP_GEMV[0])
        hs = [h.clone()]
        for i in (1, 2):
            st._launch_gate_up(x, tx, prep[i][0], th, h, st.GATE_UP_GEMV[0])
            hs.append(h.clone())
        gu = {str(c): graph_us(lambda i, c=c: st._launch_gate_up(x, tx, prep[i][0], th, h, c)) for c in st.GATE_UP_GEMV}
        dn = {str(c): graph_us(lambda i, c=c: st._launch_down(hs[i], prep[i][1], out, c)) for c in st.DOWN_GEMV}
        tot = graph_us(lambda i: st.sparse_mlp_triton(x, tx, th, *prep[i], config=tuned))
        ideal_us = dense_us * wf["weight_fraction"]
        res["levels"][str(lv)] = {**wf, "gate_up_us": gu, "down_us": dn, "tuned_us": tot,
                                  "realised_over_ideal": ideal_us / tot,
                                  "best_pair_us": min(gu.values()) + min(dn.values()),
                                  "best_pair_realised_over_ideal": ideal_us / (min(gu.values()) + min(dn.values()))}
        r = res["levels"][str(lv)]
        print(f"level {lv}: weights read {wf['weight_fraction']:.3f}  tuned {tot:.1f} us  realised/ideal "
              f"{r['realised_over_ideal']:.3f}  best gate/up + best down {r['best_pair_us']:.1f} us "
              f"({r['best_pair_realised_over_ideal']:.3f})", flush=True)
    print(f"dense best {dense_us:.1f} us ({mlp_bytes / dense_us / 1e6:.2f} TB/s); tuned {tuned}")
    print("| gate/up config | " + " | ".join(f"us @ {lv}" for lv in a.levels) + " | registers, spills, shared |")
    for c in st.GATE_UP_GEMV:
        print(f"| {c} | " + " | ".join(f"{res['levels'][str(lv)]['gate_up_us'][str(c)]:.1f}" for lv in a.levels)
              + f" | {res['kernels'][str(c)]} |")
    print("| down config | " + " | ".join(f"us @ {lv}" for lv in a.levels) + " | registers, spills, shared |")
    for c in st.DOWN_GEMV:
        print(f"| {c} | " + " | ".join(f"{res['levels'][str(lv)]['down_us'][str(c)]:.1f}" for lv in a.levels)
              + f" | {res['kernels'][str(c)]} |")
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
