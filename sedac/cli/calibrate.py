"""``sedac calibrate``: certify skip thresholds (Learn-then-Test) and write them into the probe."""

from __future__ import annotations

from typing import Optional

import typer

_HELP = """Certify, per policy, the most aggressive skip setting of a fixed grid whose mean per-sequence risk
is <= --epsilon with probability >= 1 - --delta. Risk: top-1 disagreement with the full model (default; or NLL
increase > --nll-margin, --risk nll), teacher-forced on the real HF runtime -- in --mode generate along the
full model's own greedy continuation of --new-tokens tokens -- in the calibration --dtype, for new sequences
exchangeable with those drawn from --data. Free-running generations can drift further (docs/calibration.md).
Procedure: Learn-then-Test, fixed-sequence testing over a grid ordered conservative -> aggressive; the last
rejected point is certified (p-values: --bound, default auto). Units, epsilon, delta: with n calibration units (sequences, or groups of
--batch-concurrency sequences for batch policies; n = units - round(units * --test-fraction)) no bound can
certify below 1 - delta^(1/n) ~ ln(1/delta)/n even at zero observed risk (defaults: 232 sequences, 174 units,
delta 0.05: 0.017 < epsilon 0.05); requests that cannot certify are refused before any work. Policies:
static/dynamic x token/batch. Writes thresholds + certificates into the probe (--out, default in place) and a
Markdown/PNG/JSON report. Exit 3 when nothing is certified."""


