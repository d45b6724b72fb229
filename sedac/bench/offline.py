"""``sedac bench offline``: vLLM engines in-process-per-variant, interleaved rounds, one report.

Procedure (docs/metrics.md): every variant of the matrix gets its own engine (own process, see
:mod:`sedac.bench.engine`); engines start concurrently while the teacher-forced quality pass runs
in this process. Then ``warmup`` unmeasured rounds, then ``repeats`` measured rounds; within a round
every variant generates the same prompts (greedy, ``ignore_eos``) one after the other, the order
rotated each round (round-robin), so slow drifts of the machine hit all variants alike. Speedup is
computed per round against the baseline of that same round; median and min-max are reported.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from sedac.bench import metrics as M
from sedac.bench.config import OfflineBenchConfig, Variant
from sedac.errors import ConfigError, SedacError


def _progress(msg: str, style: str = "") -> None:
    from rich.console import Console
    from rich.markup import escape

    text = escape(msg)
    Console(stderr=True).print(f"[bold cyan]\\[sedac bench][/] " + (f"[{style}]{text}[/]" if style else text))


def unavailable_reason(v: Variant, probe_path: str | None = None) -> str | None:
    """Why a variant cannot run on this installation or with this probe (None if it can)."""
    if v.speculative is not None and v.speculative.method == "suffix":
        if importlib.util.find_spec("arctic_inference") is None:
            return "suffix decoding needs arctic-inference (`pip install sedac[suffix]`), not installed"
    if v.sedac is not None:
        if probe_path is not None:  # e.g. a certified variant with an uncalibrated probe: say so, start no engine
            reason = _probe_reason(v, probe_path)
            if reason:
                return reason
        if importlib.util.find_spec("sedac.runtime.vllm_plugin") is None:
            return "the sedac vLLM plugin (sedac.runtime.vllm_plugin) is not available"
        from sedac.runtime.config import SedacVllmConfig

        try:
            SedacVllmConfig.from_dict(v.sedac.vllm_config("x"))
        except SedacError as exc:
            return f"the vLLM plugin refuses this setting ({exc}); teacher-forced quality still reported"
    return None


def _probe_reason(v: Variant, probe_path: str) -> str | None:
    """Why the probe cannot serve this variant's sedac setting (None if it can)."""
    from sedac.probes import load_probe

    s = v.sedac
    try:
        probe = load_probe(probe_path)
        if s.mode == "soft":
            from sedac.runtime.soft import soft_from_probe

            soft_from_probe(probe, s.soft_family, s.soft_level)
        else:
            from sedac.runtime.policy import thresholds_from_probe

            thresholds_from_probe(probe, mode=s.mode, policy=s.policy, override=s.threshold)
    except SedacError as exc:
        what = f"soft-{s.soft_family} parameters" if s.mode == "soft" else f"{s.mode} thresholds"
        return f"{what} unavailable: {exc}"
    return None


def engine_spec(cfg: OfflineBenchConfig, v: Variant, model_path: str) -> dict[str, Any]:
    sedac = None
    if v.sedac is not None:
        sedac = v.sedac.vllm_config(str(cfg.probe_for(v)))
    return {
        "model": model_path, "baseline": v.name == cfg.baseline, "kv_cache_gib": cfg.kv_cache_gib,
        "sedac": sedac, "speculative": v.speculative.vllm_config() if v.speculative else None,
        "llm_kwargs": {"dtype": cfg.dtype, "enforce_eager": cfg.enforce_eager, "max_model_len": cfg.max_model_len,
                       "max_num_seqs": cfg.max_num_seqs, "seed": cfg.seed},
    }


def _skip_delta(first: dict | None, last: dict | None) -> dict[str, Any] | None:
    """Skip counters accumulated between two ``engine_stats`` snapshots."""
    if not last or "bands" not in last:
        return last
    out: dict[str, Any] = {"bands": {}}
    s_all = e_all = 0
    for b, st in last["bands"].items():
        f = (first or {}).get("bands", {}).get(b, {})
        s = int(st.get("skipped", 0)) - int(f.get("skipped", 0))
        e = int(st.get("evaluated", 0)) - int(f.get("evaluated", 0))
        out["bands"][b] = {"skipped": s, "evaluated": e, "rate": M.skip_rate(s, e)}
        s_all, e_all = s_all + s, e_all + e
    out["all_band_layers"] = {"skipped": s_all, "evaluated": e_all, "rate": M.skip_rate(s_all, e_all)}
    return out


