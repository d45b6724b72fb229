"""``sedac quickstart``: the whole pipeline on the embedded default model (the README's main command)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("quickstart")
    def quickstart(
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe (kind: quickstart), e.g. "
                                              "recipes/smollm2-135m/quickstart.yaml."),
        work_dir: Optional[str] = typer.Option(None, "--work-dir", help="Folder for every artefact."),
        model: Optional[str] = typer.Option(None, "--model", help="Model alias or folder."),
        epsilon: Optional[float] = typer.Option(None, "--epsilon", help="Accepted top-1 disagreement (default 0.05)."),
    ) -> None:
        """pull -> collect -> train-probe -> calibrate -> bench offline -> report, printing each step's command."""
        from sedac.bench.config import QuickstartConfig, load_recipe
        from sedac.quickstart import run_quickstart

        cfg = load_recipe(recipe, expect="quickstart") if recipe else QuickstartConfig()
        over = {"work_dir": work_dir, "model": model, "epsilon": epsilon}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
        run_quickstart(cfg)
