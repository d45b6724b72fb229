"""The ``sedac`` command line: a thin typer layer over library functions.

Each verb lives in its own module under ``sedac/cli/`` exposing ``register(app)``; heavy imports
(torch, vLLM, Lightning) happen inside the command functions so that ``sedac --help`` is instant.
User errors (:class:`sedac.errors.SedacError`) print one line and exit non-zero.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="sedac",
    help=(
        "sedac: skip the MLP blocks of tokens the model is confident about, with a certified bound on the mean "
        "per-sequence top-1 disagreement (teacher-forced along the full model's greedy continuation, on data "
        "like the calibration data, in its dtype).\n\n"
        "Pipeline: models pull -> collect -> train-probe -> calibrate -> serve / bench. "
        "`sedac quickstart` runs it all on the embedded default model (SmolLM2-135M, CPU)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Verb modules, in --help order; each must exist and register a real command.
COMMAND_MODULES = [
    "models", "collect", "train_probe", "calibrate", "probe", "serve", "bench", "quickstart",
]


def _register_all() -> None:
    """Import every verb module and let it register; a listed module that is missing is a broken
    install (raised, never skipped: ``sedac --help`` must not silently lose a verb)."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"sedac.cli.{name}").register(app)


_register_all()


def main() -> None:
    from sedac.errors import SedacError

    try:
        app()
    except SedacError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # disk full, unwritable --out, ...: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        typer.secho(f"error: {exc.strerror or exc}{where}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
