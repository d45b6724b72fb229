"""``sedac quickstart``: the whole pipeline on the embedded default model, step by step.

Steps (each a ``sedac`` CLI subprocess whose exact command is printed, so every step can be re-run
alone): models pull -> collect (built-in prompts, generate mode) -> collect (corpus mode) ->
train-probe -> calibrate (epsilon default 0.05, static/token: the policy the vLLM plugin serves) ->
bench offline (vanilla vs sedac certified vs ngram vs ngram + sedac) -> report folder + summary.

Data split (recorded in ``quickstart.json`` under ``split``): the probe trains on the ``builtin``
prompts and corpus; calibration draws ``GRID_SEQUENCES + cal_sequences`` records of ``cal_data``
in the order fixed by ``--seed CAL_SEED``; the bench runs on the next ``bench_prompts`` records of that
same order (:func:`sedac.bench.prompts.record_order`), i.e. on held-out prompts of the distribution
the threshold was certified on, never seen by training or calibration.

If calibration certifies nothing at the requested epsilon (exit 3), the bench still runs the
baselines and, when ``demo_threshold`` is set, an explicitly *uncertified* sedac variant, labelled so
(engines are kept to four: each vLLM engine holds ~2 GiB here).
Timings of every step are written to ``<work_dir>/quickstart.json``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sedac.bench.config import QuickstartConfig
from sedac.errors import ConfigError, SedacError

CAL_SEED = 0  #: calibrate --seed: the order calibration draws cal_data records in (the bench takes the rest)
GRID_SEQUENCES = 6  #: calibrate --grid-sequences



def _sedac() -> list[str]:
    return [sys.executable, "-m", "sedac.cli"]


def _step(n: int, total: int, title: str, args: list[str], log: list[dict[str, Any]], ok_codes=(0,)) -> int:
    from rich.console import Console

    con = Console(stderr=True)
    shown = "sedac " + " ".join(shlex.quote(a) for a in args)
    con.rule(f"[bold]step {n}/{total}: {title}")
    con.print(f"[dim]$ {shown}[/]", soft_wrap=True)
    t0 = time.perf_counter()
    rc = subprocess.run(_sedac() + args).returncode
    dt = time.perf_counter() - t0
    log.append({"step": title, "command": shown, "seconds": round(dt, 1), "exit_code": rc})
    con.print(f"[{'green' if rc == 0 else 'yellow'}]{title}: exit {rc} after {dt:.0f} s[/]")
    if rc not in ok_codes:
        raise SedacError(f"step '{title}' failed (exit {rc}); re-run it alone with: {shown}")
    return rc


def heldout_prompts(cfg: QuickstartConfig) -> dict[str, Any]:
    """The bench's prompt set: the ``bench_prompts`` records of ``cal_data`` that follow the ones
    calibration used, in calibration's order (a ``PromptSet`` mapping)."""
    return {"source": cfg.cal_data, "n": cfg.bench_prompts, "chat": True,
            "shuffle_seed": CAL_SEED, "skip": GRID_SEQUENCES + cfg.cal_sequences}


def sedac_variants(cfg: QuickstartConfig, certified: bool, ngram: dict[str, Any]) -> list[dict[str, Any]]:
    """The sedac rows of the bench matrix (add new sedac settings here)."""
    # soft skip (docs/soft.md): listed as unavailable, with the reason, when soft-uniform was not certified
    soft = ([{"name": "sedac-soft-uniform", "sedac": {"mode": "soft", "policy": "token", "soft_family": "uniform"}}]
            if cfg.soft_levels else [])
    if certified:
        return [{"name": "sedac-certified", "sedac": {"mode": "static", "policy": "token"}},
                {"name": "ngram+sedac", "sedac": {"mode": "static", "policy": "token"}, "speculative": ngram}] + soft
    if cfg.demo_threshold is not None:
        return [{"name": f"sedac-p{cfg.demo_threshold:g}-UNCERTIFIED",
                 "sedac": {"mode": "static", "policy": "token", "threshold": cfg.demo_threshold}}] + soft
    return soft


def bench_recipe(cfg: QuickstartConfig, probe: Path | None, certified: bool, out_dir: Path) -> dict[str, Any]:
    """The offline bench matrix of the quickstart as a ``bench_offline`` recipe mapping."""
    ng = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    variants: list[dict[str, Any]] = [{"name": "vanilla"}, {"name": "ngram", "speculative": ng}]
    if probe is not None:
        variants += sedac_variants(cfg, certified, ng)
    return {
        "kind": "bench_offline", "model": cfg.model, "probe": str(probe) if probe else None,
        "prompts": heldout_prompts(cfg),
        "variants": variants, "baseline": "vanilla", "max_tokens": cfg.bench_max_tokens,
        "warmup": 1, "repeats": cfg.repeats, "max_model_len": 512, "max_num_seqs": cfg.bench_prompts,
        "quality": {"enabled": probe is not None, "corpus": cfg.corpus, "n_sequences": 16, "seq_len": 128},
        "out_dir": str(out_dir),
    }


