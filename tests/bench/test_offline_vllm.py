"""A small offline bench on the tiny model (vllm): interleaved rounds, sedac, ngram, quality, report files."""

from __future__ import annotations

import json

import pytest

from sedac.bench.config import OfflineBenchConfig, from_dict

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def bench(tiny_llama, shared_data, tmp_path_factory):
    from sedac.adapter import fingerprint_from_config
    from sedac.bench.offline import run_offline
    from sedac.bench.report import write_report
    from sedac.testing.probes import random_probe

    tmp = tmp_path_factory.mktemp("bench")
    fp = fingerprint_from_config(json.loads((tiny_llama / "config.json").read_text()))
    probe = random_probe(fp, layer=1, bands=[(2, 3)]).save(tmp / "probe.safetensors")
    ng = {"method": "ngram", "num_speculative_tokens": 3}
    prompts = tmp / "prompts.jsonl"  # repetitive text, so that ngram lookup finds drafts
    prompts.write_text("".join(json.dumps({"prompt": f"{w} " * 12}) + "\n" for w in ("abc", "hello", "xyz")))
    cfg = from_dict(OfflineBenchConfig, {
        "kind": "bench_offline", "model": str(tiny_llama), "probe": str(probe),
        "prompts": {"source": str(prompts), "n": 3, "chat": False},
        "variants": [{"name": "vanilla"}, {"name": "ngram+sedac", "sedac": {"threshold": 0.5}, "speculative": ng},
                     {"name": "sedac-dynamic", "sedac": {"mode": "dynamic"}},
                     {"name": "suffix", "speculative": {"method": "suffix"}}],
        "max_tokens": 12, "warmup": 1, "repeats": 3, "max_num_seqs": 4,
        "quality": {"corpus": str(shared_data / "wikitext-2" / "valid.txt"), "n_sequences": 2, "seq_len": 32},
        "out_dir": str(tmp / "out"),
    })
    res = run_offline(cfg)
    return res, write_report(res, cfg.out_dir)


def test_speed_rounds_and_baseline(bench):
    res, _ = bench
    v = res["variants"]
    assert set(v) == {"vanilla", "ngram+sedac"}
    assert "calibrate" in res["unavailable"]["sedac-dynamic"]  # random probe: no certified dynamic parameters
    assert "suffix" in res["unavailable"] or "suffix" in v
    for e in v.values():
        assert len(e["tps_rounds"]) == 3 and all(t > 0 for t in e["tps_rounds"])
        assert e["tps"]["min"] <= e["tps"]["median"] <= e["tps"]["max"]
        assert e["tokens_per_round"] == 3 * 12
    assert v["vanilla"]["speedup"]["median"] == 1.0 and v["vanilla"]["skip"] is None
    assert v["vanilla"]["greedy_vs_baseline"]["identical_fraction"] == 1.0


def test_sedac_skips_and_costs_quality(bench):
    res, _ = bench
    for name in ("ngram+sedac",):
        sk = res["variants"][name]["skip"]
        assert 0 < sk["bands"]["2-3"]["rate"] < 1
        assert sk["all_layers_rate"] == pytest.approx(sk["all_band_layers"]["rate"] * 2 / 4)
        assert res["variants"][name]["mlp_savings"]["flops_saved_per_token"] > 0
    assert "calibrate" in res["quality"]["variants"]["sedac-dynamic"]["error"]  # random probe: uncertified
    q = res["quality"]["variants"]["ngram+sedac"]
    assert 0 < q["skip_rate_band_layers"] < 1 and q["top1_agreement"] < 1.0
    assert q["per_layer_skip_rate"][0] == 0 and q["per_layer_skip_rate"][2] > 0
    assert res["quality"]["baseline"]["ppl"] > 1


def test_spec_decode_metrics(bench):
    res, _ = bench
    sd = res["variants"]["ngram+sedac"]["spec_decode"]
    assert sd["drafts"] > 0 and sd["draft_tokens"] >= sd["drafts"]
    assert 0 <= sd["acceptance_rate"] <= 1 and 1 <= sd["mean_acceptance_length"] <= 4
    assert sd["trr"] == pytest.approx(sd["mean_acceptance_length"] / 4)


def test_report_files(bench):
    res, out = bench
    assert json.loads((out / "results.json").read_text())["baseline"] == "vanilla"
    md = (out / "results.md").read_text()
    assert "| vanilla |" in md and "ngram+sedac" in md
    assert (out / "speed_quality.png").stat().st_size > 1000 and (out / "skip_per_layer.png").is_file()


def test_baseline_guard():
    from types import SimpleNamespace

    from sedac.bench.engine import _assert_sedac_off

    llm = SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(
        additional_config={"sedac": {"probe": "p"}})))
    with pytest.raises(AssertionError, match="baseline"):
        _assert_sedac_off(llm)
