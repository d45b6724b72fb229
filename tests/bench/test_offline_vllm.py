"""A small offline bench on the tiny model (vllm), built-in prompts only.

Matrix: vanilla (baseline), sedac at the probe's *stored* (calibration-style) static/token threshold,
the same sedac setting with ngram speculative decoding, plus two variants that must be reported
unavailable (dynamic without certified parameters; suffix without arctic-inference).
"""

from __future__ import annotations

import importlib.util
import json
import statistics

import pytest

from sedac.bench.config import OfflineBenchConfig, from_dict

pytestmark = pytest.mark.vllm

N_PROMPTS, MAX_TOKENS = 3, 12
PROMPTS = {"source": "builtin", "n": N_PROMPTS, "chat": False}


@pytest.fixture(scope="module")
def stored_probe(tiny_llama, tmp_path_factory):
    """A random probe whose calibration metadata stores a static/token threshold (as `sedac calibrate`
    writes it) at the median probe score of the bench prompts, so that about half the tokens skip."""
    import torch

    from sedac.adapter import adapt
    from sedac.bench.config import PromptSet
    from sedac.bench.prompts import prompt_token_ids
    from sedac.models.loading import load_hf
    from sedac.probes import update_calibration
    from sedac.testing.probes import random_probe

    tmp = tmp_path_factory.mktemp("bench")
    model, tok = load_hf(str(tiny_llama), device="cpu")
    probe = random_probe(adapt(model).fingerprint, layer=1, bands=[(2, 3)], seed=3)
    with torch.no_grad():
        raw = torch.cat([probe.raw_scores(model(torch.tensor([p]), output_hidden_states=True).hidden_states[1][0])[:, 0]
                         for p in prompt_token_ids(from_dict(PromptSet, PROMPTS), tok)])
    mid = raw.sort().values[len(raw) // 2 - 1: len(raw) // 2 + 1].mean()  # between two scores: no ties
    score = float(torch.sigmoid(mid))
    path = probe.save(tmp / "random.safetensors")
    update_calibration(path, {"thresholds": {"static": {"token": {"2-3": score}}}}, out=tmp / "probe.safetensors")
    return {"tmp": tmp, "path": tmp / "probe.safetensors", "model": model, "score": score}


@pytest.fixture(scope="module")
def bench(tiny_llama, stored_probe):
    from sedac.bench.offline import run_offline
    from sedac.bench.report import write_report

    tmp = stored_probe["tmp"]
    ng = {"method": "ngram", "num_speculative_tokens": 3}
    cfg = from_dict(OfflineBenchConfig, {
        "kind": "bench_offline", "model": str(tiny_llama), "probe": str(stored_probe["path"]),
        "prompts": PROMPTS,
        "variants": [{"name": "vanilla"}, {"name": "sedac", "sedac": {}},
                     {"name": "ngram+sedac", "sedac": {}, "speculative": ng},
                     {"name": "sedac-dynamic", "sedac": {"mode": "dynamic"}},
                     {"name": "suffix", "speculative": {"method": "suffix"}}],
        "max_tokens": MAX_TOKENS, "warmup": 1, "repeats": 3, "max_num_seqs": 4,
        "quality": {"corpus": "builtin", "n_sequences": 2, "seq_len": 32},
        "out_dir": str(tmp / "out"),
    })
    res = run_offline(cfg)
    return res, write_report(res, cfg.out_dir)


def test_unavailable_variants_are_reported_with_their_reason(bench):
    res, _ = bench
    assert "calibrate" in res["unavailable"]["sedac-dynamic"]  # stored calibration has no dynamic parameters
    if importlib.util.find_spec("arctic_inference") is None:
        assert res["unavailable"]["suffix"].startswith("suffix decoding needs arctic-inference")
        assert set(res["variants"]) == {"vanilla", "sedac", "ngram+sedac"}
    else:
        assert "suffix" in res["variants"] and "suffix" not in res["unavailable"]


def test_speed_is_per_round_against_the_baseline(bench):
    res, _ = bench
    v = res["variants"]
    base = v["vanilla"]["tps_rounds"]
    for name, e in v.items():
        assert len(e["tps_rounds"]) == 3 and all(t > 0 for t in e["tps_rounds"])
        assert e["tps"]["min"] <= e["tps"]["median"] <= e["tps"]["max"]
        assert e["tokens_per_round"] == N_PROMPTS * MAX_TOKENS
        ratios = [a / b for a, b in zip(e["tps_rounds"], base)]
        assert e["speedup"]["median"] == pytest.approx(statistics.median(ratios)), name
    assert v["vanilla"]["skip"] is None and v["vanilla"]["sedac"] is None


def test_sedac_really_changes_the_served_outputs(bench):
    """The sedac variant runs with sedac on and is compared with the real (sedac-off) baseline."""
    res, _ = bench
    v = res["variants"]
    agree = v["sedac"]["greedy_vs_baseline"]
    assert agree["identical_fraction"] < 1.0  # ~half the tokens skip layers 2-3 of 4: outputs must move
    assert v["sedac"]["token_ids"] != v["vanilla"]["token_ids"]


def test_ngram_does_not_change_sedac_greedy_outputs(bench):
    """Speculative decoding is lossless for the same sedac setting: drafts are verified with the same
    per-token skip decisions as plain decoding."""
    res, _ = bench
    v = res["variants"]
    assert v["ngram+sedac"]["token_ids"] == v["sedac"]["token_ids"]
    assert v["ngram+sedac"]["greedy_vs_baseline"] == v["sedac"]["greedy_vs_baseline"]
    sd = v["ngram+sedac"]["spec_decode"]
    assert sd["drafts"] > 0 and sd["draft_tokens"] >= sd["drafts"]
    assert 0 <= sd["acceptance_rate"] <= 1 and 1 <= sd["mean_acceptance_length"] <= 4
    assert sd["trr"] == pytest.approx(sd["mean_acceptance_length"] / 4)


def test_stored_threshold_drives_served_decisions(bench, stored_probe):
    """The threshold stored in the probe is the one vLLM serves: the served skip counts equal those of
    the reference policy (HF runtime, thresholds read from the same probe) on the served tokens."""
    import torch
    from transformers import AutoTokenizer

    from sedac.bench.config import PromptSet
    from sedac.bench.prompts import prompt_token_ids
    from sedac.probes import load_probe
    from sedac.runtime.hf import install
    from sedac.runtime.policy import thresholds_from_probe

    res, _ = bench
    e = res["variants"]["sedac"]
    assert e["sedac"]["threshold"] is None  # the variant reads the stored threshold
    probe = load_probe(stored_probe["path"])
    sc = thresholds_from_probe(probe, mode="static", policy="token")
    assert sc.thresholds == [probe.raw_threshold(stored_probe["score"])]
    tok = AutoTokenizer.from_pretrained(res["model_path"])
    model = stored_probe["model"]
    skipped = evaluated = 0
    for p, gen in zip(prompt_token_ids(from_dict(PromptSet, PROMPTS), tok), e["token_ids"]):
        with torch.no_grad(), install(model, probe, sc) as sk:
            model(torch.tensor([p + gen[:-1]]))
        skipped += int(sk.skipped.sum())
        evaluated += int(sk.evaluated.sum())
    served = e["skip"]["all_band_layers"]  # accumulated over the 3 measured rounds
    assert 0.2 < skipped / evaluated < 0.8
    assert (served["skipped"], served["evaluated"]) == (3 * skipped, 3 * evaluated)


def test_quality_pass_uses_the_same_setting(bench):
    res, _ = bench
    q = res["quality"]
    assert "calibrate" in q["variants"]["sedac-dynamic"]["error"]
    s = q["variants"]["sedac"]
    assert s is q["variants"]["ngram+sedac"] or s == q["variants"]["ngram+sedac"]  # one setting, measured once
    assert 0 < s["skip_rate_band_layers"] < 1 and s["top1_agreement"] < 1.0 and s["ppl_ratio"] != 1.0
    assert s["per_layer_skip_rate"][0] == 0 and s["per_layer_skip_rate"][2] > 0
    assert q["baseline"]["ppl"] > 1
    sk = res["variants"]["sedac"]["skip"]
    assert sk["all_layers_rate"] == pytest.approx(sk["all_band_layers"]["rate"] * 2 / 4)
    assert res["variants"]["sedac"]["mlp_savings"]["flops_saved_per_token"] > 0


def test_report_files(bench):
    res, out = bench
    assert json.loads((out / "results.json").read_text())["baseline"] == "vanilla"
    md = (out / "results.md").read_text()
    assert "| vanilla |" in md and "| ngram+sedac |" in md and "sedac-dynamic" in md
    assert (out / "speed_quality.png").stat().st_size > 1000 and (out / "skip_per_layer.png").is_file()


def test_baseline_guard():
    from types import SimpleNamespace

    from sedac.bench.engine import _assert_sedac_off

    llm = SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(
        additional_config={"sedac": {"probe": "p"}})))
    with pytest.raises(AssertionError, match="baseline"):
        _assert_sedac_off(llm)
