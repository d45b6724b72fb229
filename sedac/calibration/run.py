"""``sedac calibrate`` orchestration: measure risk over each policy's grid, certify with LTT, write.

Guarantee stated per certified policy (see :mod:`sedac.calibration.ltt`): with probability at least
``1 - delta`` over the draw of the calibration units, the mean per-unit risk (top-1 disagreement or
NLL-increase indicator vs the full model, teacher-forced, on sequences drawn like the calibration
data) of the certified setting is at most ``epsilon``. Units are sequences (token policies) or groups
of ``--batch-concurrency`` sequences (batch policy). The guarantee holds for each policy separately;
choosing the recommended default among policies afterwards is not covered (it would need a Bonferroni
split of ``delta`` over the policies).

Steps: (1) load model, probe, sequences; (2) full-model reference pass; (3) grid from the
grid-selection sequences; (4) per policy, one skipped forward per grid point over all units, stopping
early once the mean risk exceeds ``stop_factor * epsilon``; (5) split units into calibration/test,
LTT on the calibration part, realised risk on the test part, resampling check; (6) write thresholds
and certificates into the probe and the report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from sedac.calibration.bounds import min_epsilon, resolve_bound
from sedac.calibration.config import CalibrateConfig, check_certifiable
from sedac.calibration.ltt import certify, resampling_check, split_indices
from sedac.calibration.policies import dynamic_effective, grid_values, parse_policy, skip_config, threshold_entry
from sedac.calibration.soft import soft_params
from sedac.errors import CalibrationError
from sedac.progress import task_progress


def measure_policy(cfg, spec, model, parts, probe, seqs, full, raw_pool, ref, bar=None,
                   token: dict[str, Any] | None = None) -> dict[str, Any]:
    """Grid, risk matrix ``[n_units, G]`` and skip matrix for one policy (NaN after an early stop).

    Batch policy (unit = group of B = ``--batch-concurrency`` sequences): the served rule is the token
    rule on steps with < B real rows and all-or-nothing on steps with >= B rows, at the same
    threshold (:func:`sedac.runtime.policy.batch_rule`). A unit's risk is the larger of (a) its
    sequences' mean risk under the token rule (what requests see at concurrency < B: token decisions do
    not depend on the other rows) and (b) their mean risk when the B sequences run as concurrent
    decode steps (one step per position; :func:`~sedac.calibration.risk.measure` with ``unit_size``
    B). Bounding the mean of the max bounds both. ``skip`` is (b)'s skip fraction, ``skip_token`` (a)'s.
    ``token``: the same mode's token-policy measurement on the same grid, reused where measured.
    """
    from sedac.calibration.risk import measure

    batch = spec.policy == "batch"
    if batch:
        grid, below = batch_grid(spec, probe, raw_pool, cfg)
    else:
        grid = grid_values(spec, probe, raw_pool, cfg.grid_size, cfg.grid_min_skip, cfg.grid_max_skip)
    unit = cfg.batch_concurrency if batch else 1
    n_units = len(seqs) // unit
    R = np.full((n_units, len(grid)), np.nan)
    K = np.full((n_units, len(grid)), np.nan)
    Kt = np.full((n_units, len(grid)), np.nan)
    task = bar.add_task(f"{spec.name:14s}", total=len(grid)) if bar is not None else None
    kw = dict(batch_size=cfg.batch_size, risk=cfg.risk, nll_margin=cfg.nll_margin)
    for j, v in enumerate(grid):
        sc = skip_config(spec, probe, v, ref, cfg.gamma, cfg.prior_tokens)
        if not batch:
            R[:, j], K[:, j] = measure(model, parts, probe, seqs, full, sc, unit_size=1, **kw)
        else:
            tok_spec = parse_policy(f"{spec.mode}-token")
            sc_tok = skip_config(tok_spec, probe, below[j], ref, cfg.gamma, cfg.prior_tokens)
            off = [a - b for a, b in zip(_raw_thresholds(sc_tok), _raw_thresholds(sc))]
            sc = dataclasses.replace(sc, min_rows=unit, below_b_offset=off)
            rb, K[:, j] = measure(model, parts, probe, seqs, full, sc, unit_size=unit, **kw)
            k_tok = token["grid"].index(below[j]) if token is not None and below[j] in token["grid"] else None
            if k_tok is not None and not np.isnan(token["risk"][:, k_tok]).any():
                rt, kt = token["risk"][:, k_tok], token["skip"][:, k_tok]
            else:
                rt, kt = measure(model, parts, probe, seqs, full, sc_tok, unit_size=1, **kw)
            n_use = n_units * unit
            rt_g = np.asarray(rt[:n_use]).reshape(n_units, unit).mean(1)
            Kt[:, j] = np.asarray(kt[:n_use]).reshape(n_units, unit).mean(1)
            R[:, j] = np.maximum(rt_g, rb)
        if bar is not None:
            bar.advance(task)
        if cfg.stop_factor > 0 and R[:, j].mean() > cfg.stop_factor * cfg.epsilon:
            break
    widths = sum(b - a + 1 for a, b in probe.bands)
    out = {"grid": grid, "risk": R, "skip": K, "unit_size": unit, "bytes_factor": widths / parts.num_layers}
    if batch:
        out["skip_token"], out["below_b"] = Kt, below
    return out


def _raw_thresholds(sc) -> list[float]:
    return list(sc.thresholds) if sc.mode == "static" else [d.lam for d in sc.dynamic]


def and_pool(effective: list[np.ndarray], first: list[int], b: int) -> np.ndarray:
    """Scores of B concurrent requests' steps: per group of ``b`` consecutive grid sequences and per
    position scored in all of them, the minimum score over the group (a step passes iff its minimum
    does). ``effective[i]``: ``[n_i, nb]`` scores of sequence i, ``first[i]`` its first scored position."""
    out = []
    for g in range(0, len(effective) - b + 1, b):
        grp = effective[g: g + b]
        lo, hi = max(first[g: g + b]), min(len(e) - 1 for e in grp)
        if hi > lo:
            out.append(np.min(np.stack([e[lo:hi] for e in grp]), axis=0).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0)


def batch_grid(spec, probe, pools: tuple[np.ndarray, np.ndarray], cfg) -> tuple[list[float], list[float]]:
    """The batch policy's ordered grid of pairs: point j = (batch threshold v_j for steps of >= B rows,
    token threshold u_j below B), both placed on the grid-selection sequences so that each rule alone
    skips the target fraction f_j (u_j: quantile of single-token scores; v_j: of B-step minimum scores).
    Conservative -> aggressive in both coordinates; duplicates dropped."""
    from sedac.calibration.policies import target_fractions, to_score

    token_pool, step_pool = pools
    if step_pool.size == 0:
        raise CalibrationError(f"{spec.name}: the grid sequences form no group of {cfg.batch_concurrency} with a "
                               "common scored position; raise --grid-sequences")
    fr = target_fractions(cfg.grid_size, cfg.grid_min_skip, cfg.grid_max_skip)
    us = np.quantile(token_pool.astype(np.float64), 1.0 - fr)
    vs = np.quantile(step_pool.astype(np.float64), 1.0 - fr)
    conv = (lambda x: to_score(probe, float(x))) if spec.mode == "static" else float
    grid: list[float] = []
    below: list[float] = []
    for u, v in zip(us, vs):
        cu, cv = conv(u), conv(v)
        if grid and (cv > grid[-1] or cu > below[-1] or (cv == grid[-1] and cu == below[-1])):
            continue
        grid.append(cv)
        below.append(cu)
    return grid, below


def certify_policy(cfg, spec, m: dict[str, Any], n_tokens_per_unit: np.ndarray, data_fp: str, ref: float) -> dict:
    """LTT on the calibration split, held-out realised risk, resampling check -> certificate dict."""
    R, K, grid = m["risk"], m["skip"], m["grid"]
    rng = np.random.default_rng(cfg.seed + 1)
    cal, test = split_indices(R.shape[0], cfg.test_fraction, rng)
    bound = resolve_bound(cfg.bound, len(cal), cfg.epsilon, cfg.delta)  # a priori: n, eps, delta only
    res = certify(R[cal], cfg.epsilon, cfg.delta, bound)
    j = res.index
    col = lambda X, idx, k: float(np.mean(X[idx, k])) if len(idx) and not np.isnan(X[idx, k]).any() else None  # noqa: E731
    cert = {
        "policy": spec.policy, "mode": spec.mode, "name": spec.name, "epsilon": cfg.epsilon, "delta": cfg.delta,
        "risk": cfg.risk, "nll_margin": cfg.nll_margin if cfg.risk == "nll" else None, "bound": bound,
        "bound_requested": cfg.bound,
        "procedure": "Learn-then-Test, fixed-sequence testing (conservative -> aggressive)",
        "unit": "sequence" if m["unit_size"] == 1 else f"group of {m['unit_size']} concurrent sequences",
        "dtype": cfg.dtype, "data": cfg.data, "data_mode": cfg.mode,
        "new_tokens": cfg.new_tokens if cfg.mode == "generate" else None,
        "n_sequences": int(len(cal) * m["unit_size"]), "n_units": int(len(cal)),
        "n_tokens": int(n_tokens_per_unit[cal].sum()), "grid_size": len(grid),
        "grid_measured": int((~np.isnan(R).any(0)).sum()), "data_fingerprint": data_fp,
        "split": {"calibration_units": int(len(cal)), "test_units": int(len(test)), "seed": cfg.seed + 1,
                  "test_fraction": cfg.test_fraction},
        "certified": j is not None, "index": j,
        "value": float(grid[j]) if j is not None else None,
        "value_kind": {"static": "score threshold", "dynamic": "lam (raw space)", "soft": "soft level lam"}[spec.mode],
        "empirical_risk": res.risks[j] if j is not None else None,
        "upper_bound": res.ucbs[j] if j is not None else None,
        "p_value": res.pvalues[j] if j is not None else None,
        "skip_rate": col(K, cal, j) if j is not None else 0.0,
        "skip_kind": "MLP weight bytes not read (all layers)" if spec.mode == "soft" else "band MLP evaluations skipped",
        "mlp_bytes_saved": (col(K, cal, j) or 0.0) * m["bytes_factor"] if j is not None else 0.0,
        "mlp_bytes_saved_test": ((col(K, test, j) or 0.0) * m["bytes_factor"] if j is not None else 0.0)
        if len(test) else None,
        "test_risk": col(R, test, j) if j is not None else (0.0 if len(test) else None),
        "test_skip_rate": col(K, test, j) if j is not None else (0.0 if len(test) else None),
        "smallest_risk": float(np.nanmin(R.mean(0))) if R.size else None,
        "smallest_ucb": float(np.nanmin(res.ucbs)) if not np.isnan(res.ucbs).all() else None,
        "min_certifiable_epsilon": min_epsilon(len(cal), cfg.delta),
    }
    if spec.policy == "batch":
        cert["batch_concurrency"] = m["unit_size"]
        cert["served_rule"] = (f"steps with >= {m['unit_size']} real rows: a band skips for every row iff every "
                               f"row passes `value`; fewer rows: token rule at `below_b_value`; unit risk = "
                               f"max(token rule alone, {m['unit_size']} concurrent sequences)")
        cert["skip_rate_token_rule"] = col(m["skip_token"], cal, j) if j is not None else 0.0
        cert["below_b_value"] = float(m["below_b"][j]) if j is not None else None
    if spec.mode == "dynamic":
        cert["dynamic"] = {"ref": ref, "gamma": cfg.gamma, "prior_tokens": cfg.prior_tokens}
    if spec.mode == "soft":
        cert["soft"] = m["soft"] | ({"lam": float(grid[j])} if j is not None else {})
        cert["soft_alloc"] = m.get("soft_alloc") or {"rule": "uniform"}
    curve = {"grid": list(map(float, grid)), "below_b": m.get("below_b"), "risk_cal": res.risks, "ucb_cal": res.ucbs, "p_value": res.pvalues,
             "unit_risk": R.tolist(), "calibration_units": cal.tolist(),
             "skip_cal": [col(K, cal, k) for k in range(len(grid))],
             "risk_test": [col(R, test, k) for k in range(len(grid))],
             "skip_test": [col(K, test, k) for k in range(len(grid))],
             "bytes_factor": m["bytes_factor"],
             "risk_all": [col(R, np.arange(R.shape[0]), k) for k in range(len(grid))],
             "skip_all": [col(K, np.arange(R.shape[0]), k) for k in range(len(grid))]}
    resamp = (resampling_check(R, cfg.epsilon, cfg.delta, bound, cfg.test_fraction, cfg.resamples, cfg.seed + 2)
              if cfg.resamples else None)
    if resamp is not None:
        cert["resampling"] = {k: v for k, v in resamp.items() if k != "certified_index"}
    return {"certificate": cert, "curve": curve, "resampling": resamp}


def calibrate(cfg: CalibrateConfig) -> dict[str, Any]:
    """Run calibration; write the probe (if anything is certified) and the report. Returns the summary.

    Raises :class:`CalibrationError` (exit 3) when no policy certifies any grid point (the report is
    still written).
    """
    import torch

    from sedac.adapter import adapt
    from sedac.calibration.data import load_cal_sequences
    from sedac.calibration.report import write_report
    from sedac.calibration.risk import full_pass, n_scored_tokens
    from sedac.models.loading import load_hf
    from sedac.probes import load_probe, update_calibration
    from sedac.provenance import provenance

    probe = load_probe(cfg.probe)
    torch.manual_seed(cfg.seed)
    model, tok = load_hf(cfg.model, cfg.dtype, cfg.device)
    parts = adapt(model)
    probe.check_model(parts.fingerprint)
    specs = [parse_policy(p) for p in cfg.policies]
    with task_progress(cfg.progress) as bar:
        n_gen = cfg.grid_sequences + cfg.n_sequences
        t = bar.add_task("data          ", total=n_gen if cfg.mode == "generate" else 1)
        seqs, data_fp = load_cal_sequences(cfg, model, tok, progress=lambda k: bar.advance(t, k))
        bar.update(t, completed=bar.tasks[t].total)
        grid_seqs, units = seqs[: cfg.grid_sequences], seqs[cfg.grid_sequences:]
        t = bar.add_task("full model    ", total=len(seqs))
        full_grid = full_pass(model, parts, probe, grid_seqs, cfg.batch_size, lambda k: bar.advance(t, k))
        full = full_pass(model, parts, probe, units, cfg.batch_size, lambda k: bar.advance(t, k))
        pool = np.concatenate([f["raw"][s.first_scored: len(s.ids) - 1].reshape(-1).numpy()
                               for f, s in zip(full_grid, grid_seqs)])
        ref = float(pool.mean())
        pool_dyn = np.concatenate([
            dynamic_effective(f["raw"][: len(s.ids)].numpy(), ref, cfg.gamma, cfg.prior_tokens)
            [s.first_scored: len(s.ids) - 1].reshape(-1) for f, s in zip(full_grid, grid_seqs)])
        check_certifiable(cfg, len(units))  # before the expensive part
        firsts = [s.first_scored for s in grid_seqs]
        eff_static = [f["raw"][: len(s.ids)].numpy() for f, s in zip(full_grid, grid_seqs)]
        eff_dyn = [dynamic_effective(e, ref, cfg.gamma, cfg.prior_tokens) for e in eff_static]
        pools = {s.name: (pool if s.mode == "static" else pool_dyn) for s in specs}
        for s in specs:
            if s.policy == "batch":
                eff = eff_static if s.mode == "static" else eff_dyn
                pools[s.name] = (pools[s.name], and_pool(eff, firsts, cfg.batch_concurrency))
        measured: dict[str, Any] = {}
        soft_tab, soft_alloc = None, None
        for spec in sorted(specs, key=lambda s: s.policy != "token"):  # token first: batch reuses it
            if spec.mode == "soft":
                from sedac.calibration.soft import (allocated_table, measure_soft_policy, probe_score_stats,
                                                    soft_table)

                if soft_tab is None:
                    soft_tab, soft_src = soft_table(probe, model, grid_seqs)
                    if cfg.soft_alloc == "greedy":
                        soft_tab, soft_src, soft_alloc = allocated_table(cfg, probe, model, soft_tab, soft_src,
                                                                         grid_seqs, bar)
                sref, sscale = probe_score_stats(probe, full_grid, grid_seqs)
                m = measure_soft_policy(cfg, spec.policy, model, probe, units, full, soft_tab, sref, sscale, bar)
                m["soft"] = soft_params(spec.policy, 0.0, cfg, sref, sscale).to_dict()
                m["soft_alloc"] = soft_alloc
                measured[spec.name] = m
                continue
            measured[spec.name] = measure_policy(cfg, spec, model, parts, probe, units, full, pools[spec.name],
                                                 ref, bar, token=measured.get(f"{spec.mode}-token"))
    per_seq_tokens = np.array([n_scored_tokens([s]) for s in units])
    results = {}
    for spec in specs:
        m = measured[spec.name]
        u = m["unit_size"]
        n_units = len(units) // u
        tok_units = per_seq_tokens[: n_units * u].reshape(n_units, u).sum(1)
        results[spec.name] = certify_policy(cfg, spec, m, tok_units, data_fp, ref)
    certs = [r["certificate"] for r in results.values()]
    ok = [c for c in certs if c["certified"]]
    prov = provenance(cfg, model_fingerprint=parts.fingerprint, probe=str(cfg.probe), data_fingerprint=data_fp,
                      n_sequences_total=len(seqs), n_grid_sequences=len(grid_seqs),
                      n_scored_tokens=int(per_seq_tokens.sum()))
    summary: dict[str, Any] = {"certificates": certs, "provenance": prov, "out": None}
    if ok:
        thresholds: dict[str, dict] = {}
        for c in ok:
            if c["mode"] == "soft":  # soft: one parameter set for the whole model (not per band)
                thresholds.setdefault("soft", {})[c["policy"]] = c["soft"]
                continue
            entry = threshold_entry(parse_policy(c["name"]), c["value"], ref, cfg.gamma, cfg.prior_tokens)
            if c["policy"] == "batch":  # + the token threshold certified with it for steps below B rows
                entry = ({"threshold": entry} if c["mode"] == "static" else dict(entry)) | {"below_b": c["below_b_value"]}
            thresholds.setdefault(c["mode"], {})[c["policy"]] = {b: entry for b in probe.band_names}
        if any(c["policy"] == "batch" for c in ok):
            calibration_batch = {"batch_concurrency": cfg.batch_concurrency}
        else:
            calibration_batch = {}
        best = max(ok, key=lambda c: (c["mlp_bytes_saved"], c["mode"] == "static", c["policy"] == "token"))
        calibration = {"thresholds": thresholds, "certificates": certs, "epsilon": cfg.epsilon, "delta": cfg.delta,
                       "dtype": cfg.dtype,
                       "default": {"mode": best["mode"], "policy": best["policy"]},
                       "band_sharing": "one shared threshold for all bands", "provenance": prov,
                       **calibration_batch}
        out = update_calibration(cfg.probe, calibration, out=cfg.out, soft_table=soft_tab,
                                 soft_source=soft_src if soft_tab is not None else "")
        summary["out"] = str(out)
        summary["default"] = calibration["default"]
    report_dir = Path(cfg.report_dir) if cfg.report_dir else Path(cfg.out or cfg.probe).with_suffix("").with_name(
        Path(cfg.out or cfg.probe).stem + ".calibration")
    summary["report"] = write_report(report_dir, cfg, results, summary)
    if not ok:
        best = min((c["smallest_ucb"] for c in certs if c["smallest_ucb"] is not None), default=None)
        lo = min((c["smallest_risk"] for c in certs if c["smallest_risk"] is not None), default=None)
        raise CalibrationError(
            f"nothing certified at epsilon={cfg.epsilon} (delta={cfg.delta}, bound {certs[0]['bound']}, "
            f"{certs[0]['n_units']} calibration units): the smallest empirical risk on the grid is "
            f"{lo if lo is None else f'{lo:.4f}'} and the smallest achievable upper bound is "
            f"{best if best is None else f'{best:.4f}'} (with {certs[0]['n_units']} units no bound can certify "
            f"below {certs[0]['min_certifiable_epsilon']:.4f} even at zero risk); raise --epsilon, add --n-sequences or lower "
            f"--grid-min-skip (report: {summary['report']['markdown']})")
    return summary
