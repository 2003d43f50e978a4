"""Commands that run an export on this machine: `run` and `doctor`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from deploytool.cli.group import cli
from deploytool.cli.options import device_option, json_option, needs_extra, say, video_encode_options, weights_option
from deploytool.errors import DeployError
from deploytool.runtime import backends as registry


@cli.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output file (one input) or folder.")
@click.option("--backend", type=click.Choice(registry.runtime_names()), default=registry.DEFAULT_RUNTIME, show_default=True)
@click.option("--overlap", type=int, help="Tile overlap in input pixels (default: the model's).")
@weights_option("The export's checkpoint, if it moved (torch backend).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay one captured CUDA graph per batch of tiles.")
@device_option()
@video_encode_options
@click.option("--resume", is_flag=True, help="Videos: encode in segments cut at keyframes; a rerun with the same arguments skips finished ones.")
@click.option("--segment-frames", type=click.IntRange(1), help="With --resume: frames per segment at least  [default: 600]")
@json_option("Print what was written as JSON.")
@needs_extra("export")
def run(export_dir, inputs, output, backend, overlap, weights, cuda_graph, device, encode, resume, segment_frames, as_json) -> None:
    """Restore or upscale images and videos of any size with an export, tile by tile.

    Models of several views (restormer-dual-defocus) take INPUTS in groups, one file per view in
    the manifest's order: LEFT RIGHT [LEFT RIGHT ...]. A file is a video when FFmpeg finds one in it.
    """
    from tqdm import tqdm

    import deploytool
    from deploytool.runtime import inference
    from deploytool.runtime import video as videos
    from deploytool.runtime.manifest import read_manifest

    if segment_frames is not None and not resume:
        raise DeployError("--segment-frames applies with --resume (encoding in segments)")
    manifest = read_manifest(export_dir)
    overlap = manifest.overlap(overlap)
    image_paths, video_paths = videos.split_inputs(inputs)
    sources = inference.group_sources(manifest, image_paths)
    for path in video_paths:
        videos.check_video(path)  # as group_sources checks the images: before any output is written
    targets = inference.destinations([*sources, *video_paths], output)
    resume_key = (
        {"export": manifest.fingerprint(), "backend": backend, **({"device": device} if device else {}), "overlap": overlap, **encode.arguments()}
        if resume
        else None
    )
    results, video_results = [], []
    with deploytool.open(export_dir, backend, overlap=overlap, weights=weights, cuda_graph=cuda_graph, device=device) as restorer:
        if video_paths:
            restorer.frame_restorer()  # refuses a model that cannot take video frames before any image is written
        for source, destination in zip(sources, targets):
            first = source[0] if isinstance(source, tuple) else source
            with tqdm(desc=first.name, unit="tile", file=sys.stderr, disable=None) as bar:
                results.append(restorer.restore_image_file(source, destination, on_tiles=bar.update, on_start=lambda total: setattr(bar, "total", total)))
        for source, destination in zip(video_paths, targets[len(sources) :]):
            with videos.sigterm_interrupts(), tqdm(desc=source.name, unit="frame", file=sys.stderr, disable=None) as bar:
                video_results.append(
                    restorer.restore_video(
                        source,
                        destination,
                        encode,
                        resume_key=resume_key,
                        segment_frames=segment_frames or 0,
                        on_start=lambda total: setattr(bar, "total", total),
                        on_frame=lambda: bar.update(1),
                    )
                )
    if as_json:
        click.echo(json.dumps({"backend": backend, "images": results, **({"videos": video_results} if video_paths else {})}, indent=2))
    else:
        for item in results:
            say(f"{item['input']} -> {item['output']} ({item['output_size'][0]}x{item['output_size'][1]}, {item['tiles']} tiles, {backend})")
        for item in video_results:
            say(videos.summary_line(item))


@cli.command()
@json_option()
def doctor(as_json: bool) -> None:
    """Versions, GPU and compute capability, and what each command can do on this machine."""
    from deploytool.runtime import doctor as checks

    facts = checks.probe()
    caps = checks.capabilities(facts)
    if as_json:
        click.echo(json.dumps({"facts": facts, "capabilities": caps}, indent=2))
    else:
        click.echo("\n".join(checks.report_lines(facts, caps)))