def data_split(cfg: QuickstartConfig) -> dict[str, Any]:
    """Which records of ``cal_data`` calibration and the bench use (checked before any step runs)."""
    from sedac.bench.config import PromptSet
    from sedac.bench.prompts import describe
    from sedac.collect.data import load_records

    n = len(load_records(cfg.cal_data))
    used = GRID_SEQUENCES + cfg.cal_sequences
    if used + cfg.bench_prompts > n:
        raise ConfigError(f"cal_data {cfg.cal_data!r} has {n} records: {GRID_SEQUENCES} grid + cal_sequences "
                          f"{cfg.cal_sequences} + bench_prompts {cfg.bench_prompts} held out do not fit; "
                          "lower cal_sequences or bench_prompts")
    rows = describe(PromptSet(**heldout_prompts(cfg)))["rows"]
    return {"probe_training": {"generate": f"builtin, first {cfg.collect_prompts} records", "corpus": cfg.corpus},
            "order": f"records of {cfg.cal_data!r} ({n}) shuffled with seed {CAL_SEED} (calibrate --seed)",
            "calibration": {"data": cfg.cal_data, "order_positions": [0, used]},
            "bench": {"data": cfg.cal_data, "order_positions": [used, used + len(rows)], "rows": rows},
            "quality": {"corpus": cfg.corpus, "note": "the bench's teacher-forced quality pass runs on this corpus"}}


def run_quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run every step; returns the summary (also written to ``<work_dir>/quickstart.json``)."""
    import yaml

    from sedac.bench.report import print_table

    w = Path(cfg.work_dir)
    w.mkdir(parents=True, exist_ok=True)
    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    probe = w / "probe.safetensors"
    split = data_split(cfg)
    common = ["--model", cfg.model]
    total = 7
    from sedac.models.registry import ALIASES

    if cfg.model in ALIASES:  # a local folder or hub id needs no pull (collect loads it)
        _step(1, total, "pull model", ["models", "pull", cfg.model], log)
    _step(2, total, "collect (generate mode, built-in prompts)",
          ["collect", *common, "--out", str(w / "shards-generate"), "--dataset", "builtin", "--mode", "generate",
           "--limit", str(cfg.collect_prompts), "--new-tokens", str(cfg.collect_new_tokens),
           "--layers", str(cfg.layer), "--skip-band", cfg.band, "--batch-size", "8"], log)
    _step(3, total, "collect (corpus mode)",
          ["collect", *common, "--out", str(w / "shards-corpus"), "--dataset", cfg.corpus, "--mode", "corpus",
           "--limit", str(cfg.corpus_chunks), "--max-length", "128",
           "--layers", str(cfg.layer), "--skip-band", cfg.band, "--batch-size", "8"], log)
    _step(4, total, "train-probe",
          ["train-probe", "--data", str(w / "shards-generate"), "--data", str(w / "shards-corpus"),
           "--layer", str(cfg.layer), "--band", cfg.band, "--target", "safety", "--out", str(probe),
           "--max-epochs", str(cfg.max_epochs), "--no-progress"], log)
    rc = _step(5, total, f"calibrate (epsilon={cfg.epsilon:g}, delta={cfg.delta:g})",
               ["calibrate", *common, "--probe", str(probe), "--data", cfg.cal_data, "--mode", "generate",
                "--epsilon", str(cfg.epsilon), "--delta", str(cfg.delta),
                "--policies", "static-token,soft-uniform" if cfg.soft_levels else "static-token",
                *(["--soft-levels", cfg.soft_levels] if cfg.soft_levels else []),
                "--n-sequences", str(cfg.cal_sequences), "--grid-sequences", str(GRID_SEQUENCES),
                "--seed", str(CAL_SEED),
                "--test-fraction", str(cfg.cal_test_fraction),
                "--new-tokens", str(cfg.cal_new_tokens), "--max-length", "160",
                "--grid-size", str(cfg.cal_grid_size), "--resamples", "20",
                "--report-dir", str(w / "calibration")], log, ok_codes=(0, 3))
    certified = rc == 0
    recipe = w / "bench.yaml"
    recipe.write_text(yaml.safe_dump(bench_recipe(cfg, probe, certified, w / "report"), sort_keys=False))
    _step(6, total, "bench offline", ["bench", "offline", str(recipe)], log)
    results = json.loads((w / "report" / "results.json").read_text())
    summary = {"config": cfg.__dict__, "certified": certified, "split": split, "steps": log,
               "total_seconds": round(time.perf_counter() - t0, 1), "report": str(w / "report")}
    (w / "quickstart.json").write_text(json.dumps(summary, indent=1))
    _summary(summary, results, print_table)
    return summary


def _summary(summary: dict[str, Any], results: dict[str, Any], print_table) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.rule("[bold]step 7/7: summary")
    t = Table(title="quickstart steps")
    for c in ("step", "seconds", "exit", "command"):
        t.add_column(c, overflow="fold")
    for s in summary["steps"]:
        t.add_row(s["step"], f"{s['seconds']:.0f}", str(s["exit_code"]), s["command"])
    con.print(t)
    print_table(results)
    if not summary["certified"]:
        con.print("[yellow]calibration certified nothing at this epsilon with this little data; the sedac "
                  "variant shown (if any) is UNCERTIFIED. See the calibration report for the smallest "
                  "achievable risk.[/]")
    con.print(f"total {summary['total_seconds']:.0f} s; report folder: {summary['report']} "
              f"(results.md, results.json, *.png)")
