"""`sedac collect` from the command line: a one-line error, and a real run on SmolLM2 (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _sedac(*args, timeout=1200):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "sedac.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_layer_out_of_range_is_one_line(tiny_llama, tmp_path):
    r = _sedac("collect", "--out", str(tmp_path / "o"), "--model", str(tiny_llama), "--layers", "2,9")
    assert r.returncode == 2
    assert "error: --layers: layer 9 is out of range: valid probe layers are 0..4" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_help_names_vllm_limits():
    r = _sedac("collect", "--help")
    assert r.returncode == 0 and "computed with HF" in " ".join(r.stdout.split())


@pytest.mark.slow
def test_cli_generate_builtin_smollm2(smollm2, tmp_path):
    out = tmp_path / "c"
    r = _sedac("collect", "--out", str(out), "--dataset", "builtin", "--limit", "3", "--mode", "generate",
               "--new-tokens", "8", "--max-length", "128", "--layers", "10,20", "--skip-band", "20-27",
               "--batch-size", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["n_sequences"] == 3 and m["config"]["model"] == "smollm2-135m-instruct"
    from sedac.collect.shards import load_shard, open_shards

    (p,) = open_shards(out)[1]
    d = load_shard(p)
    assert d["hidden.10"].shape == (m["n_tokens"], 576) and d["hidden.20"].dtype.is_floating_point
    gen = (d["is_prompt"] == 0).sum().item()
    assert 3 <= gen <= 24 and d["is_prompt"].sum() > 3 * 10  # chat-rendered prompts + continuations
    # Skipping 8 late MLPs changes some top-1 but not most of the NLL (GUIDE §2: ~42% kept on text).
    keep = d["keep_top1.20-27"].float().mean().item()
    assert 0.05 < keep < 0.98
