"""`deploytool` command line: each command parses its options and calls the library."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from deploytool.backends import DEFAULT_PARITY_BACKENDS, ORT_FP16, PARITY_BACKENDS, RUNTIMES, TRITON_RUNTIMES, TRITON_TRT
from deploytool.errors import DeployError


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _say(message: str) -> None:
    click.echo(message, err=True)


def _tile(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().split("x")
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use N or HxW, e.g. 128 or 96x160") from None
    if len(numbers) == 1:
        return (numbers[0], numbers[0])
    if len(numbers) == 2:
        return numbers  # type: ignore[return-value]
    raise click.BadParameter(f"{value!r}: use N or HxW, e.g. 128 or 96x160")


class Group(click.Group):
    """Turns DeployError into one line on stderr and exit status 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DeployError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted")


@click.group(cls=Group)
@click.version_option(package_name="deploytool")
def cli() -> None:
    """Export image-restoration Transformers to ONNX/TensorRT FP16 and prove parity."""


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_models(as_json: bool) -> None:
    """Every model id with its task, scale and default tile."""
    from deploytool import registry

    entries = registry.all_entries().values()
    if as_json:
        click.echo(
            json.dumps(
                [{"id": e.id, "family": e.family, "task": e.task, "scale": e.scale, "channels": e.channels, "tile": list(e.tile)} for e in entries], indent=2
            )
        )
        return
    click.echo(f"{'model id':<24} {'task':<13} {'scale':>5} {'ch':>3}  tile")
    for e in entries:
        click.echo(f"{e.id:<24} {e.task:<13} {'x' + str(e.scale):>5} {e.channels:>3}  {e.tile[0]}x{e.tile[1]}")


