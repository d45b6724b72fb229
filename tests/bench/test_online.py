"""Online bench against a running `sedac serve` (tiny model, sedac on with a forced threshold)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    import httpx

    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe

    tmp = tmp_path_factory.mktemp("online")
    fp = fingerprint_from_config(json.loads((tiny_llama / "config.json").read_text()))
    probe = random_probe(fp, layer=1, bands=[(2, 3)]).save(tmp / "probe.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp / "server.log", "w")
    cmd = [str(Path(sys.executable).with_name("sedac")), "serve", "--model", str(tiny_llama), "--probe", str(probe),
           "--threshold", "0.5", "--port", str(port), "--stats-interval", "0.2",
           "--", "--enforce-eager", "--max-model-len", "512"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 400
        while True:
            if proc.poll() is not None:
                pytest.fail("server exited:\n" + (tmp / "server.log").read_text()[-3000:])
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("server did not come up in 400 s")
            time.sleep(2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


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
