"""``sedac probe show``: print a probe's metadata, training metrics and calibration certificate."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    probe = typer.Typer(help="Inspect probe files.", no_args_is_help=True)

    @probe.command("show")
    def show(
        path: Path = typer.Argument(..., help="probe.safetensors"),
        as_json: bool = typer.Option(False, "--json", help="Print the full metadata as JSON."),
    ) -> None:
        """Validate a probe and show its layer, bands, metrics, thresholds and certificate."""
        from sedac.probes import load_probe
        from sedac.provenance import to_jsonable

        p = load_probe(path)
        meta = to_jsonable(p.meta)
        if as_json:
            typer.echo(json.dumps(meta, indent=2, sort_keys=True))
            return
        fp = p.meta.model_fingerprint
        typer.echo(f"probe      {path}")
        typer.echo(f"format     v{p.meta.format_version}")
        typer.echo(f"model      {fp.get('architecture')} layers={fp.get('num_layers')} "
                   f"hidden={fp.get('hidden_size')} vocab={fp.get('vocab_size')} config={fp.get('config_hash')}")
        typer.echo(f"layer      {p.layer}   bands {', '.join(p.band_names)}")
        typer.echo(f"head       {p.meta.head}{f' (rank {p.meta.rank})' if p.meta.rank else ''}   "
                   f"targets {', '.join(p.meta.targets)}   score {p.meta.score_target}")
        if p.meta.training.get("metrics"):
            typer.echo("training   " + json.dumps(p.meta.training["metrics"], sort_keys=True))
        cal = p.meta.calibration
        if not cal:
            typer.echo("calibration  none (run `sedac calibrate`)")
        else:
            typer.echo("calibration")
            typer.echo(json.dumps(cal, indent=2, sort_keys=True))
        prov = p.meta.provenance
        typer.echo(f"provenance git={prov.get('git_revision')} created={prov.get('created_utc')}")

    app.add_typer(probe, name="probe")
