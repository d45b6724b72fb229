"""``sedac train-probe``: train a skip-safety / entropy probe on `sedac collect` shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train-probe")
    def train_probe_cmd(
        data: list[Path] = typer.Option(..., "--data", help="Shard directory from `sedac collect` (repeatable; "
                                        "all must share the model fingerprint and contain --layer)."),
        layer: Optional[int] = typer.Option(None, "--layer", help="Probe layer L (residual stream entering layer L). "
                                            "Required unless --evaluate."),
        band: Optional[list[str]] = typer.Option(None, "--band", help="Skip band A-B (repeatable); default: all "
                                                 "bands in the manifest."),
        soft_level: Optional[float] = typer.Option(None, "--soft-level", help="Train the safety head on the "
                                                   "soft-skip label keep_top1.soft@S (collected with `sedac collect "
                                                   "--soft-level S`) instead of --band; the probe's band becomes "
                                                   "[layer, last layer]."),
        target: str = typer.Option("safety", "--target", help="safety | entropy | both"),
        head: str = typer.Option("linear", "--head", help="linear | lowrank"),
        rank: Optional[int] = typer.Option(None, "--rank", help="Rank of the low-rank head (default 16)."),
        out: Path = typer.Option(Path("probe.safetensors"), "--out", help="Probe file; checkpoints and CSV logs "
                                 "go to <out without suffix>.run/."),
        seed: int = typer.Option(0, "--seed"),
        max_epochs: int = typer.Option(20, "--max-epochs"),
        batch_size: int = typer.Option(1024, "--batch-size"),
        lr: float = typer.Option(1e-3, "--lr"),
        weight_decay: float = typer.Option(1e-4, "--weight-decay"),
        val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of SEQUENCES held out."),
        patience: int = typer.Option(3, "--patience", help="Early-stopping patience (epochs)."),
        score_target: Optional[str] = typer.Option(None, "--score-target", help="Which target drives skip "
                                                   "decisions when --target both (default safety)."),
        entropy_loss: str = typer.Option("huber", "--entropy-loss", help="huber | mse"),
        compare: bool = typer.Option(True, "--compare/--no-compare", help="Compare true entropy vs the probe as "
                                     "skip scores on the validation split (AUROC, share skippable at 99% precision)."),
        evaluate: Optional[list[Path]] = typer.Option(None, "--evaluate", help="Do not train: compare these "
                                                      "existing probes (repeatable) on the validation split."),
        max_hidden_gib: float = typer.Option(8.0, "--max-hidden-gib", help="Refuse data whose float16 hidden "
                                             "states exceed this many GiB (they are held in memory)."),
        accelerator: str = typer.Option("cpu", "--accelerator", help="Lightning accelerator: cpu | gpu | auto"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Train a probe (Lightning; split by sequence; early stopping) and write probe.safetensors."""
        from rich.console import Console

        from sedac.errors import ConfigError
        from sedac.probes.train import TrainProbeConfig, evaluate_probes, print_comparison, train_probe

        console = Console()
        if evaluate:
            cmp = evaluate_probes([str(d) for d in data], [str(p) for p in evaluate], seed=seed,
                                  val_fraction=val_fraction, max_hidden_gib=max_hidden_gib)
            print_comparison(cmp, console)
            return
        if layer is None:
            raise ConfigError("--layer is required (the probe layer to train on)")
        cfg = TrainProbeConfig(
            data=[str(d) for d in data], layer=layer, bands=band or None, soft_level=soft_level, target=target,
            head=head, rank=rank, out=str(out), seed=seed, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, val_fraction=val_fraction, patience=patience, score_target=score_target,
            entropy_loss=entropy_loss, compare=compare, max_hidden_gib=max_hidden_gib, accelerator=accelerator,
            progress=progress,
        )
        train_probe(cfg, console=console)
