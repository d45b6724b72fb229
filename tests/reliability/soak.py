"""Harness for the server soak test: tiny model + random probe, `sedac serve` on loopback, load, RSS.

Everything binds 127.0.0.1 only; every loop is bounded (request counts, deadlines).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
MODEL_NAME = "tiny"
MAX_MODEL_LEN = 4096  # room for the long prompts (the tiny tokenizer is byte-level: 1 character = 1 token)
LONG_PROMPT = (2100, 3000)  # characters: above vLLM's 2,048-token prefill chunk


def make_model_and_probe(workdir: Path, layer: int = 1, band: tuple[int, int] = (2, 3)) -> tuple[Path, Path, float]:
    """Tiny Llama + a random probe; threshold = the median probe score over random prompts (HF, fp32).

    Returns (model dir, probe path, score threshold); about half of the prompt tokens score above it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe
    from sedac.testing.tiny import make_tiny_model

    model_dir = make_tiny_model(workdir / "model", arch="llama")
    cfg_path = model_dir / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "max_position_embeddings": MAX_MODEL_LEN}))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    probe = random_probe(fingerprint_from_config(model.config), layer=layer, bands=[band], seed=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 259, (8, 64), generator=g)
    with torch.no_grad():
        h = model(ids, output_hidden_states=True).hidden_states[layer].reshape(-1, model.config.hidden_size)
    threshold = float(probe.scores(h)[:, 0].median())
    path = probe.save(workdir / "probe.safetensors")
    return model_dir, path, threshold


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def serve_argv(model_dir: Path, probe: Path | None, threshold: float | None, port: int) -> list[str]:
    argv = [sys.executable, "-m", "sedac.cli", "serve", "--model", str(model_dir), "--host", HOST,
            "--port", str(port), "--stats-interval", "0.5"]
    if probe is not None:
        argv += ["--probe", str(probe), "--threshold", repr(threshold)]
    return argv + ["--", "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--max-num-seqs", "32",
                   "--served-model-name", MODEL_NAME, "--disable-uvicorn-access-log",
                   # a small KV cache (256 blocks) that the first requests touch entirely: later RSS growth is a leak,
                   # not the 1 GiB cache being paged in block by block
                   "--num-gpu-blocks-override", "256"]


