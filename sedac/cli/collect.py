"""``sedac collect``: per-token hidden states and skip labels for probe training."""

from __future__ import annotations

from typing import Optional

import typer

_HELP = """Collect per-token training data for probes: hidden states at --layers, the full model's
next-token entropy/top-1/NLL and, per --skip-band, counterfactual labels (top-1 kept, NLL change, KL) from
one extra teacher-forced forward with that band's MLPs skipped for every token. Always records per-layer
magnitude histograms of the MLP inputs (soft_hist.safetensors, for the soft-skip threshold table) and,
per --soft-level s, the same labels from one extra forward with soft skip at level s in every layer.
Output: sharded safetensors + manifest.json in --out (format: docs/collect.md). Resumable (--resume,
default).

Backends: `hf` (default; everything in HF transformers, CPU or GPU). `vllm`: hidden states are captured
inside the vLLM worker (prefill-only, eager); entropy, top-1, NLL and the band labels cannot come from
vLLM cheaply (they need full-vocabulary logits of every position and a forward with MLPs skipped), so
they are computed with HF on the same tokens in the same run."""


def register(app: typer.Typer) -> None:
    @app.command("collect", help=_HELP)
    def collect_cmd(
        out: str = typer.Option(..., "--out", help="Output folder (shards + manifest.json)."),
        model: Optional[str] = typer.Option(None, "--model", help="Model alias, HF folder or hub id (default: embedded SmolLM2)."),
        dataset: str = typer.Option("builtin", "--dataset", help="'builtin' (70 hand-written prompts), 'builtin-tasks' (660 templated tasks), a .jsonl/.json/.txt/.parquet file, or a hub id."),
        split: str = typer.Option("train", "--split", help="Dataset split (hub datasets)."),
        field: Optional[str] = typer.Option(None, "--field", help="Text/prompt/turns/messages column (auto-detected)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="At most N records (generate) or N chunks (corpus)."),
        mode: str = typer.Option("corpus", "--mode", help="corpus (teacher-forced text) or generate (continue prompts)."),
        max_length: int = typer.Option(512, "--max-length", help="Corpus chunk length; max prompt+continuation length."),
        new_tokens: int = typer.Option(64, "--new-tokens", help="Tokens generated per prompt (generate mode)."),
        temperature: float = typer.Option(0.0, "--temperature", help="Sampling temperature (0 = greedy)."),
        gen_batching: str = typer.Option("batch", "--gen-batching", help="batch (left-padded HF generate) or single."),
        chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Render prompts with the chat template (default: on in generate mode when the tokenizer has one)."),
        layers: str = typer.Option("20", "--layers", help="Probe layers, comma-separated (residual stream entering layer L)."),
        skip_band: list[str] = typer.Option([], "--skip-band", help="Band A-B (inclusive) for counterfactual labels; repeatable."),
        soft_level: list[float] = typer.Option([], "--soft-level", help="Soft-skip level s in (0, 1] for "
                                               "counterfactual labels keep_top1/dnll/kl.soft@s; repeatable."),
        backend: str = typer.Option("hf", "--backend", help="hf, or vllm (hidden states in vLLM; entropy/top-1/labels via HF)."),
        batch_size: int = typer.Option(4, "--batch-size", help="Sequences per forward."),
        shard_tokens: int = typer.Option(65536, "--shard-tokens", help="Flush a shard once it holds this many tokens."),
        dtype: str = typer.Option("float32", "--dtype", help="Model dtype."),
        device: Optional[str] = typer.Option(None, "--device", help="Device (default: cuda if available, else cpu)."),
        seed: int = typer.Option(0, "--seed", help="Seed for sampling."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue a partial --out with the same config."),
    ) -> None:
        from sedac.adapter import parse_band, parse_layers
        from sedac.collect import CollectConfig, collect

        cfg = CollectConfig(
            out=out, model=model, dataset=dataset, split=split, field=field, limit=limit, mode=mode,
            max_length=max_length, new_tokens=new_tokens, temperature=temperature, gen_batching=gen_batching,
            chat=chat, layers=parse_layers(layers), bands=[parse_band(b) for b in skip_band],
            soft_levels=list(soft_level), backend=backend,
            batch_size=batch_size, shard_tokens=shard_tokens, dtype=dtype, device=device, seed=seed, resume=resume,
        )
        m = collect(cfg)
        typer.echo(f"{out}: {m['n_tokens']} tokens, {m['n_sequences']} sequences, {len(m['shards'])} shards")
