"""Benchmark one model id: original vs our definition vs ONNX Runtime FP32/FP16, in one run.

    python scripts/bench.py swinir-m-x4 [--tile 64] [--batch 1] [--weights FILE] [--runs 5] [--json]
    python scripts/bench.py swinir-m-x4 --exporters-only [...]

Latencies are medians over --runs after one warm-up, on this machine, per batch of --batch
tiles (throughput in tiles/s beside them); ratios are
against the original PyTorch model measured in the same run. The naive export is a plain
torch.onnx.export of the original (built with img_size = tile, its most favourable case, so its
masks are buffers) followed by onnxsim: its node count, file size and ONNX Runtime latency
stand beside ours. Our definition through torch's TorchScript exporter (the exporter before
torch.export), finished as the export finishes its graph, is timed too while torch still has
that exporter: `torch_export_vs_torchscript` is our graph's ONNX Runtime latency over that one's,
their timed runs alternating. `--exporters-only` measures that ratio alone (an FP32-only export,
no original, no naive export, no FP16 graph). Where torch cannot export the original naively
(torch 2.15's TorchScript exporter fails on the original ESRT's F.fold), the report says why and
has no naive row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from deploytool.build import export, registry
from deploytool.build.networks import arch_for, build_def, build_original, load_state_dict, resolve_source
from deploytool.runtime.backends.onnxruntime import OrtRunner
from deploytool.runtime.backends.torch import TorchRunner
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import FP16_FILE, FP32_FILE, read_manifest
from deploytool.verify.benchmark import alternating_medians, median_seconds


def median_latency(run, batch: np.ndarray, runs: int) -> float:
    return median_seconds(lambda: run(batch), runs)[0]


def naive_export(model: torch.nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    """torch.onnx.export's TorchScript exporter as a user would call it: opset 17, or the next
    one the model needs (IPT's F.fold exports as Col2Im, which needs opset 18)."""
    for opset in (17, 18):
        buffer = io.BytesIO()
        try:
            # the exporter prints the whole graph to stdout when an op needs a newer opset
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (torch.zeros(shape),), buffer, dynamo=False, opset_version=opset)
        except torch.onnx.errors.UnsupportedOperatorError:
            if opset == 18:
                raise
            print(f"naive export needs a newer opset than {opset}; retrying with 18", file=sys.stderr)
            continue
        return onnx.load_from_string(buffer.getvalue())
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_id")
    parser.add_argument("--tile", type=int, help="square tile (default: the model's)")
    parser.add_argument("--batch", type=int, default=1, help="tiles per run (default: 1)")
    parser.add_argument("--weights", help="checkpoint (default: seeded random init)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--exporters-only", action="store_true", help="only our graph's latency over the TorchScript exporter's")
    args = parser.parse_args(argv)

    entry = registry.get(args.model_id)
    tile = (args.tile, args.tile) if args.tile else entry.tiling.tile
    source = resolve_source(entry, weights=args.weights, random_init=args.weights is None)
    state_dict = load_state_dict(entry, source)
    arch = arch_for(entry, state_dict)
    shape = (args.batch, entry.channels, *tile)
    batch = synthetic_batch(shape, seed=0)
    torch.set_num_threads(torch.get_num_threads())

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / entry.id
        started = time.perf_counter()
        if not _export(entry, out, tile, args.batch, args.weights, fp16=not args.exporters_only):
            return 1
        export_seconds = time.perf_counter() - started
        manifest = read_manifest(out)
        if args.exporters_only:
            return _exporters_only(entry, build_def(entry, state_dict), shape, out / FP32_FILE, Path(tmp) / "torchscript.onnx", batch, args)
        print("timing the original, our definition, ONNX Runtime FP32 and FP16", file=sys.stderr)
        original = TorchRunner(build_original(entry, arch, state_dict), name="original")
        ours = TorchRunner(build_def(entry, state_dict), name="ours")
        rows = [
            ("original PyTorch eager (spandrel)", median_latency(original, batch, args.runs)),
            ("our definition, PyTorch eager", median_latency(ours, batch, args.runs)),
            (ORT_FP32_ROW, median_latency(OrtRunner(out / FP32_FILE, name="ort"), batch, args.runs)),
            ("ONNX Runtime FP16 graph (CPU)", median_latency(OrtRunner(out / FP16_FILE, name="ort-fp16"), batch, args.runs)),
        ]
        print("naive export of the original, then onnxsim", file=sys.stderr)
        naive = _naive_export(entry, arch, state_dict, shape, Path(tmp) / "naive.onnx", original.model)
        if naive.error is None:
            rows.insert(2, (NAIVE_ROW, median_latency(OrtRunner(naive.path, name="naive"), batch, args.runs)))
        else:
            print(f"naive export of the original failed, no row for it: {naive.error}", file=sys.stderr)
        print("our definition through the TorchScript exporter, finished as the export finishes its graph", file=sys.stderr)
        theirs, ours_again = _against_torchscript(entry, ours.model, shape, out / FP32_FILE, Path(tmp) / "torchscript.onnx", batch, args.runs)
        rows.insert([name for name, _ in rows].index(ORT_FP32_ROW) + 1, (TORCHSCRIPT_ROW, theirs))
        exporter_ratio = ours_again / theirs

    result = _result(entry, tile, args.batch, source, rows, naive, manifest, export_seconds)
    result["torch_export_vs_torchscript"] = round(exporter_ratio, 3)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_report(result, rows, naive, tile, arch, source, export_seconds)
    return 0


