"""Determinism: same seed, same inputs, SOURCE_DATE_EPOCH set -> byte-identical artefacts.

Runs `sedac collect`, `sedac train-probe` and `sedac calibrate` on the tiny model twice, each command in
a fresh process, and compares the bytes of every file produced. Both runs happen in the same working
directory (moved aside after the first run): artefacts record resolved absolute paths as provenance
(train-probe: the shard folder), which would otherwise differ by design.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _pipeline(cwd: Path, model: Path, corpus: Path) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", PYTHONHASHSEED="0")
    steps = [
        ["collect", "--model", model, "--dataset", corpus, "--out", "shards", "--layers", "1", "--skip-band", "2-3",
         "--max-length", "32", "--shard-tokens", "128", "--seed", "3"],
        ["train-probe", "--data", "shards", "--layer", "1", "--out", "probe.safetensors", "--max-epochs", "2",
         "--batch-size", "64", "--seed", "3", "--no-progress"],
        ["calibrate", "--probe", "probe.safetensors", "--model", model, "--data", corpus, "--out", "cal.safetensors",
         "--n-sequences", "24", "--grid-sequences", "2", "--max-length", "32", "--grid-size", "4", "--resamples", "5",
         "--epsilon", "0.5", "--seed", "3"],
    ]
    for args in steps:
        r = subprocess.run([sys.executable, "-m", "sedac.cli", *map(str, args)], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, f"sedac {args[0]} failed ({r.returncode}):\n{r.stderr[-3000:]}"


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_pipeline_is_byte_identical(tiny_llama, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(WORDS[i % 12:] + WORDS[:i % 12]) + f" number {i}."}) + "\n"
                              for i in range(24)))
    runs = []
    for name in ("a", "b"):
        work = tmp_path / "work"
        work.mkdir()
        _pipeline(work, tiny_llama, corpus)
        work.rename(tmp_path / name)
        runs.append(_files(tmp_path / name))
    a, b = runs
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for must in ("shards/manifest.json", "probe.safetensors", "cal.safetensors"):
        assert must in a, f"{must} was not produced: {sorted(a)}"
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, f"artefacts differ between identical runs: {differ}"
