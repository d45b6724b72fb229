"""Teacher-forced quality of each sedac setting vs the full model, through the HF runtime.

For every distinct sedac setting of the matrix (probe, mode, policy, threshold; for soft skip:
family, level) the model runs teacher-forced over ``quality.n_sequences`` corpus chunks of
``quality.seq_len`` tokens with sedac installed (whole-MLP skip: :func:`sedac.runtime.hf.install`;
soft skip: :func:`sedac.runtime.hf_soft.install_soft` with the probe's soft parameters and table), and
once without (the baseline, which asserts that no skipper is installed). Per setting: perplexity
(exp of the mean next-token NLL over all predicted positions), its ratio to the baseline's, top-1
agreement with the baseline's argmax at every position, and **MLP weight bytes saved**: the
fraction of all MLP weight bytes (every layer, every token of the chunks) a per-token kernel need
not read. Whole-MLP skip: skipped token x layer MLP evaluations / all of them (= band skip rate x
band layers / all layers); soft skip: the soft runtime's own counter
(:meth:`sedac.runtime.hf_soft.HFSoftSkipper.bytes_saved`). Whole-MLP settings also report per-layer
skip rates, soft settings per-layer bytes saved. Sequences are processed in batches of equal length
(no padding), each from position 0, so dynamic thresholds restart per sequence exactly as in serving.
"""

from __future__ import annotations

from typing import Any

from sedac.bench import metrics as M
from sedac.bench.config import OfflineBenchConfig
from sedac.errors import SedacError


def setting_key(cfg: OfflineBenchConfig, v) -> str:
    s = v.sedac
    if s.mode == "soft":
        lvl = "certified" if s.soft_level is None else f"level {s.soft_level:g}"
        return f"{cfg.probe_for(v)}|soft|{s.soft_family}|{lvl}"
    thr = "certified" if s.threshold is None else f"{s.threshold:g}"
    return f"{cfg.probe_for(v)}|{s.mode}|{s.policy}|{thr}"


def _forward(model, chunks, batch: int):
    """Yield (logits [b, T, V], ids [b, T]) over the chunks."""
    import torch

    for i in range(0, len(chunks), batch):
        ids = torch.tensor(chunks[i:i + batch], dtype=torch.long, device=model.device)
        with torch.no_grad():
            yield model(input_ids=ids).logits.float(), ids


def evaluate(model, chunks, batch: int = 4, baseline_top1=None) -> dict[str, Any]:
    """NLL sum, token count, argmax ids (and agreement with ``baseline_top1`` if given)."""
    import torch

    nll, n, top1 = 0.0, 0, []
    for logits, ids in _forward(model, chunks, batch):
        lp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll += float(-lp.gather(-1, ids[:, 1:].unsqueeze(-1)).sum())
        n += ids[:, 1:].numel()
        top1.append(logits[:, :-1].argmax(-1).reshape(-1))
    top1 = torch.cat(top1)
    out = {"nll_sum": nll, "n_tokens": n, "ppl": M.perplexity(nll, n), "top1": top1}
    if baseline_top1 is not None:
        out["top1_agreement"] = float((top1 == baseline_top1).float().mean())
    return out


def teacher_forced_quality(cfg: OfflineBenchConfig, model_path: str) -> dict[str, Any]:
    """Quality of the baseline and of every sedac setting (keyed by variant name)."""
    from rich.progress import Progress

    from sedac.bench.prompts import corpus_chunks
    from sedac.models.loading import load_hf
    from sedac.probes import load_probe
    from sedac.adapter import adapt

    model, tok = load_hf(model_path, dtype=cfg.dtype, device="cpu")
    q = cfg.quality
    chunks = corpus_chunks(q.corpus, q.field, tok, q.n_sequences, q.seq_len)
    settings: dict[str, list[str]] = {}
    variants = {v.name: v for v in cfg.variants if v.sedac is not None}
    for name, v in variants.items():
        settings.setdefault(setting_key(cfg, v), []).append(name)
    out: dict[str, Any] = {"corpus": q.corpus, "n_sequences": len(chunks), "seq_len": q.seq_len,
                           "settings": {}, "variants": {}}
    with Progress(transient=True) as bar:
        task = bar.add_task("teacher-forced quality", total=1 + len(settings))
        if any("forward" in vars(m) for m in adapt(model).mlps):
            raise AssertionError("baseline quality pass: an MLP is wrapped (sedac installed)")
        base = evaluate(model, chunks)
        bar.advance(task)
        out["baseline"] = {"ppl": base["ppl"], "n_tokens": base["n_tokens"]}
        for key, names in settings.items():
            v = variants[names[0]]
            try:
                res = _setting_quality(model, load_probe(cfg.probe_for(v)), v.sedac, chunks, base)
            except SedacError as exc:  # e.g. an uncalibrated probe for a certified setting
                res = {"error": str(exc)}
            out["settings"][key] = res
            for n in names:
                out["variants"][n] = res
            bar.advance(task)
    return out


def _setting_quality(model, probe, spec, chunks, base) -> dict[str, Any]:
    """Quality and MLP bytes saved of one sedac setting (``spec``: a :class:`SedacSpec`) vs ``base``."""
    if spec.mode == "soft":
        return soft_quality(model, probe, spec.soft_family, spec.soft_level, chunks, base)
    from sedac.runtime.hf import install
    from sedac.runtime.policy import thresholds_from_probe

    skip_cfg = thresholds_from_probe(probe, spec.mode, spec.policy, spec.threshold)
    sk = install(model, probe, skip_cfg)
    try:
        r = evaluate(model, chunks, baseline_top1=base["top1"])
        per_layer = [M.skip_rate(int(s), int(e)) for s, e in zip(sk.skipped, sk.evaluated)]
        rates = sk.skip_rate()
    finally:
        sk.remove()
    all_layers = sum(per_layer) / len(per_layer)
    return {"ppl": r["ppl"], "ppl_ratio": r["ppl"] / base["ppl"], "top1_agreement": r["top1_agreement"],
            "skip_rate_band_layers": rates.get("all", 0.0), "skip_rate_bands": rates,
            "skip_rate_all_layers": all_layers, "per_layer_skip_rate": per_layer,
            "mlp_bytes_saved": all_layers, "per_layer_bytes_saved": per_layer}


def soft_quality(model, probe, family: str, level: float | None, chunks, base) -> dict[str, Any]:
    """Teacher-forced quality of a soft setting: the probe's certified ``family`` parameters, or an
    explicit uniform ``level`` (uncertified), served by :func:`sedac.runtime.hf_soft.install_soft`."""
    from sedac.runtime.hf_soft import install_soft
    from sedac.runtime.soft import soft_from_probe

    params, table = soft_from_probe(probe, family, level)
    with install_soft(model, params, table, probe=probe if params.family == "probe" else None) as sk:
        r = evaluate(model, chunks, baseline_top1=base["top1"])
        per_layer = [float(s) / int(e) if int(e) else 0.0 for s, e in zip(sk.saved, sk.evaluated)]
        saved = sk.bytes_saved()
    return {"ppl": r["ppl"], "ppl_ratio": r["ppl"] / base["ppl"], "top1_agreement": r["top1_agreement"],
            "mlp_bytes_saved": saved, "per_layer_bytes_saved": per_layer, "soft": params.to_dict(),
            "certified": level is None}
