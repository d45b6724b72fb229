"""Online bench against a running `sedac serve` (tiny model, sedac on with a forced threshold)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe
    from sedac.testing.server import sedac_server

    tmp = tmp_path_factory.mktemp("online")
    fp = fingerprint_from_config(json.loads((tiny_llama / "config.json").read_text()))
    probe = random_probe(fp, layer=1, bands=[(2, 3)]).save(tmp / "probe.safetensors")
    args = ["--model", str(tiny_llama), "--probe", str(probe), "--threshold", "0.5", "--stats-interval", "0.2",
            "--", "--enforce-eager", "--max-model-len", "512"]
    with sedac_server(args, tmp / "server.log") as base:
        yield base


def test_online_levels(server, tmp_path):
    from sedac.bench.config import OnlineBenchConfig, PromptSet
    from sedac.bench.online import run_online, write_online_report

    cfg = OnlineBenchConfig(base_url=f"{server}/v1", prompts=PromptSet(n=3), concurrency=[1, 3],
                            requests_per_level=3, max_tokens=8, out_dir=str(tmp_path / "out"))
    res = run_online(cfg)
    assert [lv["concurrency"] for lv in res["levels"]] == [1, 3]
    for lv in res["levels"]:
        assert lv["tokens"] == 3 * 8 and lv["tps"] > 0
        assert 0 < lv["ttft_median_s"] <= lv["ttft_p90_s"] and lv["itl_median_s"] > 0
    assert res["sedac_stats"]["all"]["skipped"] > 0  # sedac serve's skip counters are visible
    write_online_report(res, cfg.out_dir)
    assert "| 3 |" in (tmp_path / "out" / "results.md").read_text()


def test_unreachable_endpoint_is_a_clear_error():
    from sedac.bench.config import OnlineBenchConfig, PromptSet
    from sedac.bench.online import run_online
    from sedac.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot connect"):
        run_online(OnlineBenchConfig(base_url="http://127.0.0.1:9/v1", prompts=PromptSet(n=1), timeout_s=5))
