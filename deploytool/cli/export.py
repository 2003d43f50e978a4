"""Commands that make an export: `export` (ONNX FP32/FP16/BF16 + manifest) and `build` (its TensorRT engine)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from deploytool.cli.group import cli
from deploytool.cli.options import json_option, needs_extra, parse_tile, say, weights_option


@cli.command()
@click.argument("model_id")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Export directory  [default: build/MODEL_ID]")
@weights_option("Official-format checkpoint (.pth/.pt/.safetensors).")
@click.option("--random-init", is_flag=True, help="Untrained seeded weights: an offline smoke test, not a model.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random-init.")
@click.option("--tile", help="Static input tile, N or HxW (default: the model's).")
@click.option("--batch", type=int, help="Static batch size (default: the model's).")
@click.option("--calibration-images", type=click.Path(file_okay=False, path_type=Path), help="Real images to measure FP16 ranges on.")
@click.option("--no-fp16", is_flag=True, help="Skip the FP16 deploy graph.")
@click.option(
    "--precision",
    "precisions",
    default="fp16",
    show_default=True,
    callback=lambda context, parameter, value: parse_precisions(value),
    help="Deploy graphs beside model.onnx, comma-separated: fp16 (model_fp16.onnx), bf16 (model_bf16.onnx); fp32 alone for neither.",
)
@click.option(
    "--no-trace-cache",
    is_flag=True,
    help="Trace even where the trace cache ($DEPLOYTOOL_TRACE_CACHE, else ~/.cache/deploytool/traces) holds this model's graph at this tile.",
)
@json_option("Print the manifest as JSON.")
@needs_extra("export")
def export(model_id, out_dir, weights, random_init, seed, tile, batch, calibration_images, no_fp16, precisions, no_trace_cache, as_json) -> None:
    """Export MODEL_ID to ONNX FP32 + FP16 (+ BF16) with a manifest. Without --weights, the official file is downloaded."""
    from deploytool.build import export as exporter
    from deploytool.build import registry
    from deploytool.build.networks import resolve_source
    from deploytool.build.trace_cache import default_folder
    from deploytool.runtime.fileio import inside

    check_no_fp16(no_fp16, precisions)
    entry = registry.get(model_id)
    out_dir = out_dir or inside(Path("build"), entry.id, "model id")
    tile = parse_tile(tile) or entry.tiling.tile
    source = resolve_source(entry, weights=weights, random_init=random_init, seed=seed)
    if source.kind == "random-init":
        say(f"warning: {model_id} is exported with UNTRAINED random weights (seed {seed}); for smoke tests only")
    request = exporter.ExportRequest(
        entry=entry,
        source=source,
        out_dir=out_dir,
        tile=tile,
        batch=entry.tiling.batch if batch is None else batch,
        fp16="fp16" in precisions and not no_fp16,
        bf16="bf16" in precisions,
        calibration_images=calibration_images,
        trace_cache=None if no_trace_cache else default_folder(),
    )
    manifest = exporter.export(request, progress=say)
    if as_json:
        click.echo(json.dumps(manifest.to_json(), indent=2))


PRECISIONS = ("fp16", "bf16", "fp32")


def check_no_fp16(no_fp16: bool, precisions: frozenset[str]) -> None:
    """Refuse `--no-fp16` beside a `--precision` that names fp16 (which of the two would hold?);
    beside the default `--precision` it leaves the FP16 graph out, as it always has."""
    given = click.get_current_context().get_parameter_source("precisions") != click.core.ParameterSource.DEFAULT
    if no_fp16 and given and "fp16" in precisions:
        raise click.UsageError("--no-fp16 contradicts --precision naming fp16: name the graphs you want with --precision alone")


def parse_precisions(value: str) -> frozenset[str]:
    """`--precision`'s comma-separated names; fp32 (model.onnx, always written) asks for no other."""
    names = frozenset(name.strip().lower() for name in value.split(","))
    unknown = sorted(names - set(PRECISIONS))
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: not one of {', '.join(PRECISIONS)}")
    return names - {"fp32"}


@cli.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--workspace", default="4G", show_default=True, help="TensorRT workspace memory limit, e.g. 4G or 512M.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True, help="TensorRT builder optimization level.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="Timing cache to read and update (default: timing.cache in EXPORT_DIR).")
@click.option(
    "--precision",
    type=click.Choice(["fp16", "bf16"]),
    default="fp16",
    show_default=True,
    help="Deploy graph to build from: model_fp16.onnx, or model_bf16.onnx (compute capability 8.0 or newer).",
)
@json_option("Print the engine record as JSON.")
@needs_extra("export")
def build(export_dir, workspace, opt_level, timing_cache, precision, as_json) -> None:
    """Build the TensorRT engine (FP16, or BF16 with --precision bf16) of an export for this GPU and TensorRT version."""
    from deploytool.runtime.backends.tensorrt import build as engines

    options = engines.BuildOptions(workspace_bytes=engines.parse_size(workspace), opt_level=opt_level, timing_cache=timing_cache, precision=precision)
    name, entry = engines.build_engine(export_dir, options, progress=say)
    if as_json:
        click.echo(json.dumps({"file": name, **dataclasses.asdict(entry)}, indent=2))
