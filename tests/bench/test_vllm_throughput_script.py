"""scripts/vllm_throughput.py's bookkeeping (no engine): ratios, paired ratios, the printed table."""

import json
import subprocess
import sys
from pathlib import Path

from sedac.testing.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _script():
    return load_script("vllm_throughput")


def _run(schedule: str) -> dict:
    def cell(xs):
        return {"tok_s": sorted(xs)[len(xs) // 2], "min": min(xs), "max": max(xs), "n": len(xs), "all": xs,
                "skip_rate": 0.0}

    # round 2 is slow for both; "never" has one bad round of its own (round 1): paired 0.99 / 0.865 / 0.98
    plain = [100.0, 104.0, 50.0]
    return {"schedule": schedule, "batches": [1], "bands_done": [8],
            "plain": {"plain": {"b1": cell(plain)}},
            "band8": {"never": {"b1": cell([99.0, 90.0, 49.0])},
                      "always": {"b1": cell([1.2 * x for x in plain])}}}


def test_paired_ratio_is_the_median_of_same_round_ratios():
    vt = _script()
    r = _run("interleaved")
    vt.set_ratios(r)
    assert r["band8_never_paired_over_plain_b1"] == 0.98
    assert r["band8_never_over_plain_b1"] == 0.9  # unpaired: median 90 over median 100
    assert r["band8_always_paired_over_plain_b1"] == 1.2
    table = vt.format_table(r)
    assert "paired x plain" in table and "| sedac band8 never | 1 | 90.0 | 49.0-99.0 | 0.900 | 0.980 | 0.000 |" in table


def test_sequential_runs_have_no_paired_ratio():
    vt = _script()
    r = _run("sequential")
    vt.set_ratios(r)
    assert not any("paired" in k for k in r) and "paired" not in vt.format_table(r)


def test_table_option_reprints_a_finished_run(tmp_path):
    f = tmp_path / "ev.json"
    f.write_text(json.dumps({"card": "x", "throughput": _run("interleaved")}))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "vllm_throughput.py"), "--table", str(f)],
                         capture_output=True, text=True, check=True).stdout
    assert "| sedac band8 always | 1 | 120.0 |" in out and "1.200 | 1.200 |" in out


def test_never_firing_pairs_pool_over_bands_with_an_interval():
    vt = _script()
    r = _run("interleaved")
    r["bands_done"] = [8, 14]
    r["band14"] = {"never": {"b1": dict(r["band8"]["never"]["b1"], all=[101.0, 104.0, 50.0])},
                   "always": r["band8"]["always"]}
    vt.set_ratios(r)
    pn = r["never_pooled_paired_over_plain_b1"]
    # pairs: 0.99, 0.865, 0.98 (band 8) and 1.01, 1.0, 1.0 (band 14): median of six = (0.99 + 1.0) / 2
    assert pn["pairs"] == 6 and pn["median"] == 0.995
    assert 0.865 <= pn["ci90"][0] <= pn["median"] <= pn["ci90"][1] <= 1.01 and pn["ci90"][0] < pn["ci90"][1]
    assert "all bands pooled (6 same-round pairs): paired x plain 0.995" in vt.format_table(r)
    q = _run("sequential")
    vt.set_ratios(q)
    assert not any(k.startswith("never_pooled") for k in q)
