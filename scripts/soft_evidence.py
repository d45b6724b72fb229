"""Issue-11 evidence: certified soft skip vs whole-MLP skip on SmolLM2 (the quickstart's model and data).

    python scripts/soft_evidence.py [--work DIR] [--layer L] [--soft-label S] [--n-sequences N] [--bound wsr]

Steps (each a plain `sedac` command, printed before it runs, so any step can be re-run alone):
  1. collect  -- the 70 built-in prompts, generate mode: hidden states at --layer, soft-skip labels at
                 --soft-label and the MLP-input magnitude histograms (the soft threshold table);
  2. train-probe --soft-level S --target T -- the probe that sets each token's soft level (band = layer..last);
  3. calibrate on builtin-tasks (disjoint from the 70 prompts), generate mode, eps = delta = 0.05:
                 static-token (whole-MLP skip of the probe's band, for comparison), soft-uniform (no probe)
                 and soft-probe, each certified separately by Learn-then-Test on the calibration part;
                 the held-out test part gives the figures below.
Writes docs/evidence/soft-skip-smollm2.json (keys: epsilon, delta, policies = {name: {certified,
mlp_bytes_saved_test, risk_test, ...}}), docs/evidence/soft-skip-smollm2.md and the calibration report
(docs/evidence/soft-skip-smollm2/).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "docs" / "evidence"


def _sedac(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "sedac.cli", *args]
    print("$ sedac " + " ".join(shlex.quote(a) for a in args), flush=True)
    t = time.time()
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    print(f"  -> rc {rc} in {time.time() - t:.0f} s", flush=True)
    if rc not in (0, 3):  # 3 = nothing certified (still a result)
        sys.exit(rc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="sedac-soft-evidence", help="scratch folder (shards, probes)")
    ap.add_argument("--layer", type=int, default=12, help="probe layer (the probe controls layers >= it)")
    ap.add_argument("--soft-label", type=float, default=0.2, help="soft level of the probe's band (and of the soft "
                    "labels collected beside it)")
    ap.add_argument("--target", default="entropy", help="probe target: entropy (score = -predicted final entropy; "
                    "on generated tokens true entropy predicts soft-skip safety better than the soft-label probe "
                    "does, docs/soft.md) or safety (the soft@S label)")
    ap.add_argument("--n-sequences", type=int, default=652, help="calibration + test sequences (builtin-tasks: 660 "
                    "= 652 + 8 grid)")
    ap.add_argument("--grid-sequences", type=int, default=8)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--bound", default="wsr")
    ap.add_argument("--soft-levels", default="0.08,0.1,0.12,0.13,0.14,0.145,0.15,0.155,0.16,0.17,0.18,0.2")
    ap.add_argument("--soft-gamma", type=float, default=0.1)
    ap.add_argument("--soft-alloc", default="greedy", help="uniform | greedy (per-layer allocation, docs/soft.md)")
    ap.add_argument("--soft-alloc-target", type=float, default=0.15)
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.05)
    a = ap.parse_args()
    w = Path(a.work)
    w.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _sedac(["collect", "--dataset", "builtin", "--mode", "generate", "--new-tokens", "64", "--layers", str(a.layer),
            "--soft-level", str(a.soft_label), "--out", str(w / "shards")])
    _sedac(["train-probe", "--data", str(w / "shards"), "--layer", str(a.layer), "--soft-level", str(a.soft_label),
            "--target", a.target, "--out", str(w / "probe.safetensors")])
    report = EVIDENCE / "soft-skip-smollm2"
    _sedac(["calibrate", "--probe", str(w / "probe.safetensors"), "--data", "builtin-tasks", "--mode", "generate",
            "--new-tokens", "32", "--max-length", "256", "--epsilon", str(a.epsilon), "--delta", str(a.delta),
            "--bound", a.bound, "--n-sequences", str(a.n_sequences), "--grid-sequences", str(a.grid_sequences),
            "--test-fraction", str(a.test_fraction), "--policies", "static-token,soft-uniform,soft-probe",
            "--grid-size", "8", "--grid-min-skip", "0.005", "--grid-max-skip", "0.3",
            "--soft-levels", a.soft_levels, "--soft-gamma", str(a.soft_gamma),
            "--soft-alloc", a.soft_alloc, "--soft-alloc-target", str(a.soft_alloc_target),
            "--out", str(w / "calibrated.safetensors"), "--report-dir", str(report.relative_to(ROOT))])
    rep = json.loads((report / "report.json").read_text())
    certs = {c["name"]: c for c in rep["summary"]}
    pol = {}
    for name, c in certs.items():
        pol[name] = {"certified": bool(c["certified"]), "mlp_bytes_saved_test": c.get("mlp_bytes_saved_test"),
                     "risk_test": c["test_risk"], "value": c["value"], "value_kind": c["value_kind"],
                     "risk_cal": c["empirical_risk"], "ucb_cal": c["upper_bound"],
                     "mlp_bytes_saved_cal": c.get("mlp_bytes_saved"), "soft": c.get("soft"),
                     "soft_alloc": {k: v for k, v in (c.get("soft_alloc") or {}).items() if k != "kl"} or None}
    c0 = next(iter(certs.values()))
    out = {"epsilon": a.epsilon, "delta": a.delta, "bound": a.bound, "policies": pol,
           "n_calibration_units": c0["n_units"], "n_test_units": c0["split"]["test_units"],
           "data": "builtin-tasks, generate mode, 32 greedy tokens, teacher-forced top-1 disagreement per sequence",
           "probe": {"layer": a.layer, "target": a.target, "band_label": f"soft@{a.soft_label}",
                     "trained_on": "builtin (70 prompts)"},
           "model": "smollm2-135m-instruct (float32, CPU)",
           "command": " ".join(["python scripts/soft_evidence.py", *map(shlex.quote, sys.argv[1:])]),
           "wall_s": round(time.time() - t0)}
    (EVIDENCE / "soft-skip-smollm2.json").write_text(json.dumps(out, indent=2) + "\n")
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    lines = ["# Soft skip vs whole-MLP skip, certified (SmolLM2-135M, builtin-tasks)", "",
             f"Written by `{out['command']}` ({out['wall_s']} s on this machine). epsilon = {a.epsilon}, "
             f"delta = {a.delta}, bound {a.bound}, {out['n_calibration_units']} calibration / "
             f"{out['n_test_units']} held-out test sequences; risk = mean per-sequence top-1 disagreement, "
             "teacher-forced along the full model's greedy continuation.", "",
             "| policy | certified | value | risk (cal) | UCB (cal) | MLP bytes saved (test) | risk (test) |",
             "|---|---|---|---|---|---|---|"]
    for name, p in pol.items():
        lines.append(f"| {name} | {'yes' if p['certified'] else 'NO'} | {f(p['value'])} | {f(p['risk_cal'])} | "
                     f"{f(p['ucb_cal'])} | {f(p['mlp_bytes_saved_test'])} | {f(p['risk_test'])} |")
    (EVIDENCE / "soft-skip-smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
