"""Results folder of ``sedac bench``: ``results.json`` (raw), ``results.md`` (table), PNGs, printed table.

PNGs: ``speed_quality.png`` (speedup vs teacher-forced top-1 agreement, Pareto front marked) and
``skip_per_layer.png`` (per-layer fraction of MLP weight bytes not read of each sedac setting —
the skip rate for whole-MLP skip — teacher-forced HF runtime).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sedac.bench import metrics as M


def _f(x: Any, fmt: str = ".2f") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and x != x:
        return "n/a"
    return format(x, fmt)


def _quality_of(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    """Teacher-forced figures of a variant (sedac off: the baseline's, by definition ratio 1, nothing saved)."""
    qual = results.get("quality") or {}
    q = qual.get("variants", {}).get(name)
    if q is not None and "error" in q:
        return None
    e = results["variants"].get(name, {})
    if name == results["baseline"] or (q is None and e.get("sedac") is None and qual.get("baseline")):
        if not qual:
            return None
        return {"ppl": qual.get("baseline", {}).get("ppl"), "ppl_ratio": 1.0, "top1_agreement": 1.0,
                "mlp_bytes_saved": 0.0}
    return q


def table_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per variant with the headline metrics (strings, ready for Markdown / rich).

    Variants whose engine did not run but whose teacher-forced quality was measured (e.g. a setting
    the vLLM plugin refuses) get a row too, with the speed columns marked "not run".
    """
    rows = []
    qual = results.get("quality") or {}
    order = [v["name"] for v in results.get("config", {}).get("variants", [])]
    quality_only = [n for n, q in qual.get("variants", {}).items()
                    if n not in results["variants"] and "error" not in q]
    names = sorted(list(results["variants"]) + quality_only,
                   key=lambda n: (n != results["baseline"], order.index(n) if n in order else 99))
    for name in names:
        e = results["variants"].get(name)
        q = _quality_of(results, name)
        row = {"variant": name}
        if e is None:
            row.update({"TPS median [min–max]": "not run", "speedup median [min–max]": "not run"})
            g, sk, sd = None, {}, {}
        else:
            t, s = e["tps"], e["speedup"]
            row.update({"TPS median [min–max]": f"{t['median']:.1f} [{t['min']:.1f}–{t['max']:.1f}]",
                        "speedup median [min–max]": f"{s['median']:.3f} [{s['min']:.3f}–{s['max']:.3f}]"})
            g, sk, sd = e["greedy_vs_baseline"], e.get("skip") or {}, e.get("spec_decode") or {}
        row.update({
            "skip (band layers)": _f(sk.get("all_band_layers", {}).get("rate"), ".3f") if sk else "–",
            "skip (all layers)": _f(sk.get("all_layers_rate"), ".3f") if sk else "–",
            "MLP bytes saved (vLLM)": _f(e.get("mlp_bytes_saved"), ".3f") if e else "–",
            "MLP bytes saved (TF)": _f(q.get("mlp_bytes_saved"), ".3f") if q else "–",
            "PPL (ratio)": f"{_f(q.get('ppl'))} ({_f(q.get('ppl_ratio'), '.3f')})" if q else "–",
            "top-1 agree": _f(q.get("top1_agreement"), ".3f") if q else "–",
            "greedy identical": _f(g["identical_fraction"], ".2f") if g else "–",
            "first div.": _f(g["mean_first_divergence"], ".1f") if g else "–",
            "AR": _f(sd.get("acceptance_rate"), ".3f") if sd else "–",
            "accept len": _f(sd.get("mean_acceptance_length"), ".2f") if sd else "–",
            "TRR": _f(sd.get("trr"), ".3f") if sd else "–",
        })
        rows.append(row)
    return rows


def markdown(results: dict[str, Any]) -> str:
    rows = table_rows(results)
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    prov = results.get("provenance", {})
    cfg = results.get("config", {})
    head = [
        "# sedac bench (offline)", "",
        f"model `{results.get('model_path')}`, {results.get('n_prompts')} prompts ({results['prompts']['source']}), "
        f"{cfg.get('max_tokens')} greedy tokens each, warm-up {cfg.get('warmup')}, {cfg.get('repeats')} repeats "
        f"interleaved round-robin; baseline `{results['baseline']}` measured in the same run. "
        f"git {prov.get('git_revision')}.", "",
        "Speedup = TPS / baseline TPS of the same round; median [min–max] over repeats. PPL, top-1: teacher-forced "
        "(HF runtime) on the quality corpus; greedy identical / first divergence: vLLM outputs vs the baseline's. "
        "MLP bytes saved: fraction of all MLP weight bytes a per-token kernel need not read (whole-MLP skip: "
        "skip rate x band layers / all layers; soft skip: zeroed MLP inputs), from the vLLM engine's counters "
        "(vLLM) and from the teacher-forced HF run (TF). Definitions: docs/metrics.md.", "",
    ]
    tail = [""]
    for name, reason in results.get("unavailable", {}).items():
        tail.append(f"- `{name}` not run: {reason}")
    return "\n".join(head + lines + tail) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    qual = results.get("quality", {})
    pts, names = [], []
    for name, e in results["variants"].items():
        q = qual.get("variants", {}).get(name)
        agree = q.get("top1_agreement") if q else (1.0 if e.get("sedac") is None else None)
        if agree is None:
            continue
        pts.append((e["speedup"]["median"], agree))
        names.append(name)
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        front = set(M.pareto_front(pts))
        for i, ((x, y), n) in enumerate(zip(pts, names)):
            e = results["variants"][n]["speedup"]
            ax.errorbar(x, y, xerr=[[x - e["min"]], [e["max"] - x]], fmt="o", color="C3" if i in front else "C0")
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        fx = sorted((pts[i] for i in front))
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "--", color="C3", lw=1, label="Pareto front")
        ax.set_xlabel("speedup vs baseline (median, min–max)")
        ax.set_ylabel("teacher-forced top-1 agreement")
        ax.legend(loc="lower left")
        fig.tight_layout()
        paths.append(out / "speed_quality.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    settings = qual.get("settings", {})
    if settings:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for key, r in settings.items():
            per_layer = r.get("per_layer_bytes_saved", r.get("per_layer_skip_rate"))
            if per_layer is None:
                continue
            label = "/".join(key.split("|")[1:])
            ax.plot(range(len(per_layer)), per_layer, marker=".", label=label)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("MLP weight bytes not read\n(whole-MLP: skip rate; teacher-forced)", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "skip_per_layer.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the results folder and print the table; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True, default=str))
    (out / "results.md").write_text(markdown(results))
    plots(results, out)
    print_table(results)
    return out


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = table_rows(results)
    t = Table(title=f"sedac bench — baseline {results['baseline']}")
    for c in rows[0]:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r.values())
    Console(width=200).print(t)
    for name, reason in results.get("unavailable", {}).items():
        Console().print(f"[yellow]{name}[/] not run: {reason}")
