"""Where the time of one batch-1 soft-skip launch goes: per-program timestamps (%globaltimer) of its phases (GPU).

Why: at zero weight bytes (level 1.0) the two kernels still take ~20 us on an H200 (sweep run 6), a fixed cost
that sets realised/ideal at every level. Each program of :mod:`sedac.runtime.kernels.sparse_gemv` built with
``TRACE`` stores four stamps - start, after its compaction, after its weight loop, end (after the split-K finish)
- and its SM id. This script launches the tuned (or given) configurations on the Qwen2.5-7B MLP shape, three
rotating weight sets, and prints per phase the median / p90 / max over programs (us, from the launch's first
start), the span of the launch (first start to last end) and the event-timed duration of the same launch
untraced, at each level. Not a benchmark: stamps cost a few stores per program.

    python scripts/soft_kernel_phases.py --out phases.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton


def _summary(tr: torch.Tensor) -> dict:
    t = tr[:, :4].double()
    t0 = t[:, 0].min()
    rel = (t - t0) / 1e3  # us from the launch's first program start

    def q(v: torch.Tensor) -> list:
        return [round(float(v.quantile(p)), 2) for p in (0.5, 0.9)] + [round(float(v.max()), 2)]

    return {"programs": int(t.shape[0]), "span_us": round(float(rel[:, 3].max()), 2), "start": q(rel[:, 0]),
            "compact": q(rel[:, 1] - rel[:, 0]), "loop": q(rel[:, 2] - rel[:, 1]), "finish": q(rel[:, 3] - rel[:, 2]),
            "end": q(rel[:, 3]), "sms": int(tr[:, 7].unique().numel()),
            "max_programs_per_sm": int(torch.bincount(tr[:, 7]).max())}


def _parse(c: str) -> tuple:
    v = [int(t) for t in c.split(",")]
    if len(v) >= 7:  # down: (BN, BK, S, warps, stages, FUSED, FIN[, EV])
        v[5] = bool(v[5])
    return tuple(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.25, 1.0])
    ap.add_argument("--gate-up", type=str, nargs="*", default=[], help="extra gate/up configs, e.g. '64,32,4,3,2,0'")
    ap.add_argument("--down", type=str, nargs="*", default=[], help="extra down configs, e.g. '64,32,9,4,3,1,1'")
    a = ap.parse_args()
    from sedac.bench.decode_soft import level_thresholds
    from sedac.runtime.kernels import sparse_gemv as sg
    from sedac.runtime.kernels import sparse_triton as st
    from sedac.runtime.sparse_ops import prepare_sparse_weights

    dev, dt, hid, inter = torch.device("cuda"), torch.bfloat16, 3584, 18944
    g = torch.Generator(device=dev).manual_seed(11)
    prep = [prepare_sparse_weights(torch.empty(2 * inter, hid, device=dev, dtype=dt).normal_(0, 0.02, generator=g),
                                   torch.empty(hid, inter, device=dev, dtype=dt).normal_(0, 0.02, generator=g))
            for _ in range(3)]
    x = torch.randn(1, hid, device=dev, dtype=dt, generator=g)
    gu_cfg, dn_cfg = st.tuned_config(x, *prep[0])
    gus = [gu_cfg] + [_parse(c) for c in a.gate_up]
    dns = [dn_cfg] + [_parse(c) for c in a.down]
    h = torch.empty(1, inter, device=dev, dtype=dt)
    out = torch.empty(1, hid, device=dev, dtype=dt)
    res = {"card": torch.cuda.get_device_name(0), "tuned": [list(gu_cfg), list(dn_cfg)], "levels": {}}
    for lv in a.levels:
        tx, th = level_thresholds(x, lv, *prep[0])
        runs = {}
        st._launch_gate_up(x, tx, prep[0][0], th, h, gu_cfg)
        hm = h.clone()  # the down kernels' input at this level
        for kind, cfgs in (("gate_up", gus), ("down", dns)):
            for c in cfgs:
                if kind == "gate_up":
                    n = sg.trace_rows(hid, triton.cdiv(inter, c[0]), c[4])
                    fn = lambda i, tr=None, c=c: sg.launch_gate_up_gemv(x, tx, prep[i][0], th, h, c, trace=tr)  # noqa: E731
                else:
                    n = sg.trace_rows(inter, triton.cdiv(hid, c[0]), c[2])
                    fn = lambda i, tr=None, c=c: sg.launch_down_gemv(hm, prep[i][1], out, c, trace=tr)  # noqa: E731
                tr = torch.zeros(n, 8, device=dev, dtype=torch.int64)
                sums = []
                for rep in range(6):
                    fn(rep % 3, tr)
                    torch.cuda.synchronize()
                    if rep >= 3:
                        sums.append(_summary(tr.cpu()))
                best = min(sums, key=lambda r: r["span_us"])
                ev = []
                for rep in range(6):
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    fn(rep % 3)
                    e1.record()
                    e1.synchronize()
                    ev.append(e0.elapsed_time(e1) * 1e3)
                best["event_us_untraced"] = round(sorted(ev[3:])[1], 2)
                runs[f"{kind} {c}"] = best
                print(f"level {lv} {kind} {c}: {best}", flush=True)
        res["levels"][str(lv)] = runs
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