ORT_FP32_ROW = "ONNX Runtime FP32 (CPU)"
NAIVE_ROW = "ONNX Runtime FP32, naive export of the original (CPU)"
TORCHSCRIPT_ROW = "ONNX Runtime FP32, our definition via the TorchScript exporter (CPU)"


def _export(entry, out: Path, tile: tuple[int, int], batch: int, weights: str | None, fp16: bool = True) -> bool:
    # A separate process, so that the memory calibration held is returned before timing.
    weights_options = ["--weights", weights] if weights else ["--random-init"]
    command = [
        sys.executable,
        "-m",
        "deploytool",
        "export",
        entry.id,
        "--out",
        str(out),
        "--tile",
        f"{tile[0]}x{tile[1]}",
        "--batch",
        str(batch),
        *weights_options,
        *([] if fp16 else ["--precision", "fp32"]),
    ]
    return subprocess.run(command).returncode == 0


@dataclass
class NaiveExport:
    path: Path
    nodes: int
    mb: float
    as_shipped: int | None  # traced nodes at the shipped img_size, when the tile differs from it
    error: str | None = None  # why torch could not export the original (then no graph at `path`)


def _naive_export(entry, arch: dict, state_dict: dict, shape: tuple[int, ...], path: Path, original_model) -> NaiveExport:
    """A plain torch.onnx.export of the original, then onnxsim, saved at `path`."""
    tile = shape[2:]
    sized_by_img_size = "img_size" in arch and tile[0] == tile[1]
    reference_arch = {**arch, "img_size": tile[0]} if sized_by_img_size else arch
    naive_model = build_original(entry, reference_arch, _with_masks_for(entry, reference_arch, state_dict))
    try:
        traced = naive_export(naive_model, shape)
    except Exception as exc:  # whatever torch's exporter raises on the original is the finding
        return NaiveExport(path, 0, 0.0, None, f"{type(exc).__name__}: {exc}".splitlines()[0])
    naive, _ = export.simplify(traced)
    del traced
    onnx.save(naive, str(path))
    nodes, mb = len(naive.graph.node), path.stat().st_size / 1e6
    del naive
    # At a tile other than its img_size the original recomputes masks in every block; onnxsim
    # on that graph ran past 15 minutes, so only the traced size is reported.
    as_shipped = len(naive_export(original_model, shape).graph.node) if sized_by_img_size and tile[0] != arch["img_size"] else None
    return NaiveExport(path, nodes, mb, as_shipped)


def _against_torchscript(
    entry, model: torch.nn.Module, shape: tuple[int, ...], ours_path: Path, path: Path, batch: np.ndarray, runs: int
) -> tuple[float, float]:
    """Median ONNX Runtime latency of (the TorchScript exporter's graph of our definition,
    finished as the export finishes its graph and saved at `path`; our export's graph), their
    timed runs alternating so that a change in the machine's load falls on both."""
    torchscript = export.finish_graph(naive_export(model, shape), entry.fold_limit_mb).graph
    onnx.save(torchscript, str(path))
    del torchscript
    runners = [OrtRunner(path, name="torchscript"), OrtRunner(ours_path, name="ort")]
    try:
        for runner in runners:
            runner(batch)  # warm-up
        medians = alternating_medians({runner.name: lambda runner=runner: runner(batch) for runner in runners}, runs)
    finally:
        for runner in runners:
            runner.close()
    return medians["torchscript"], medians["ort"]


