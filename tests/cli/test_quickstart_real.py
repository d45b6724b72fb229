"""The real pipeline end to end through the CLI, nothing faked: `sedac quickstart` with
recipes/smollm2-135m/quickstart-mini.yaml on the tiny random model (collect -> train-probe -> calibrate ->
bench offline with 4 vLLM engines; a few minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(2400)]

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "quickstart-mini.yaml"


@pytest.fixture(scope="module")
def mini(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quickstart")
    recipe = {**yaml.safe_load(RECIPE.read_text()), "model": str(tiny_llama), "layer": 1, "band": "2-3"}
    (tmp / "mini.yaml").write_text(yaml.safe_dump(recipe))
    w = tmp / "qs"
    proc = subprocess.run([sys.executable, "-m", "sedac.cli", "quickstart", "--recipe", str(tmp / "mini.yaml"),
                           "--work-dir", str(w)], capture_output=True, text=True, timeout=2300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return w, proc, recipe


def test_every_step_ran_and_certified(mini):
    from sedac.probes import load_probe
    from sedac.runtime.policy import thresholds_from_probe

    w, _, recipe = mini
    summary = json.loads((w / "quickstart.json").read_text())
    assert [s["command"].split()[1] for s in summary["steps"]] == ["collect", "collect", "train-probe", "calibrate",
                                                                   "bench"]
    assert [s["exit_code"] for s in summary["steps"]] == [0] * 5 and summary["certified"] is True
    probe = load_probe(w / "probe.safetensors")
    cert = {c["name"]: c for c in probe.meta.calibration["certificates"]}["static-token"]
    assert cert["certified"] and cert["epsilon"] == recipe["epsilon"] and cert["upper_bound"] <= recipe["epsilon"]
    assert thresholds_from_probe(probe).thresholds == [probe.raw_threshold(cert["value"])]
    assert (w / "calibration" / "report.md").is_file()


def test_bench_served_the_certified_probe_on_heldout_prompts(mini):
    w, proc, recipe = mini
    summary = json.loads((w / "quickstart.json").read_text())
    res = json.loads((w / "report" / "results.json").read_text())
    v = res["variants"]
    assert set(v) == {"vanilla", "ngram", "sedac-certified", "ngram+sedac"} and not res["unavailable"]
    used = 6 + recipe["cal_sequences"]
    assert (res["prompts"]["source"], res["prompts"]["skip"]) == (recipe["cal_data"], used)
    assert res["prompts"]["rows"] == summary["split"]["bench"]["rows"] and res["n_prompts"] == recipe["bench_prompts"]
    sk = v["sedac-certified"]["skip"]["all_band_layers"]
    assert sk["evaluated"] > 0 and v["sedac-certified"]["sedac"]["threshold"] is None  # the stored threshold
    assert v["ngram"]["token_ids"] == v["vanilla"]["token_ids"]  # speculative decoding is lossless
    assert v["ngram+sedac"]["token_ids"] == v["sedac-certified"]["token_ids"]
    assert (w / "report" / "results.md").is_file() and "sedac-certified" in proc.stdout
