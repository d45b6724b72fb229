"""Calibration report: ``report.json`` (everything), ``report.md`` (tables), ``risk_vs_skip.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sedac.provenance import to_jsonable


def _f(x, fmt="{:.4f}") -> str:
    return "-" if x is None else fmt.format(x)


def summary_rows(certs: list[dict]) -> list[list[str]]:
    """One row per policy: name, certified value, cal risk, UCB, skip (cal), test risk, test skip, exceed."""
    rows = []
    for c in certs:
        rs = c.get("resampling") or {}
        rows.append([c["name"], "yes" if c["certified"] else "NO", _f(c["value"], "{:.5g}"), _f(c["empirical_risk"]),
                     _f(c["upper_bound"]), _f(c["skip_rate"]), _f(c["test_risk"]), _f(c["test_skip_rate"]),
                     _f(c.get("mlp_bytes_saved_test")),
                     f"{_f(rs.get('exceed_fraction'), '{:.2f}')} of {rs.get('n_splits', 0)}"])
    return rows


HEADER = ["policy", "certified", "value", "cal risk", "UCB", "skip (cal)", "test risk", "skip (test)",
          "MLP bytes saved (test)",
          "resampled test > eps (descriptive)"]


def _plot(path: Path, cfg, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, r) in enumerate(results.items()):
        cv, c = r["curve"], r["certificate"]
        bf = cv.get("bytes_factor", 1.0)  # skip figure -> fraction of all MLP weight bytes not read
        pts = [(s * bf, q, u) for s, q, u in zip(cv["skip_cal"], cv["risk_cal"], cv["ucb_cal"]) if s is not None]
        if not pts:
            continue
        color = f"C{i}"
        s, q, u = zip(*pts)
        ax.plot(s, q, "o-", color=color, label=f"{name} risk (cal)")
        ax.plot(s, u, "--", color=color, alpha=0.6, label=f"{name} UCB")
        if c["certified"]:
            ax.plot([c.get("mlp_bytes_saved", c["skip_rate"])], [c["empirical_risk"]], "*", color=color, markersize=16,
                    markeredgecolor="k", label=f"{name} certified")
    ax.axhline(cfg.epsilon, color="k", lw=1, ls=":", label=f"epsilon = {cfg.epsilon}")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("MLP weight bytes not read (fraction of all MLP layers)")
    ax.set_ylabel(f"mean per-sequence risk ({cfg.risk})")
    ax.set_title(f"sedac calibrate: delta = {cfg.delta}, bound {cfg.bound}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out_dir: str | Path, cfg, results: dict[str, Any], summary: dict[str, Any]) -> dict[str, str]:
    """Write the three report files; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    certs = [r["certificate"] for r in results.values()]
    payload = {"summary": summary["certificates"], "default": summary.get("default"), "probe_out": summary.get("out"),
               "curves": {k: r["curve"] for k, r in results.items()},
               "resampling": {k: r["resampling"] for k, r in results.items()},
               "provenance": summary["provenance"]}
    (out / "report.json").write_text(json.dumps(to_jsonable(payload), indent=2, sort_keys=True, default=float))
    png = out / "risk_vs_skip.png"
    _plot(png, cfg, results)
    prov = summary["provenance"]
    lines = [
        "# sedac calibration report", "",
        f"- probe: `{cfg.probe}` -> `{summary.get('out') or 'not written (nothing certified)'}`",
        f"- data: `{cfg.data}` ({cfg.mode}), fingerprint `{prov.get('data_fingerprint')}`, "
        f"{prov.get('n_sequences_total')} sequences ({prov.get('n_grid_sequences')} for grid placement)",
        f"- risk: `{cfg.risk}`" + (f" (NLL increase > {cfg.nll_margin} nats)" if cfg.risk == "nll" else
                                  " (top-1 disagreement with the full model)") + ", per sequence, teacher-forced",
        f"- guarantee, per policy: with probability >= {1 - cfg.delta:g} over the calibration draw, the mean "
        f"per-sequence risk of the certified grid point (the last rejected one; Learn-then-Test fixed-sequence "
        f"testing, bound `{cfg.bound}` -- the certificates name the one used) is <= {cfg.epsilon}, teacher-forced"
        + (f" along the full model's greedy continuation of {cfg.new_tokens} tokens" if cfg.mode == "generate"
           else "") + f", on sequences exchangeable with `{cfg.data}`, in {cfg.dtype}"
        + (f"; batch policies at --batch-concurrency {cfg.batch_concurrency}"
           if any(p.endswith("batch") for p in cfg.policies) else ""),
        f"- git `{prov.get('git_revision')}`, model config `{prov.get('model_fingerprint', {}).get('config_hash')}`",
        "",
        "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(certs)]
    lines += ["", "Resampling figure (descriptive stability, not a test of the guarantee): the fraction of random "
              "calibrate/test splits of the same units whose realised test risk exceeds epsilon. LTT bounds the "
              "population risk of the certified point over fresh calibration draws; these splits are neither fresh "
              "nor free of test-set noise, so this fraction is not expected to be <= delta.", "",
              f"![risk vs skip rate]({png.name})", ""]
    for name, r in results.items():
        cv = r["curve"]
        lines += [f"## {name}", "", "| j | value | skip (cal) | risk (cal) | UCB | p-value | risk (test) |",
                  "|---|---|---|---|---|---|---|"]
        for j, v in enumerate(cv["grid"]):
            lines.append(f"| {j} | {v:.5g} | {_f(cv['skip_cal'][j])} | {_f(cv['risk_cal'][j])} | "
                         f"{_f(cv['ucb_cal'][j])} | {_f(cv['p_value'][j], '{:.3g}')} | {_f(cv['risk_test'][j])} |")
        lines.append("")
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return {"markdown": str(md), "json": str(out / "report.json"), "png": str(png)}