def _exporters_only(entry, model: torch.nn.Module, shape: tuple[int, ...], ours_path: Path, path: Path, batch: np.ndarray, args) -> int:
    theirs, ours = _against_torchscript(entry, model, shape, ours_path, path, batch, args.runs)
    result = {
        "model_id": entry.id,
        "input_shape": list(shape),
        "threads": torch.get_num_threads(),
        "latency_s": {"torch.export": round(ours, 4), "torchscript": round(theirs, 4)},
        "torch_export_vs_torchscript": round(ours / theirs, 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{entry.id} at {'x'.join(map(str, shape))}: ONNX Runtime FP32 latency, torch.export graph {ours:.3f} s / TorchScript exporter's graph {theirs:.3f} s = {ours / theirs:.3f}"
        )
    return 0


def _result(entry, tile, batch: int, source, rows: list[tuple[str, float]], naive: NaiveExport, manifest, export_seconds: float) -> dict:
    baseline = rows[0][1]
    return {
        "model_id": entry.id,
        "tile": list(tile),
        "batch": batch,
        "weights": source.describe(),
        "threads": torch.get_num_threads(),
        "latency_s": {name: round(seconds, 4) for name, seconds in rows},
        "tiles_per_s": {name: round(batch / seconds, 3) for name, seconds in rows},
        "speedup_vs_original": {name: round(baseline / seconds, 2) for name, seconds in rows},
        "nodes_after_onnxsim": {"naive export of the original": naive.nodes or None, "ours": manifest.graph.nodes},
        "naive_export_error": naive.error,
        "naive_traced_nodes_at_shipped_img_size": naive.as_shipped,
        "model_onnx_mb": round(manifest.files[FP32_FILE].bytes / 1e6, 2),
        "naive_model_onnx_mb": round(naive.mb, 2) if naive.error is None else None,
        "model_fp16_onnx_mb": round(manifest.files[FP16_FILE].bytes / 1e6, 2),
        "fp16_flop_share": round(manifest.fp16.fp16_flop_share, 4),
        "export_wall_s": round(export_seconds, 1),
    }


def _print_report(result: dict, rows: list[tuple[str, float]], naive: NaiveExport, tile, arch: dict, source, export_seconds: float) -> None:
    batch, baseline = result["batch"], rows[0][1]
    print(f"\n{result['model_id']}, tile {tile[0]}x{tile[1]}, batch {batch}, {result['threads']} threads, {source.describe()}\n")
    print("| runtime | latency per batch (s) | tiles/s | speed vs original |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {batch / seconds:.2f} | {baseline / seconds:.2f}x |")
    if naive.error is None:
        print(f"\nnodes after onnxsim: naive export of the original {naive.nodes}, ours {result['nodes_after_onnxsim']['ours']}")
        print(f"model.onnx after onnxsim: naive export of the original {naive.mb:.1f} MB, ours {result['model_onnx_mb']} MB")
    else:
        print(f"\nnaive export of the original failed: {naive.error}")
    if naive.as_shipped:
        print(f"naive export of the original as shipped (img_size {arch.get('img_size')}, tile {tile[0]}): {naive.as_shipped} nodes before onnxsim")
    print(f"model.onnx {result['model_onnx_mb']} MB, model_fp16.onnx {result['model_fp16_onnx_mb']} MB; FP16 share of FLOPs {result['fp16_flop_share']:.1%}")
    print(f"export wall time (trace, onnxsim, checks, FP16 calibration): {export_seconds:.1f} s")
    print(f"ONNX Runtime FP32 latency, torch.export graph / TorchScript exporter's graph: {result['torch_export_vs_torchscript']:.3f}")


def _with_masks_for(entry, arch, state_dict):
    """The state dict with masks recomputed for the reference's img_size (only buffers differ)."""
    from deploytool.build.networks import instantiate_original

    fresh = instantiate_original(entry, arch).state_dict()
    return {key: (fresh[key] if key.rsplit(".", 1)[-1].startswith("attn_mask") else value) for key, value in state_dict.items()}


if __name__ == "__main__":
    sys.exit(main())
