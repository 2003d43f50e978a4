"""Commands that judge an export: `verify`, `compare`, `eval` and `bench`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deploytool.cli.group import cli
from deploytool.cli.options import device_option, json_option, needs_extra, say, weights_option
from deploytool.runtime import backends as registry


@cli.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path), help="Real images: whole-image original vs tiled backends.")
@weights_option("The export's checkpoint, if it moved.")
@click.option(
    "--backends",
    default=",".join(registry.verify_default_names()),
    show_default=True,
    help=f"Comma-separated backends to run, of {', '.join(registry.names())}. Without --save-outputs the original always runs.",
)
@click.option("--overlap", type=int, help="Tile overlap for --images (default: the model's).")
@click.option("--max-images", type=click.IntRange(1), help="Use at most this many images.")
@click.option(
    "--save-outputs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save inputs and raw outputs to this .npz, to judge with `deploytool compare` (runs exactly --backends).",
)
@click.option("--report", "html", is_flag=True, help="Also write parity.html: error heat maps and worst crops.")
@device_option()
@json_option("Print the report as JSON.")
@needs_extra("export")
def verify(export_dir, images_dir, weights, backends, overlap, max_images, save_outputs, html, device, as_json) -> None:
    """Compare the original model, our definition, ONNX FP32/FP16 and TensorRT on the same inputs."""
    from deploytool.verify import parity

    report = parity.verify(
        export_dir,
        images_dir=images_dir,
        weights=weights,
        backends=registry.parse_backends(backends),
        overlap=overlap,
        max_images=max_images,
        save_outputs=save_outputs,
        html=html,
        device=device,
        progress=say,
    )
    if report is None:
        say(f"no original in this run: judge {save_outputs} with `deploytool compare` next to results that hold it")
        return
    _print_parity(report, as_json)


def _print_parity(report: dict, as_json: bool) -> None:
    from deploytool.verify import parity

    click.echo(json.dumps(report, indent=2, default=str) if as_json else parity.markdown(report))
    parity.raise_on_failure(report)


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), help="Write parity.json and parity.md here.")
@click.option("--report", "html", is_flag=True, help="With --report-dir: also write parity.html.")
@json_option("Print the report as JSON.")
@needs_extra("export")
def compare(results, report_dir, html, as_json) -> None:
    """Judge results saved by `verify --save-outputs` (from any machines), without running a model."""
    from deploytool.verify import parity

    if html and report_dir is None:
        raise click.UsageError("--report needs --report-dir")
    _print_parity(parity.compare(list(results), report_dir=report_dir, html=html), as_json)


@cli.command("eval")
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder with HR/ and LR_bicubic/X<scale>/.")
@click.option("--scale", type=int, required=True)
@click.option(
    "--methods",
    default="original,ort,ort-fp16,bicubic",
    show_default=True,
    help=f"original (whole image; `reference` is its deprecated name), {', '.join(registry.runtime_names())} (tiled), bicubic.",
)
@click.option("--overlap", type=int, help="Tile overlap (default: the model's).")
@weights_option("The export's checkpoint, if it moved.")
@device_option()
@json_option(None)
@needs_extra("export")
def evaluate(export_dir, dataset, scale, methods, overlap, weights, device, as_json) -> None:
    """PSNR/SSIM on the Y channel of an SR test set (BasicSR convention), with a bicubic baseline."""
    from deploytool.build.networks import export_weights
    from deploytool.build.runners import open_runner
    from deploytool.runtime.manifest import read_manifest
    from deploytool.verify import evaluation
    from deploytool.verify.parity import original_runner

    manifest = read_manifest(export_dir)
    overlap = manifest.overlap(overlap)
    names = evaluation.method_names(methods, say)
    registry.check_options_apply(names, device)
    chosen = {}
    for method in names:
        if method == evaluation.BICUBIC:
            chosen[method] = None
        elif evaluation.is_original(method):
            entry, _, state_dict = export_weights(manifest, weights)
            chosen[method] = evaluation.whole_image_method(original_runner(entry, state_dict))
        else:
            chosen[method] = evaluation.tiled_method(
                open_runner(export_dir, manifest, method, weights=weights, **registry.get(method).own_options(device)), manifest, overlap
            )
    report = evaluation.evaluate(manifest.model_id, manifest.scale, dataset, chosen, scale=scale, progress=say)
    click.echo(json.dumps(report, indent=2) if as_json else evaluation.markdown(report))


@cli.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--backend",
    "backends",
    default="ort,ort-fp16",
    show_default=True,
    help=f"Comma-separated: {', '.join(registry.runtime_names())}; ratios are against the first.",
)
@click.option("--runs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True)
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay one captured CUDA graph per batch.")
@weights_option("The export's checkpoint, if it moved (torch backend).")
@device_option()
@json_option(None)
@needs_extra("export")
def bench(export_dir, backends, runs, warmup, cuda_graph, weights, device, as_json) -> None:
    """Latency and tiles/s of an export's backends on this machine, in one run."""
    from deploytool.verify import benchmark

    report = benchmark.bench(
        export_dir,
        registry.parse_backends(backends, registry.runtime_names()),
        runs=runs,
        warmup=warmup,
        cuda_graph=cuda_graph,
        weights=weights,
        device=device,
        progress=say,
    )
    click.echo(json.dumps(report, indent=2) if as_json else benchmark.markdown(report))
