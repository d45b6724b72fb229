"""Server smoke test: `sedac serve` on loopback (tiny model, ngram speculative decoding on), openai client."""

import json
import os
import time

import pytest

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe
    from sedac.testing.server import sedac_server

    tmp = tmp_path_factory.mktemp("serve")
    fp = fingerprint_from_config(json.loads((tiny_llama / "config.json").read_text()))
    probe = random_probe(fp, layer=1, bands=[(2, 3)]).save(tmp / "probe.safetensors")
    env = dict(os.environ)
    env.pop("VLLM_PLUGINS", None)
    args = ["--model", str(tiny_llama), "--probe", str(probe), "--threshold", "0.5", "--speculative", "ngram",
            "--num-speculative-tokens", "3", "--stats-interval", "0.2", "--", "--enforce-eager", "--max-model-len", "512"]
    with sedac_server(args, tmp / "server.log", env=env) as base:
        yield base, str(tiny_llama)


def _stats(base, want_skipped=True, timeout=10.0):
    import httpx

    deadline = time.time() + timeout
    while True:
        st = httpx.get(f"{base}/sedac/stats", timeout=5).json()
        if not want_skipped or st["all"]["skipped"] > 0 or time.time() > deadline:
            return st
        time.sleep(0.3)


def test_chat_stream_stats_and_bad_request(server):
    import httpx
    from openai import OpenAI

    base, model = server
    client = OpenAI(base_url=f"{base}/v1", api_key="unused")
    msgs = [{"role": "user", "content": "hello hello hello"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1

    st = _stats(base)
    band = st["bands"]["2-3"]
    assert 0 < band["skipped"] < band["evaluated"] and 0 < band["rate"] < 1
    metrics = httpx.get(f"{base}/metrics", timeout=5).text
    assert "vllm:" in metrics  # vLLM's own metrics are still there
    line = next(ln for ln in metrics.splitlines() if ln.startswith('sedac_mlp_skipped_total{band="2-3"}'))
    assert float(line.split()[-1]) > 0

    bad = httpx.post(f"{base}/v1/chat/completions", json={"model": model, "messages": "not a list"}, timeout=30)
    assert 400 <= bad.status_code < 500
    r2 = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0)
    assert r2.choices[0].message.content is not None  # still serving