def _soft_stats(first: dict | None, last: dict | None) -> dict[str, Any]:
    """Soft-skip figures between two ``engine_stats`` snapshots (warm-up end, last measured round).

    The plugin reports ``mlp_bytes_saved_fraction`` (fraction of all MLP weight bytes not read, every
    layer) as a running figure since engine start over ``soft.rows`` evaluated rows. When both
    snapshots carry the row count, the fraction over the measured rounds alone is
    ``(f_last * rows_last - f_first * rows_first) / (rows_last - rows_first)``; otherwise the running
    figure is reported (``window`` says which). ``None`` when the engine does not report it.
    """
    def parts(snap):
        snap = snap or {}
        f, rows = snap.get("mlp_bytes_saved_fraction"), (snap.get("soft") or {}).get("rows")
        return (float(f) if f is not None else None), (int(rows) if rows is not None else None)

    f0, r0 = parts(first)
    f1, r1 = parts(last)
    if f1 is not None and None not in (f0, r0, r1) and r1 > r0:
        frac, window = (f1 * r1 - f0 * r0) / (r1 - r0), "measured rounds"
    else:
        frac, window = f1, "since engine start"
    return {"mlp_bytes_saved_fraction": frac, "window": window, "rows": (r1 - r0) if window == "measured rounds"
            else r1, "stats": last}


def run_offline(cfg: OfflineBenchConfig) -> dict[str, Any]:
    """Run the matrix; returns the raw results dict (also written by :mod:`sedac.bench.report`)."""
    from transformers import AutoConfig, AutoTokenizer

    from sedac.adapter import fingerprint_from_config
    from sedac.bench.engine import EngineProc
    from sedac.bench.prompts import describe, prompt_token_ids
    from sedac.models.registry import resolve_model
    from sedac.provenance import provenance, to_jsonable

    if os.environ.get("SEDAC_VLLM_CONFIG"):
        raise ConfigError("SEDAC_VLLM_CONFIG is set: unset it; bench configures sedac per variant "
                          "(the baseline must never run with sedac on)")
    model_path = str(resolve_model(cfg.model))
    tok = AutoTokenizer.from_pretrained(model_path)
    hf_cfg = AutoConfig.from_pretrained(model_path)
    prompts = prompt_token_ids(cfg.prompts, tok)
    longest = max(len(p) for p in prompts) + cfg.max_tokens
    if longest > cfg.max_model_len:
        raise ConfigError(f"max_model_len {cfg.max_model_len} < longest prompt + max_tokens ({longest})")
    for v in cfg.variants:
        if v.sedac is not None and not Path(str(cfg.probe_for(v))).is_file():
            raise ConfigError(f"variants.{v.name}.sedac.probe: file not found: {cfg.probe_for(v)}")

    results: dict[str, Any] = {
        "provenance": provenance(), "config": to_jsonable(cfg), "model_path": model_path,
        "model_fingerprint": fingerprint_from_config(hf_cfg), "prompts": describe(cfg.prompts),
        "n_prompts": len(prompts), "baseline": cfg.baseline, "variants": {}, "unavailable": {},
    }
    runnable = []
    for v in cfg.variants:
        reason = unavailable_reason(v, str(cfg.probe_for(v)) if v.sedac is not None else None)
        if reason:
            if v.name == cfg.baseline:
                raise ConfigError(f"baseline {v.name!r} cannot run: {reason}")
            results["unavailable"][v.name] = reason
            _progress(f"skipping {v.name}: {reason}", "yellow")
        else:
            runnable.append(v)

    _progress(f"starting {len(runnable)} vLLM engines ({', '.join(v.name for v in runnable)}) ...")
    t_start = time.perf_counter()
    procs = {v.name: EngineProc(v.name, engine_spec(cfg, v, model_path)) for v in runnable}
    try:
        if cfg.quality.enabled:
            from sedac.bench.quality import teacher_forced_quality

            _progress("teacher-forced quality (HF runtime) while engines start ...")
            results["quality"] = teacher_forced_quality(cfg, model_path)
        for v in list(runnable):
            p = procs[v.name]
            if not p.wait_ready():
                if v.name == cfg.baseline:
                    raise ConfigError(f"baseline engine failed to start: {p.error}")
                results["unavailable"][v.name] = f"engine failed: {p.error.splitlines()[0]}"
                _progress(f"{v.name}: engine failed: {p.error}", "yellow")
                runnable.remove(v)
        _progress(f"engines ready after {time.perf_counter() - t_start:.0f} s")
        results["variants"] = _measure(cfg, runnable, procs, prompts)
    finally:
        for p in procs.values():
            p.close()
    for v in runnable:
        results["variants"][v.name]["engine_start_s"] = procs[v.name].info["start_s"]
    _derive(cfg, results, hf_cfg)
    return results