def register(app: typer.Typer) -> None:
    @app.command("calibrate", help=_HELP)
    def calibrate_cmd(
        probe: str = typer.Option(..., "--probe", help="Probe file (.safetensors) to calibrate."),
        data: str = typer.Option("builtin", "--data", help="'builtin' (70 hand-written prompts), 'builtin-tasks' (660 templated tasks), a .jsonl/.json/.txt/.parquet file, or a hub id."),
        mode: str = typer.Option("corpus", "--mode", help="corpus (text chunks) or generate (model continuations)."),
        epsilon: float = typer.Option(0.05, "--epsilon", help="Tolerated mean per-sequence risk; must exceed 1 - delta^(1/n) for n calibration units."),
        delta: float = typer.Option(0.05, "--delta", help="Allowed probability that the certified setting's risk exceeds epsilon."),
        policies: str = typer.Option("static-token,dynamic-token", "--policies",
                                     help="Comma list of static-token, dynamic-token, static-batch, dynamic-batch (whole-MLP skip), "
                                          "soft-uniform, soft-probe (soft skip: per-token magnitude sparsity of the MLP inputs)."),
        out: Optional[str] = typer.Option(None, "--out", help="Calibrated probe path (default: rewrite --probe)."),
        report_dir: Optional[str] = typer.Option(None, "--report-dir", help="Report folder (default: <out>.calibration/)."),
        model: Optional[str] = typer.Option(None, "--model", help="Model alias, HF folder or hub id (default: embedded SmolLM2)."),
        split: str = typer.Option("train", "--split", help="Dataset split (hub datasets)."),
        field: Optional[str] = typer.Option(None, "--field", help="Text/prompt/turns/messages column (auto-detected)."),
        chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Chat template (default: on in generate mode)."),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Corpus chunk length (default 64); max prompt+continuation (generate, default 192)."),
        new_tokens: int = typer.Option(32, "--new-tokens", help="Generated tokens per prompt (generate mode)."),
        n_sequences: int = typer.Option(232, "--n-sequences", help="Calibration + test sequences (builtin-tasks has 660 records; scripts/soft_evidence.py uses 652 + 8 grid)."),
        grid_sequences: int = typer.Option(8, "--grid-sequences", help="Extra sequences that place the grid and ref."),
        risk: str = typer.Option("top1", "--risk", help="top1 or nll."),
        nll_margin: float = typer.Option(0.1, "--nll-margin", help="Nats (with --risk nll)."),
        bound: str = typer.Option("auto", "--bound", help="auto (wsr when n*epsilon >= 2 ln(1/delta), else hb; chosen before any risk is seen), hb (Hoeffding-Bentkus), wsr (betting), hoeffding, bentkus."),
        grid_size: int = typer.Option(10, "--grid-size", help="Candidate points per policy."),
        grid_min_skip: float = typer.Option(0.001, "--grid-min-skip", help="Target skip fraction, most conservative point."),
        grid_max_skip: float = typer.Option(0.5, "--grid-max-skip", help="Target skip fraction, most aggressive point."),
        stop_factor: float = typer.Option(3.0, "--stop-factor", help="Stop a grid once mean risk > factor*epsilon (0: never)."),
        batch_concurrency: int = typer.Option(4, "--batch-concurrency", help="B >= 2 (batch policies): steps with >= B rows skip all-or-nothing, smaller steps use the token rule; recorded in the certificate."),
        batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward (token policies)."),
        gamma: float = typer.Option(1.0, "--gamma", help="Dynamic threshold sensitivity (fixed)."),
        prior_tokens: float = typer.Option(8.0, "--prior-tokens", help="Dynamic running-mean prior weight (fixed)."),
        soft_levels: str = typer.Option("0.05,0.08,0.1,0.12,0.14,0.16,0.18,0.2,0.25,0.3", "--soft-levels",
                                        help="Soft policies: grid of base levels (fraction of MLP inputs zeroed), increasing."),
        soft_gamma: float = typer.Option(0.1, "--soft-gamma", help="soft-probe: level change per std of the probe score (fixed)."),
        soft_a_x: float = typer.Option(1.0, "--soft-a-x", help="Soft: sparsity of the gate/up input per unit of level."),
        soft_a_h: float = typer.Option(1.0, "--soft-a-h", help="Soft: sparsity of the down input per unit of level."),
        soft_alloc: str = typer.Option("uniform", "--soft-alloc", help="Soft: spread of sparsity over layers: uniform "
                                       "(same in every layer) or greedy (per-layer sensitivity on the grid-selection "
                                       "sequences; docs/soft.md)."),
        soft_alloc_target: float = typer.Option(0.15, "--soft-alloc-target", help="Soft, greedy: MLP-bytes share the "
                                                "allocation is built for."),
        test_fraction: float = typer.Option(0.25, "--test-fraction", help="Held-out share of the units (not used to certify)."),
        resamples: int = typer.Option(100, "--resamples", help="Random splits in the descriptive resampling figure."),
        seed: int = typer.Option(0, "--seed", help="Seed for data order and splits."),
        dtype: str = typer.Option("float32", "--dtype", help="Model dtype; recorded, serving another dtype warns."),
        device: Optional[str] = typer.Option(None, "--device", help="Device (default: cuda if available, else cpu)."),
    ) -> None:
        from sedac.calibration import CalibrateConfig, calibrate
        from sedac.calibration.report import HEADER, summary_rows

        cfg = CalibrateConfig(
            probe=probe, out=out, report_dir=report_dir, model=model, data=data, split=split, field=field, chat=chat,
            mode=mode, max_length=max_length, new_tokens=new_tokens, n_sequences=n_sequences,
            grid_sequences=grid_sequences, epsilon=epsilon, delta=delta, risk=risk, nll_margin=nll_margin,
            bound=bound, policies=policies, grid_size=grid_size, grid_min_skip=grid_min_skip,
            grid_max_skip=grid_max_skip, stop_factor=stop_factor, batch_concurrency=batch_concurrency,
            batch_size=batch_size, gamma=gamma, prior_tokens=prior_tokens, test_fraction=test_fraction,
            resamples=resamples, seed=seed, dtype=dtype, device=device, soft_levels=soft_levels,
            soft_gamma=soft_gamma, soft_a_x=soft_a_x, soft_a_h=soft_a_h,
            soft_alloc=soft_alloc, soft_alloc_target=soft_alloc_target,
        )
        s = calibrate(cfg)
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"sedac calibrate: epsilon={epsilon} delta={delta} risk={risk}")
        for h in HEADER:
            table.add_column(h)
        for row in summary_rows(s["certificates"]):
            table.add_row(*row)
        Console().print(table)
        typer.echo(f"probe: {s['out']}  default: {s['default']['mode']}/{s['default']['policy']}")
        typer.echo(f"report: {s['report']['markdown']}")
        for c in s["certificates"]:
            if not c["certified"]:
                typer.echo(f"note: {c['name']}: nothing certified at epsilon={epsilon}; smallest risk on the grid "
                           f"{c['smallest_risk']}, smallest upper bound {c['smallest_ucb']}")
