"""``sedac models``: pull and list models."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="Obtain and list models (the embedded default and other aliases).",
                         no_args_is_help=True)

    @models.command("pull")
    def pull_cmd(
        name: str = typer.Argument("smollm2-135m-instruct", help="Model alias to pull."),
        force: bool = typer.Option(False, "--force", help="Re-download and re-convert even if cached."),
    ) -> None:
        """Download, verify (sha256) and convert a model alias into $SEDAC_HOME (idempotent)."""
        from sedac.models.registry import pull

        path = pull(name, force=force)
        typer.echo(str(path))

    @models.command("list")
    def list_cmd() -> None:
        """Show known aliases and whether each is cached."""
        from rich.console import Console
        from rich.table import Table

        from sedac.models.registry import list_models

        table = Table("alias", "cached", "path", "description")
        for row in list_models():
            table.add_row(row["alias"], row["cached"], row["path"], row["description"])
        Console().print(table)

    app.add_typer(models, name="models")
