"""Collect throughput vs plain forwards, interleaved in one run (median of repeats).

    python -m sedac.collect.bench_throughput [--model smollm2-135m-instruct] [--batch 4] [--seq 512]
        [--layer 20] [--band 20-27] [--repeats 5] [--json out.json]

Each repeat times, back to back on the same random token batch: a plain forward (full logits), a
forward with the band's MLPs skipped (the extra forward a band costs), ``token_features`` with one
probe layer and no band, and with one band. Overheads are ratios of medians:
``collect_no_band / plain`` and ``collect_band / (plain + skipped)`` (the forwards it must run) and
``collect_band / (2 * plain)`` (the budget in the issue: <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv: list[str] | None = None) -> dict:
    import torch

    from sedac.adapter import adapt, parse_band
    from sedac.collect import hf as H
    from sedac.models.loading import load_hf
    from sedac.runtime.hf import install
    from sedac.runtime.policy import SkipConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("--band", default="20-27")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--random-smollm2", action="store_true",
                    help="SmolLM2-135M-shaped Llama with random N(0, 0.02) weights (for machines without the weights)")
    a = ap.parse_args(argv)

    if a.random_smollm2:
        model = _random_smollm2().to(a.device)
        pad_id = 2
    else:
        model, tok = load_hf(a.model, device=a.device)
        pad_id = tok.pad_token_id
    parts = adapt(model)
    band = parse_band(a.band, parts.num_layers)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, parts.fingerprint["vocab_size"], (a.batch, a.seq), generator=g).to(a.device)
    seqs = ids.tolist()
    mask = torch.ones_like(ids)

    def sync():
        if ids.is_cuda:
            torch.cuda.synchronize()
    n_tok = a.batch * a.seq

    @torch.no_grad()
    def plain():
        model(input_ids=ids, attention_mask=mask, use_cache=False).logits.sum()
        sync()

    @torch.no_grad()
    def skipped():
        with install(model, H.band_probe(parts.fingerprint, band), SkipConfig(mode="always")):
            model(input_ids=ids, attention_mask=mask, use_cache=False).logits.sum()
        sync()

    runs = {
        "plain": plain,
        "skipped": skipped,
        "collect_no_band": lambda: H.token_features(model, parts, seqs, [a.layer], [], pad_id),
        "collect_band": lambda: H.token_features(model, parts, seqs, [a.layer], [band], pad_id),
    }
    plain()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(a.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        print(f"repeat {r + 1}/{a.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "batch": a.batch, "seq": a.seq, "layer": a.layer, "band": list(band), "repeats": a.repeats,
        "threads": torch.get_num_threads(), "device": a.device, "random_weights": a.random_smollm2,
        "median_s": med, "spread_s": {k: [min(v), max(v)] for k, v in times.items()},
        "tokens_per_s": {k: n_tok / v for k, v in med.items()},
        "ratio_no_band_vs_plain": med["collect_no_band"] / med["plain"],
        "ratio_band_vs_plain_plus_skipped": med["collect_band"] / (med["plain"] + med["skipped"]),
        "ratio_band_vs_2plain": med["collect_band"] / (2 * med["plain"]),
    }
    print(f"{'run':18s} {'median s':>9s} {'min-max s':>13s} {'tok/s':>8s}")
    for k in runs:
        lo, hi = res["spread_s"][k]
        print(f"{k:18s} {med[k]:9.2f} {lo:6.2f}-{hi:<6.2f} {res['tokens_per_s'][k]:8.0f}")
    for k in ("ratio_no_band_vs_plain", "ratio_band_vs_plain_plus_skipped", "ratio_band_vs_2plain"):
        print(f"{k}: {res[k]:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


def _random_smollm2():
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                      max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2)
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0, 0.02) if "norm" in name else p.normal_(0.0, 0.02)
    return model


if __name__ == "__main__":
    main()