def start_server(argv: list[str], log_path: Path, timeout_s: float = 300) -> subprocess.Popen:
    """Start the server, wait until GET /health answers 200 (bounded); raise with the log tail otherwise."""
    import httpx

    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    port = argv[argv.index("--port") + 1]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(proc)
    tail = log_path.read_bytes()[-4000:].decode(errors="replace")
    raise RuntimeError(f"server did not become healthy in {timeout_s}s (rc={proc.returncode}):\n{tail}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (started with start_new_session), then SIGKILL if needed."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def tree_rss(pid: int) -> int:
    """Resident set size (bytes) of a process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class RssSampler:
    """Samples :func:`tree_rss` every ``interval_s`` in a thread; ``samples`` = [(t, bytes)]."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        self.pid, self.interval_s, self.samples = pid, interval_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), tree_rss(self.pid)))
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def second_half(samples: list[tuple[float, int]], t0: float, t1: float) -> tuple[int, int, list[int]]:
    """RSS over the second half of ``[t0, t1]``: (start, end, samples), start and end each robust to one noisy
    sample (second smallest of the first four, second largest of the last four)."""
    half = [r for t, r in samples if t >= t0 + (t1 - t0) / 2]
    return sorted(half[:4])[1], sorted(half[-4:])[-2], half


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    done_times: list[float] = field(default_factory=list)
    seeded: int = 0  #: requests sent with `seed` (temperature 0.8)
    long_prompts: int = 0  #: requests whose prompt is longer than LONG_PROMPT[0] characters
    seeded_long: int = 0


def _request(rng: random.Random, max_tokens_max: int) -> tuple[str, dict, bool]:
    chat, stream = rng.random() < 0.5, rng.random() < 0.5
    n = rng.randrange(*LONG_PROMPT) if rng.random() < 0.03 else rng.randrange(1, 200)
    text = "".join(rng.choice("abcdefghij klmnopqrstuvwxyz.,") for _ in range(n))
    body = {"model": MODEL_NAME, "max_tokens": rng.randint(1, max_tokens_max), "temperature": rng.choice([0.0, 0.8]),
            "ignore_eos": rng.random() < 0.7,
            "stream": stream}
    if rng.random() < 0.25:  # seeded sampling: on vllm-cpu 0.32 this kills the engine if its prefill is chunked
        body.update(seed=rng.randrange(2**31), temperature=0.8)  # (sedac serve turns chunked prefill off on CPU)
    if stream:
        body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
        return "/v1/chat/completions", body, stream
    body["prompt"] = text
    return "/v1/completions", body, stream


async def _one(client, path: str, body: dict, stream: bool) -> int:
    """Send one request; return completion tokens (from usage); raise on any failure."""
    if not stream:
        r = await client.post(path, json=body)
        r.raise_for_status()
        data = r.json()
        assert data["choices"], data
        return int(data["usage"]["completion_tokens"])
    usage, done = None, False
    async with client.stream("POST", path, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            usage = chunk.get("usage") or usage
    assert done and usage, "stream ended without [DONE] or usage"
    return int(usage["completion_tokens"])


async def run_load(base_url: str, n: int, concurrency: int, seed: int = 0, max_tokens_max: int = 16,
                   timeout_s: float = 120) -> LoadResult:
    """``n`` random requests (chat/completions x stream/non-stream), at most ``concurrency`` in flight."""
    import httpx

    rng = random.Random(seed)
    reqs = [_request(rng, max_tokens_max) for _ in range(n)]
    res = LoadResult()
    for _, body, _ in reqs:
        text = body.get("prompt") or body["messages"][0]["content"]
        seeded, long = "seed" in body, len(text) >= LONG_PROMPT[0]
        res.seeded, res.long_prompts, res.seeded_long = res.seeded + seeded, res.long_prompts + long, \
            res.seeded_long + (seeded and long)
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        async def go(i, path, body, stream):
            async with sem:
                try:
                    tokens = await _one(client, path, body, stream)  # (not `+= await`: lost updates)
                    res.completion_tokens += tokens
                    res.ok += 1
                    res.done_times.append(time.monotonic())
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                    res.failures.append(f"request {i} {path} stream={stream}: {type(exc).__name__}: {exc}")
        await asyncio.gather(*(go(i, *r) for i, r in enumerate(reqs)))
    return res


async def disconnect_mid_stream(base_url: str, n: int, seed: int = 1) -> int:
    """Open ``n`` long streams, read a few chunks, drop the connection. Returns how many got chunks."""
    import httpx

    got = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        async def one(i):
            nonlocal got
            body = {"model": MODEL_NAME, "prompt": "abc " * (i + 1), "max_tokens": 200, "stream": True,
                    "temperature": 0.8, "ignore_eos": True}
            async with client.stream("POST", "/v1/completions", json=body) as r:
                r.raise_for_status()
                k = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        k += 1
                    if k >= 3:
                        got += 1
                        break  # leaving the context manager closes the connection mid-stream
        await asyncio.gather(*(one(i) for i in range(n)))
    return got


BAD_REQUESTS = [
    ("negative max_tokens", "/v1/completions", {"model": MODEL_NAME, "prompt": "hi", "max_tokens": -1}),
    ("negative max_tokens (chat)", "/v1/chat/completions",
     {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}),
    ("prompt longer than max_model_len", "/v1/completions",
     {"model": MODEL_NAME, "prompt": "a" * (MAX_MODEL_LEN * 4), "max_tokens": 4}),
    ("max_tokens beyond max_model_len", "/v1/completions",
     {"model": MODEL_NAME, "prompt": "hi", "max_tokens": MAX_MODEL_LEN * 10}),
    ("unknown model", "/v1/completions", {"model": "no-such-model", "prompt": "hi", "max_tokens": 4}),
    ("missing prompt", "/v1/completions", {"model": MODEL_NAME, "max_tokens": 4}),
    ("wrong type", "/v1/chat/completions", {"model": MODEL_NAME, "messages": "not a list"}),
    ("invalid JSON", "/v1/completions", b'{"model": "tiny", "prompt": '),
    ("JSON array body", "/v1/completions", b"[1, 2, 3]"),
]


async def bad_requests(base_url: str) -> dict[str, int]:
    """Send every malformed request; return name -> HTTP status."""
    import httpx

    out = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for name, path, body in BAD_REQUESTS:
            if isinstance(body, bytes):
                r = await client.post(path, content=body, headers={"content-type": "application/json"})
            else:
                r = await client.post(path, json=body)
            out[name] = r.status_code
    return out