@cli.command()
@click.argument("model_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(model_id: str, as_json: bool) -> None:
    """Hyperparameters, default tile and official checkpoint of MODEL_ID."""
    from deploytool import registry

    entry = registry.get(model_id)
    data = {
        "id": entry.id,
        "family": entry.family,
        "task": entry.task,
        "description": entry.description,
        "scale": entry.scale,
        "channels": entry.channels,
        "tile": list(entry.tile),
        "tile_multiple": entry.tile_multiple,
        "tile_reason": entry.tile_reason,
        "batch": entry.batch,
        "overlap": entry.overlap,
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


@cli.command()
@click.argument("model_id")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Export directory  [default: build/MODEL_ID]")
@click.option("--weights", type=click.Path(path_type=Path), help="Official-format checkpoint (.pth/.pt/.safetensors).")
@click.option("--random-init", is_flag=True, help="Untrained seeded weights: an offline smoke test, not a model.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random-init.")
@click.option("--tile", help="Static input tile, N or HxW (default: the model's).")
@click.option("--batch", type=int, help="Static batch size (default: the model's).")
@click.option("--calibration-images", type=click.Path(file_okay=False, path_type=Path), help="Real images to measure FP16 ranges on.")
@click.option("--no-fp16", is_flag=True, help="Skip the FP16 deploy graph.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export(model_id, out_dir, weights, random_init, seed, tile, batch, calibration_images, no_fp16, as_json) -> None:
    """Export MODEL_ID to ONNX FP32 + FP16 with a manifest. Without --weights, the official file is downloaded."""
    from deploytool import export as exporter
    from deploytool import registry
    from deploytool.fileio import inside
    from deploytool.models import resolve_source

    entry = registry.get(model_id)
    out_dir = out_dir or inside(Path("build"), entry.id, "model id")
    source = resolve_source(entry, weights=weights, random_init=random_init, seed=seed)
    if source.kind == "random-init":
        _say(f"warning: {model_id} is exported with UNTRAINED random weights (seed {seed}); for smoke tests only")
    request = exporter.ExportRequest(
        entry=entry,
        source=source,
        out_dir=out_dir,
        tile=_tile(tile) or entry.tile,
        batch=batch or entry.batch,
        fp16=not no_fp16,
        calibration_images=calibration_images,
    )
    manifest = exporter.export(request, progress=_say)
    if as_json:
        click.echo(json.dumps(manifest.to_json(), indent=2))


@cli.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path), help="Real images: whole-image original vs tiled backends.")
@click.option("--weights", type=click.Path(path_type=Path), help="The export's checkpoint, if it moved.")
@click.option(
    "--backends",
    default=",".join(DEFAULT_PARITY_BACKENDS),
    show_default=True,
    help=f"Comma-separated backends to run, of {', '.join(PARITY_BACKENDS)}. Without --save-outputs the original always runs.",
)
@click.option("--overlap", type=int, help="Tile overlap for --images (default: the model's).")
@click.option("--max-images", type=int, help="Use at most this many images.")
@click.option(
    "--save-outputs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save inputs and raw outputs to this .npz, to judge with `deploytool compare` (runs exactly --backends).",
)
@click.option("--report", "html", is_flag=True, help="Also write parity.html: error heat maps and worst crops.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(export_dir, images_dir, weights, backends, overlap, max_images, save_outputs, html, as_json) -> None:
    """Compare the original model, our definition, ONNX FP32/FP16 and TensorRT on the same inputs."""
    from deploytool import parity
    from deploytool.backends import parse_backends

    report = parity.verify(
        export_dir,
        images_dir=images_dir,
        weights=weights,
        backends=parse_backends(backends),
        overlap=overlap,
        max_images=max_images,
        save_outputs=save_outputs,
        html=html,
        progress=_say,
    )
    if report is None:
        _say(f"no original in this run: judge {save_outputs} with `deploytool compare` next to results that hold it")
        return
    _print_parity(report, as_json)


def _print_parity(report: dict, as_json: bool) -> None:
    from deploytool import parity

    click.echo(json.dumps(report, indent=2, default=str) if as_json else parity.markdown(report))
    parity.raise_on_failure(report)


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), help="Write parity.json and parity.md here.")
@click.option("--report", "html", is_flag=True, help="With --report-dir: also write parity.html.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def compare(results, report_dir, html, as_json) -> None:
    """Judge results saved by `verify --save-outputs` (from any machines), without running a model."""
    from deploytool import parity

    if html and report_dir is None:
        raise click.UsageError("--report needs --report-dir")
    _print_parity(parity.compare(list(results), report_dir=report_dir, html=html), as_json)


@cli.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output file (one input) or folder.")
@click.option("--backend", type=click.Choice(RUNTIMES), default=ORT_FP16, show_default=True)
@click.option("--overlap", type=int, help="Tile overlap in input pixels (default: the model's).")
@click.option("--weights", type=click.Path(path_type=Path), help="The export's checkpoint, if it moved (torch backend).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay one captured CUDA graph per batch of tiles.")
@click.option("--device", help="openvino backend: the OpenVINO device, e.g. GPU or NPU  [default: CPU]")
@click.option("--codec", help="Video encoder  [default: libx264, libx265 for sources deeper than 8 bits]")
@click.option("--crf", type=int, help="Video quality (x264/x265/SVT-AV1/VP9)  [default: 18]")
@click.option("--pix-fmt", help="Video pixel format  [default: yuv420p, yuv420p10le for deeper sources]")
@click.option("--preset", help="Video encoder preset (x264/x265/SVT-AV1).")
@click.option("--lossless", is_flag=True, help="Videos: FFV1 in Matroska storing RGB, each frame what `run` writes for it as an image.")
@click.option("--no-audio", is_flag=True, help="Videos: leave the audio streams out.")
@click.option("--resume", is_flag=True, help="Videos: encode in segments cut at keyframes; a rerun with the same arguments skips finished ones.")
@click.option("--segment-frames", type=click.IntRange(1), help="With --resume: frames per segment at least  [default: 600]")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def run(
    export_dir, inputs, output, backend, overlap, weights, cuda_graph, device, codec, crf, pix_fmt, preset, lossless, no_audio, resume, segment_frames, as_json
) -> None:
    """Restore or upscale images and videos of any size with an export, tile by tile.

    Models of several views (restormer-dual-defocus) take INPUTS in groups, one file per view in
    the manifest's order: LEFT RIGHT [LEFT RIGHT ...]. A file is a video when FFmpeg finds one in it.
    """
    from tqdm import tqdm

    from deploytool import inference
    from deploytool import video as videos
    from deploytool.backends import open_runner
    from deploytool.manifest import read_manifest

    manifest = read_manifest(export_dir)
    overlap = manifest.overlap(overlap)
    image_paths, video_paths = videos.split_inputs(inputs)
    sources = inference.group_sources(manifest, image_paths)
    targets = inference.destinations([*sources, *video_paths], output)
    encode = videos.EncodeOptions(codec=codec, crf=crf, pix_fmt=pix_fmt, preset=preset, lossless=lossless, audio=not no_audio)
    resume_key = (
        {"export": manifest.fingerprint(), "backend": backend, **({"device": device} if device else {}), "overlap": overlap, **encode.arguments()}
        if resume
        else None
    )
    results, video_results = [], []
    with open_runner(export_dir, manifest, backend, weights=weights, cuda_graph=cuda_graph, device=device) as runner:
        restorer = videos.TiledRestorer(runner, manifest, overlap=overlap) if video_paths else None
        for source, destination in zip(sources, targets):
            first = source[0] if isinstance(source, tuple) else source
            with tqdm(desc=first.name, unit="tile", file=sys.stderr, disable=None) as bar:
                results.append(
                    inference.restore_file(
                        runner,
                        manifest,
                        source,
                        destination,
                        overlap=overlap,
                        on_tiles=bar.update,
                        on_start=lambda total: setattr(bar, "total", total),
                    )
                )
        for source, destination in zip(video_paths, targets[len(sources) :]):
            with videos.sigterm_interrupts(), tqdm(desc=source.name, unit="frame", file=sys.stderr, disable=None) as bar:
                video_results.append(
                    videos.restore_video(
                        source,
                        destination,
                        restorer,
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
            _say(f"{item['input']} -> {item['output']} ({item['output_size'][0]}x{item['output_size'][1]}, {item['tiles']} tiles, {backend})")
        for item in video_results:
            _say(videos.summary_line(item))


@cli.command("eval")
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder with HR/ and LR_bicubic/X<scale>/.")
@click.option("--scale", type=int, required=True)
@click.option(
    "--methods",
    default="reference,ort,ort-fp16,bicubic",
    show_default=True,
    help=f"reference (original, whole image), {', '.join(RUNTIMES)} (tiled), bicubic.",
)
@click.option("--overlap", type=int, help="Tile overlap (default: the model's).")
@click.option("--weights", type=click.Path(path_type=Path), help="The export's checkpoint, if it moved.")
@click.option("--device", help="openvino backend: the OpenVINO device, e.g. GPU or NPU  [default: CPU]")
@click.option("--json", "as_json", is_flag=True)
def evaluate(export_dir, dataset, scale, methods, overlap, weights, device, as_json) -> None:
    """PSNR/SSIM on the Y channel of an SR test set (BasicSR convention), with a bicubic baseline."""
    from deploytool import evaluation
    from deploytool.backends import OPENVINO, open_runner
    from deploytool.manifest import read_manifest
    from deploytool.models import export_weights
    from deploytool.parity import original_runner

    manifest = read_manifest(export_dir)
    overlap = manifest.overlap(overlap)
    chosen = {}
    for method in [m.strip() for m in methods.split(",") if m.strip()]:
        if method == evaluation.BICUBIC:
            chosen[method] = None
        elif method == evaluation.REFERENCE:
            entry, _, state_dict = export_weights(manifest, weights)
            chosen[method] = evaluation.whole_image_method(original_runner(entry, state_dict))
        else:
            chosen[method] = evaluation.tiled_method(
                open_runner(export_dir, manifest, method, weights=weights, device=device if method == OPENVINO else None), manifest, overlap
            )
    report = evaluation.evaluate(manifest.model_id, manifest.scale, dataset, chosen, scale=scale, progress=_say)
    click.echo(json.dumps(report, indent=2) if as_json else evaluation.markdown(report))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Versions, GPU and compute capability, and what each command can do on this machine."""
    from deploytool import doctor as checks

    facts = checks.probe()
    caps = checks.capabilities(facts)
    if as_json:
        click.echo(json.dumps({"facts": facts, "capabilities": caps}, indent=2))
    else:
        click.echo("\n".join(checks.report_lines(facts, caps)))


@cli.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--workspace", default="4G", show_default=True, help="TensorRT workspace memory limit, e.g. 4G or 512M.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True, help="TensorRT builder optimization level.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="Timing cache to read and update (default: timing.cache in EXPORT_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the engine record as JSON.")
def build(export_dir, workspace, opt_level, timing_cache, as_json) -> None:
    """Build the TensorRT FP16 engine of an export for this GPU and TensorRT version."""
    from deploytool import engines

    options = engines.BuildOptions(workspace_bytes=engines.parse_size(workspace), opt_level=opt_level, timing_cache=timing_cache)
    name, entry = engines.build_engine(export_dir, options, progress=_say)
    if as_json:
        click.echo(json.dumps({"file": name, **dataclasses.asdict(entry)}, indent=2))


@cli.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--backend", "backends", default="ort,ort-fp16", show_default=True, help=f"Comma-separated: {', '.join(RUNTIMES)}; ratios are against the first.")
@click.option("--runs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True)
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay one captured CUDA graph per batch.")
@click.option("--weights", type=click.Path(path_type=Path), help="The export's checkpoint, if it moved (torch backend).")
@click.option("--device", help="openvino backend: the OpenVINO device, e.g. GPU or NPU  [default: CPU]")
@click.option("--json", "as_json", is_flag=True)
def bench(export_dir, backends, runs, warmup, cuda_graph, weights, device, as_json) -> None:
    """Latency and tiles/s of an export's backends on this machine, in one run."""
    from deploytool import benchmark
    from deploytool.backends import parse_backends

    report = benchmark.bench(
        export_dir, parse_backends(backends, RUNTIMES), runs=runs, warmup=warmup, cuda_graph=cuda_graph, weights=weights, device=device, progress=_say
    )
    click.echo(json.dumps(report, indent=2) if as_json else benchmark.markdown(report))


@cli.command()
@click.argument("export_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--repo", type=click.Path(file_okay=False, path_type=Path), required=True, help="Triton model repository to write into (other models there are kept)."
)
@click.option(
    "--runtime",
    type=click.Choice(TRITON_RUNTIMES),
    default=TRITON_TRT,
    show_default=True,
    help="What runs the tiles: a TensorRT engine, Triton's ONNX Runtime backend (GPU), ONNX Runtime in a Python model (CPU), or Triton's OpenVINO backend (CPU).",
)
@click.option("--instances", type=int, default=1, show_default=True, help="Tile-model instances (on each GPU of --gpus).")
@click.option("--gpus", help="GPU indices for the tile model's instances, e.g. 0,1  [default: every GPU]")
@click.option("--max-pixels", default="16M", show_default=True, help="Largest image (per view) the whole-image model accepts, e.g. 16M, 500K.")
@click.option("--fp32", is_flag=True, help="--runtime onnx: serve model.onnx instead of model_fp16.onnx.")
@click.option("--json", "as_json", is_flag=True, help="Print the models written as JSON.")
def triton(export_dirs, repo, runtime, instances, gpus, max_pixels, fp32, as_json) -> None:
    """Write a Triton model repository: per export, EXPORT_ID-tiles (the static graph) and EXPORT_ID (whole images, tiled on the server)."""
    from deploytool.serving import repository

    options = repository.RepositoryOptions(
        runtime=runtime, instances=instances, gpus=repository.parse_gpus(gpus), max_pixels=repository.parse_pixels(max_pixels), fp32=fp32
    )
    written = repository.write_repository(list(export_dirs), repo, options, progress=_say)
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

    server.serve_forever(server.TritonServer(repo, host=host, http_port=http_port, env=env), ready_timeout=timeout, say=_say)


@cli.command()
@click.argument("url")
@click.argument("model_id")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output file (one input) or folder.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Requests in flight at once.")
@click.option("--codec", help="Video encoder (as for `run`).")
@click.option("--crf", type=int, help="Video quality (as for `run`).")
@click.option("--pix-fmt", help="Video pixel format (as for `run`).")
@click.option("--preset", help="Video encoder preset (as for `run`).")
@click.option("--lossless", is_flag=True, help="Videos: FFV1 in Matroska storing RGB.")
@click.option("--no-audio", is_flag=True, help="Videos: leave the audio streams out.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def client(url, model_id, inputs, output, concurrency, codec, crf, pix_fmt, preset, lossless, no_audio, as_json) -> None:
    """Restore images and videos with MODEL_ID on the Triton server at URL (e.g. http://127.0.0.1:8000)."""
    from tqdm import tqdm

    from deploytool import video as videos
    from deploytool.serving.client import restore_remote, restore_remote_videos

    image_paths, video_paths = videos.split_inputs(inputs)
    if video_paths:
        from deploytool.inference import destinations

        targets = destinations(video_paths, output) if not image_paths else [output / p.name for p in video_paths]
        encode = videos.EncodeOptions(codec=codec, crf=crf, pix_fmt=pix_fmt, preset=preset, lossless=lossless, audio=not no_audio)
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
                _say(videos.summary_line(item))
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
            _say(f"{item['input']} -> {item['output']} ({item['output_size'][0]}x{item['output_size'][1]}, {item['seconds']:.2f} s)")
    if report.failures:
        total = len(report.failures) + len(report.images)
        first = report.failures[0]
        raise DeployError(f"{len(report.failures)} of {total} image(s) failed; first: {first['input']}: {first['error']}")


def main() -> None:
    cli(prog_name="deploytool")


if __name__ == "__main__":
    main()
