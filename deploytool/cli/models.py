"""Commands about the model catalogue: `list` and `info`."""

from __future__ import annotations

import json

import click

from deploytool.cli.group import cli
from deploytool.cli.options import json_option, needs_extra


@cli.command("list")
@json_option()
@needs_extra("export")
def list_models(as_json: bool) -> None:
    """Every model id with its task, scale and default tile."""
    from deploytool.build import registry

    entries = registry.all_entries().values()
    if as_json:
        click.echo(
            json.dumps(
                [{"id": e.id, "family": e.family, "task": e.task, "scale": e.scale, "channels": e.channels, "tile": list(e.tiling.tile)} for e in entries],
                indent=2,
            )
        )
        return
    click.echo(f"{'model id':<24} {'task':<13} {'scale':>5} {'ch':>3}  tile")
    for e in entries:
        click.echo(f"{e.id:<24} {e.task:<13} {'x' + str(e.scale):>5} {e.channels:>3}  {e.tiling.tile[0]}x{e.tiling.tile[1]}")


@cli.command()
@click.argument("model_id")
@json_option()
@needs_extra("export")
def info(model_id: str, as_json: bool) -> None:
    """Hyperparameters, default tile and official checkpoint of MODEL_ID."""
    from deploytool.build import registry

    entry = registry.get(model_id)
    data = {
        "id": entry.id,
        "family": entry.family,
        "task": entry.task,
        "description": entry.description,
        "scale": entry.scale,
        "channels": entry.channels,
        "tile": list(entry.tiling.tile),
        "tile_multiple": entry.tiling.tile_multiple,
        "tile_reason": entry.tile_reason,
        "batch": entry.tiling.batch,
        "overlap": entry.tiling.overlap,
        "arch": entry.arch,
        "weights": {
            "filename": entry.weights.filename,
            "url": entry.weights.url,
            "sha256": entry.weights.sha256,
            "also": list(entry.weights.also),
            "note": entry.weights.note,
        },
        "tolerances": entry.tolerances,
        "config": str(entry.source_file),
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for sub, sub_value in value.items():
                if sub_value not in (None, "", []):
                    click.echo(f"  {sub}: {sub_value}")
        elif value not in (None, "", []):
            click.echo(f"{key}: {value}")
