"""``sedac bench online``: any OpenAI-compatible endpoint (sedac serve, plain vLLM, others).

For every concurrency level ``c``, ``requests_per_level`` streamed chat completions (greedy,
``max_tokens``) are sent by ``c`` concurrent async clients. Per request: TTFT = time from sending the
request to the first content chunk; inter-token latency ITL = (t_last - t_first) / (n_tokens - 1),
with n_tokens the server's ``usage.completion_tokens`` (``stream_options.include_usage``) or, if
absent, the number of content chunks. Aggregate TPS = all completion tokens / wall time of the
level; per-request TPS = mean of n_tokens / (t_last - t_send).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sedac.bench import metrics as M
from sedac.bench.config import OnlineBenchConfig
from sedac.errors import ConfigError


async def _one(client, model: str, messages, max_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    usage = None
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True})
    async for ev in stream:
        if ev.usage is not None:
            usage = ev.usage.completion_tokens
        if ev.choices and ev.choices[0].delta and ev.choices[0].delta.content:
            now = time.perf_counter()
            first = first or now
            last = now
            chunks += 1
    n = usage if usage is not None else chunks
    if first is None:
        first = last = time.perf_counter()
    return {"ttft_s": first - t0, "itl_s": (last - first) / (n - 1) if n > 1 else None,
            "tokens": n, "latency_s": last - t0}


async def _level(client, model, prompts, c: int, n_req: int, max_tokens: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(c)

    async def task(i):
        async with sem:
            return await _one(client, model, prompts[i % len(prompts)], max_tokens)

    t0 = time.perf_counter()
    reqs = await asyncio.gather(*(task(i) for i in range(n_req)))
    wall = time.perf_counter() - t0
    toks = [r["tokens"] for r in reqs]
    out = {"concurrency": c, "requests": n_req, "wall_s": wall, "tokens": sum(toks),
           "tps": M.tps(sum(toks), wall),
           "per_request_tps": M.per_request_tps(toks, [r["latency_s"] for r in reqs])}
    out.update(M.latency_stats([r["ttft_s"] for r in reqs], [r["itl_s"] for r in reqs if r["itl_s"] is not None]))
    return out


async def _run(cfg: OnlineBenchConfig, prompts) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key, timeout=cfg.timeout_s, max_retries=0)
    try:
        model = cfg.model
        if model is None:
            models = await client.models.list()
            if not models.data:
                raise ConfigError(f"base_url {cfg.base_url}: the endpoint serves no model")
            model = models.data[0].id
        await _one(client, model, prompts[0], 4)  # warm-up, not measured
        levels = [await _level(client, model, prompts, c, cfg.requests_per_level, cfg.max_tokens)
                  for c in cfg.concurrency]
        stats = None
        try:  # sedac serve exposes skip statistics at /sedac/stats; other servers need not
            import httpx

            base = cfg.base_url.rsplit("/v1", 1)[0]
            async with httpx.AsyncClient(timeout=10) as hc:
                r = await hc.get(f"{base}/sedac/stats")
            if r.status_code == 200:
                stats = r.json()
        except Exception:
            stats = None
        return {"model": model, "levels": levels, "sedac_stats": stats}
    finally:
        await client.close()


def run_online(cfg: OnlineBenchConfig) -> dict[str, Any]:
    """Benchmark the endpoint; returns the raw results dict."""
    import openai

    from sedac.bench.prompts import describe, prompt_messages
    from sedac.provenance import provenance, to_jsonable

    prompts = prompt_messages(cfg.prompts)
    try:
        res = asyncio.run(_run(cfg, prompts))
    except openai.APIConnectionError as exc:
        raise ConfigError(f"base_url {cfg.base_url}: cannot connect ({exc})") from None
    res.update({"label": cfg.label, "base_url": cfg.base_url, "prompts": describe(cfg.prompts),
                "config": to_jsonable(cfg), "provenance": provenance()})
    return res


def write_online_report(res: dict[str, Any], out_dir) -> None:
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, sort_keys=True, default=str))
    cols = ["concurrency", "tps", "per_request_tps", "ttft_median_s", "ttft_p90_s", "itl_median_s", "itl_p90_s"]
    md = [f"# sedac bench online — {res['label']} ({res['base_url']}, model {res['model']})", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    t = Table(title=f"online bench — {res['label']}")
    for c in cols:
        t.add_column(c)
    for lv in res["levels"]:
        vals = [str(lv["concurrency"])] + [f"{lv[c]:.3f}" for c in cols[1:]]
        md.append("| " + " | ".join(vals) + " |")
        t.add_row(*vals)
    (out / "results.md").write_text("\n".join(md) + "\n")
    Console().print(t)
