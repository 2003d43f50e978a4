"""Commands for Triton serving: `triton` (write a model repository), `serve` and `client`."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from deploytool.cli.group import cli
from deploytool.cli.options import json_option, say, video_encode_options
from deploytool.errors import DeployError
from deploytool.runtime import backends


def _runtime_choices() -> str:
    """'a, b, or c': the Triton runtimes' descriptions."""
    described = [runtime.description for runtime in backends.triton_runtimes()]
    return ", or ".join([", ".join(described[:-1]), described[-1]]) if len(described) > 1 else "".join(described)


@cli.command()
@click.argument("export_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--repo", type=click.Path(file_okay=False, path_type=Path), required=True, help="Triton model repository to write into (other models there are kept)."
)
@click.option(
    "--runtime",
    type=click.Choice([runtime.name for runtime in backends.triton_runtimes()]),
    default=backends.DEFAULT_TRITON_RUNTIME,
    show_default=True,
    help=f"What runs the tiles: {_runtime_choices()}.",
)
@click.option("--instances", type=int, default=1, show_default=True, help="Tile-model instances (on each GPU of --gpus).")
@click.option("--gpus", help="GPU indices for the tile model's instances, e.g. 0,1  [default: every GPU]")
@click.option("--max-pixels", default="16M", show_default=True, help="Largest image (per view) the whole-image model accepts, e.g. 16M, 500K.")
@click.option("--fp32", is_flag=True, help="--runtime onnx: serve model.onnx instead of model_fp16.onnx.")
@json_option("Print the models written as JSON.")
def triton(export_dirs, repo, runtime, instances, gpus, max_pixels, fp32, as_json) -> None:
    """Write a Triton model repository: per export, EXPORT_ID-tiles (the static graph) and EXPORT_ID (whole images, tiled on the server)."""
    from deploytool.serving import repository

    options = repository.RepositoryOptions(
        runtime=runtime, instances=instances, gpus=repository.parse_gpus(gpus), max_pixels=repository.parse_pixels(max_pixels), fp32=fp32
    )
    written = repository.write_repository(list(export_dirs), repo, options, progress=say)
    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(m), "path": str(m.path)} for m in written], indent=2))


@cli.command()
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option(
    "--env",
    "env",
    type=click.Path(file_okay=False, path_type=Path),
    help="Environment with nvidia-pytriton and the models' packages  [default: $DEPLOYTOOL_SERVE_ENV, else .venv-serve]",
)
@click.option("--timeout", type=click.IntRange(1), default=180, show_default=True, help="Seconds to wait for the models to be ready.")
def serve(repo, http_port, host, env, timeout) -> None:
    """Serve REPO with the Triton server of the nvidia-pytriton wheel (CPU, Python backend) until Ctrl-C."""
    from deploytool.serving import server

    server.serve_forever(server.TritonServer(repo, host=host, http_port=http_port, env=env), ready_timeout=timeout, say=say)


@cli.command()
@click.argument("url")
@click.argument("model_id")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output file (one input) or folder.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Requests in flight at once.")
@video_encode_options
@json_option("Print what was written as JSON.")
def client(url, model_id, inputs, output, concurrency, encode, as_json) -> None:
    """Restore images and videos with MODEL_ID on the Triton server at URL (e.g. http://127.0.0.1:8000)."""
    from tqdm import tqdm

    from deploytool.runtime import video as videos
    from deploytool.serving.client import restore_remote, restore_remote_videos

    image_paths, video_paths = videos.split_inputs(inputs)
    if video_paths:
        from deploytool.runtime.inference import destinations

        targets = destinations(video_paths, output) if not image_paths else [output / p.name for p in video_paths]
        with videos.sigterm_interrupts(), tqdm(unit="frame", file=sys.stderr, disable=None) as bar:
            restored = restore_remote_videos(
                url,
                model_id,
                video_paths,
                targets,
                encode,
                concurrency=concurrency,
                on_start=lambda source, total: bar.reset(total),
                on_frame=lambda: bar.update(1),
            )
        if as_json and not image_paths:
            click.echo(json.dumps({"url": url, "model": model_id, "videos": restored}, indent=2))
        else:
            for item in restored:
                say(videos.summary_line(item))
        if not image_paths:
            return
        inputs = image_paths
    with tqdm(unit="image", file=sys.stderr, disable=None) as bar:

        def failed(failure: dict) -> None:
            bar.update(1)
            bar.write(f"failed: {failure['input']}: {failure['error']}", file=sys.stderr)

        report = restore_remote(
            url,
            model_id,
            list(inputs),
            output,
            concurrency=concurrency,
            on_start=lambda total: setattr(bar, "total", total),
            on_done=lambda record: bar.update(1),
            on_failure=failed,
        )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for item in report.images:
            say(f"{item['input']} -> {item['output']} ({item['output_size'][0]}x{item['output_size'][1]}, {item['seconds']:.2f} s)")
    if report.failures:
        total = len(report.failures) + len(report.images)
        first = report.failures[0]
        raise DeployError(f"{len(report.failures)} of {total} image(s) failed; first: {first['input']}: {first['error']}")
