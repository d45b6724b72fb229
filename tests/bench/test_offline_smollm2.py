"""Offline bench on the real default model (SmolLM2-135M), tiny settings: baseline vs ngram + sedac."""

from __future__ import annotations

import pytest

from sedac.bench.config import OfflineBenchConfig, from_dict

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_smollm2_offline(smollm2, tmp_path):
    from transformers import AutoConfig

    from sedac.adapter import fingerprint_from_config
    from sedac.bench.offline import run_offline
    from sedac.bench.report import markdown
    from sedac.testing.probes import random_probe

    probe = random_probe(fingerprint_from_config(AutoConfig.from_pretrained(smollm2)), layer=20,
                         bands=[(24, 29)]).save(tmp_path / "probe.safetensors")
    cfg = from_dict(OfflineBenchConfig, {
        "kind": "bench_offline", "model": str(smollm2), "probe": str(probe),
        "prompts": {"source": "builtin", "n": 2},
        "variants": [{"name": "vanilla"},
                     {"name": "ngram+sedac", "sedac": {"threshold": 0.5},
                      "speculative": {"method": "ngram", "num_speculative_tokens": 3}}],
        "max_tokens": 16, "warmup": 1, "repeats": 3, "max_num_seqs": 2,
        "quality": {"corpus": "builtin", "n_sequences": 2, "seq_len": 48}, "out_dir": str(tmp_path / "out"),
    })
    res = run_offline(cfg)
    v = res["variants"]
    assert res["model_fingerprint"]["num_layers"] == 30
    assert v["vanilla"]["tps"]["median"] > 0 and v["vanilla"]["skip"] is None
    # sedac (random probe, P(safe) >= 0.5 on layers 24-29) moves the served greedy outputs off the real baseline's
    assert v["ngram+sedac"]["token_ids"] != v["vanilla"]["token_ids"]
    assert v["ngram+sedac"]["greedy_vs_baseline"]["identical_fraction"] < 1.0
    sk = v["ngram+sedac"]["skip"]["bands"]["24-29"]
    assert 0 < sk["rate"] < 1 and sk["evaluated"] > 0
    assert v["ngram+sedac"]["mlp_savings"]["flops_saved_per_token"] > 0
    q = res["quality"]["variants"]["ngram+sedac"]
    assert 1 < res["quality"]["baseline"]["ppl"] < 1000
    assert q["ppl_ratio"] > 1.01 and 0.2 < q["top1_agreement"] < 0.99  # skipping costs quality, measurably
    assert q["per_layer_skip_rate"][23] == 0 and q["per_layer_skip_rate"][24] > 0  # only the band skips
    assert "ngram+sedac" in markdown(res)
