"""HB vs WSR (and Hoeffding, Bentkus) on the same risk matrices: which default bound certifies more.

Regenerates the table in docs/calibration.md ("Which bound"):

    python scripts/bound_comparison.py [--runs 400] [--report path/to/report.json ...]

Simulated matrices are shaped like sedac's generate-mode calibrations: per-sequence top-1
disagreement over ``--tokens`` scored tokens, most sequences at exactly 0 (heterogeneous per-sequence
rates ``p_i ~ Beta(a, a (1 - m) / m)`` with small ``a``, count ~ Binomial(tokens, p_i)), on a grid whose
population mean risks ``m_j`` rise geometrically (known exactly, so validity is checked too). Each run
draws one matrix of ``--units`` units and certifies it with every bound (fixed-sequence LTT, the code
``sedac calibrate`` runs). ``--report`` adds real matrices: the ``unit_risk`` saved in a calibration's
report.json (calibration units only), certified with each bound.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from sedac.calibration.bounds import BOUNDS
from sedac.calibration.ltt import certify


def simulate(rng, means, n, tokens, a):
    cols = []
    for m in means:
        p = rng.beta(a, a * (1 - m) / m, size=n)
        cols.append(rng.binomial(tokens, p) / tokens)
    return np.stack(cols, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--units", type=int, default=174)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action="append", default=[])
    args = ap.parse_args()
    means = np.geomspace(0.002, 0.2, 12)
    print(f"grid population risks: {', '.join(f'{m:.4f}' for m in means)}; epsilon {args.epsilon}, "
          f"delta {args.delta}, {args.units} units x {args.tokens} tokens, {args.runs} runs per shape\n")
    print("| shape a | bound | certified (share of runs) | mean population risk certified | "
          "P(certified risk > eps) | mean index |")
    print("|---|---|---|---|---|---|")
    for a in (0.05, 0.2, 1.0):
        rng = np.random.default_rng(args.seed)
        mats = [simulate(rng, means, args.units, args.tokens, a) for _ in range(args.runs)]
        zeros = float(np.mean([(m[:, 5] == 0).mean() for m in mats]))
        for bound in ("hb", "wsr", "hoeffding", "bentkus"):
            idx = [certify(m, args.epsilon, args.delta, bound, with_ucb=False).index for m in mats]
            got = [means[i] for i in idx if i is not None]
            print(f"| {a} ({zeros:.0%} zero units at m={means[5]:.3f}) | {bound} | {len(got) / len(idx):.2f} | "
                  f"{np.mean([means[i] if i is not None else 0.0 for i in idx]):.4f} | "
                  f"{np.mean([g > args.epsilon for g in got]) if got else 0.0:.3f} | "
                  f"{np.mean([i if i is not None else -1 for i in idx]):.2f} |")
    for path in args.report:
        rep = json.loads(open(path).read())
        print(f"\nreal matrices from {path}:\n")
        print("| policy | bound | certified index | empirical risk | UCB at that point |")
        print("|---|---|---|---|---|")
        for name, cv in rep["curves"].items():
            if "unit_risk" not in cv:
                continue
            R = np.asarray(cv["unit_risk"], dtype=np.float64)[np.asarray(cv["calibration_units"], dtype=int)]
            for bound in BOUNDS:
                res = certify(R, args.epsilon, args.delta, bound)
                j = res.index
                print(f"| {name} | {bound} | {j} | {res.risks[j] if j is not None else float('nan'):.4f} | "
                      f"{res.ucbs[j] if j is not None else float('nan'):.4f} |")


if __name__ == "__main__":
    main()