def _measure(cfg, runnable, procs, prompts) -> dict[str, Any]:
    from rich.progress import Progress

    names = [v.name for v in runnable]
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    first_stats: dict[str, Any] = {}
    total = (cfg.warmup + cfg.repeats) * len(names)
    with Progress(transient=True) as bar:
        task = bar.add_task("bench rounds", total=total)
        for r in range(cfg.warmup + cfg.repeats):
            k = r % len(names)
            for n in names[k:] + names[:k]:  # round-robin order
                res = procs[n].run(prompts, cfg.max_tokens)
                if r < cfg.warmup:
                    first_stats[n] = res["sedac_stats"]
                else:
                    rounds[n].append(res)
                bar.advance(task)
    base = rounds[cfg.baseline]
    out: dict[str, Any] = {}
    for v in runnable:
        rs = rounds[v.name]
        tps = [M.tps(sum(x["tokens"]), x["wall_s"]) for x in rs]
        lat_ok = [x for x in rs if all(lat is not None for lat in x["latencies_s"])]
        spec_tot = {k: sum(x["spec"][k] for x in rs) for k in rs[0]["spec"]}
        entry = {
            "tps_rounds": tps, "tps": M.spread(tps),
            "speedup": M.speedup(tps, [M.tps(sum(x["tokens"]), x["wall_s"]) for x in base]),
            "per_request_tps": M.spread([M.per_request_tps(x["tokens"], x["latencies_s"]) for x in lat_ok])
            if lat_ok else None,
            "tokens_per_round": sum(rs[-1]["tokens"]),
            "greedy_vs_baseline": M.greedy_agreement(rs[-1]["token_ids"], base[-1]["token_ids"]),
            "token_ids": rs[-1]["token_ids"],
            "sedac": v.sedac.vllm_config(str(cfg.probe_for(v))) if v.sedac else None,
            "speculative": v.speculative.vllm_config() if v.speculative else None,
            "skip": _skip_delta(first_stats.get(v.name), rs[-1]["sedac_stats"])
            if v.sedac and v.sedac.mode != "soft" else None,
            "soft": _soft_stats(first_stats.get(v.name), rs[-1]["sedac_stats"])
            if v.sedac and v.sedac.mode == "soft" else None,
        }
        if v.speculative:
            entry["spec_decode"] = M.spec_decode(spec_tot["drafts"], spec_tot["draft_tokens"],
                                                 spec_tot["accepted"], v.speculative.num_speculative_tokens)
        out[v.name] = entry
    return out


def _derive(cfg: OfflineBenchConfig, results: dict[str, Any], hf_cfg) -> None:
    """MLP savings (FLOPs, weight bytes) from skip rates / soft counters and the model config.

    ``mlp_bytes_saved`` of each variant is the fraction of all MLP weight bytes not read per token as
    the vLLM engine reports it: whole-MLP skip = skip rate over the band layers x band layers / all
    layers; soft skip = the plugin's ``mlp_bytes_saved_fraction``; sedac off = 0.
    """
    import torch

    h, i, n = hf_cfg.hidden_size, hf_cfg.intermediate_size, hf_cfg.num_hidden_layers
    dbytes = torch.empty(0, dtype=getattr(torch, cfg.dtype)).element_size()
    results["mlp_cost_per_token_per_layer"] = M.mlp_cost(h, i, dbytes)
    for name, e in results["variants"].items():
        if e.get("sedac") is None:
            e["mlp_bytes_saved"] = 0.0
            continue
        soft = e.get("soft")
        if soft is not None:
            f = soft.get("mlp_bytes_saved_fraction")
            e["mlp_bytes_saved"] = f
            if f is not None:
                e["mlp_savings"] = M.soft_mlp_savings(f, n, h, i, dbytes)
            continue
        skip = e.get("skip")
        if not skip or "bands" not in skip:
            e["mlp_bytes_saved"] = None
            continue
        band_layers = sum(int(b.split("-")[1]) - int(b.split("-")[0]) + 1 for b in skip["bands"])
        rate = skip["all_band_layers"]["rate"]
        skip["all_layers_rate"] = M.whole_mlp_bytes_saved(rate, band_layers, n)
        e["mlp_bytes_saved"] = skip["all_layers_rate"]
        e["mlp_savings"] = M.mlp_savings(rate, band_layers, n, h, i, dbytes,
                                         step_skip_rate=rate if e["sedac"]["policy"] == "batch" else None)
