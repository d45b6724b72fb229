"""The real pipeline end to end through the CLI: `sedac quickstart --recipe recipes/smollm2-135m/quickstart-mini.yaml`
(collect -> train-probe -> calibrate -> bench offline on SmolLM2, nothing faked; a few minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "quickstart-mini.yaml"


@pytest.fixture(scope="module")
def mini(smollm2, tmp_path_factory):
    w = tmp_path_factory.mktemp("quickstart") / "qs"
    proc = subprocess.run([sys.executable, "-m", "sedac.cli", "quickstart", "--recipe", str(RECIPE),
                           "--work-dir", str(w)], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return w, proc


def test_every_step_ran_and_certified(mini):
    from sedac.probes import load_probe
    from sedac.runtime.policy import thresholds_from_probe

    w, _ = mini
    summary = json.loads((w / "quickstart.json").read_text())
    assert [s["exit_code"] for s in summary["steps"]] == [0] * 6 and summary["certified"] is True
    probe = load_probe(w / "probe.safetensors")
    cert = {c["name"]: c for c in probe.meta.calibration["certificates"]}["static-token"]
    assert cert["certified"] and cert["epsilon"] == 0.2 and cert["upper_bound"] <= 0.2
    assert thresholds_from_probe(probe).thresholds == [probe.raw_threshold(cert["value"])]
    assert (w / "calibration" / "report.md").is_file()


def test_bench_served_the_certified_probe_on_heldout_prompts(mini):
    w, proc = mini
    summary = json.loads((w / "quickstart.json").read_text())
    res = json.loads((w / "report" / "results.json").read_text())
    v = res["variants"]
    assert set(v) == {"vanilla", "ngram", "sedac-certified", "ngram+sedac"} and not res["unavailable"]
    assert res["prompts"]["source"] == "builtin-tasks" and res["prompts"]["skip"] == 6 + 40
    assert res["prompts"]["rows"] == summary["split"]["bench"]["rows"] and res["n_prompts"] == 4
    sk = v["sedac-certified"]["skip"]["all_band_layers"]
    assert sk["evaluated"] > 0 and v["sedac-certified"]["sedac"]["threshold"] is None  # the stored threshold
    assert v["ngram"]["token_ids"] == v["vanilla"]["token_ids"]  # speculative decoding is lossless
    assert v["ngram+sedac"]["token_ids"] == v["sedac-certified"]["token_ids"]
    assert (w / "report" / "results.md").is_file() and "sedac-certified" in proc.stdout
