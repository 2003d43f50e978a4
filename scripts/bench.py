"""Benchmark one model id: original vs our definition vs ONNX Runtime FP32/FP16, in one run.

    python scripts/bench.py swinir-m-x4 [--tile 64] [--batch 1] [--weights FILE] [--runs 5] [--json]

Latencies are medians over --runs after one warm-up, on this machine, per batch of --batch
tiles (throughput in tiles/s beside them); ratios are
against the original PyTorch model measured in the same run. The naive export is a plain
torch.onnx.export of the original (built with img_size = tile, its most favourable case, so its
masks are buffers) followed by onnxsim: its node count, file size and ONNX Runtime latency
stand beside ours.
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
from deploytool.verify.benchmark import median_seconds


def median_latency(run, batch: np.ndarray, runs: int) -> float:
    return median_seconds(lambda: run(batch), runs)[0]


def naive_export(model: torch.nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    """torch.onnx.export as a user would call it: our opset, or the next one the model needs
    (IPT's F.fold exports as Col2Im, which needs opset 18)."""
    for opset in (export.OPSET, 18):
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
        # A separate process, so that the memory calibration held is returned before timing.
        weights = ["--weights", args.weights] if args.weights else ["--random-init"]
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
            str(args.batch),
            *weights,
        ]
        if subprocess.run(command).returncode:
            return 1
        export_seconds = time.perf_counter() - started
        manifest = read_manifest(out)
        print("timing the original, our definition, ONNX Runtime FP32 and FP16", file=sys.stderr)
        original = TorchRunner(build_original(entry, arch, state_dict), name="original")
        ours = TorchRunner(build_def(entry, state_dict), name="ours")
        rows = [
            ("original PyTorch eager (spandrel)", median_latency(original, batch, args.runs)),
            ("our definition, PyTorch eager", median_latency(ours, batch, args.runs)),
            ("ONNX Runtime FP32 (CPU)", median_latency(OrtRunner(out / FP32_FILE, name="ort"), batch, args.runs)),
            ("ONNX Runtime FP16 graph (CPU)", median_latency(OrtRunner(out / FP16_FILE, name="ort-fp16"), batch, args.runs)),
        ]
        print("naive export of the original, then onnxsim", file=sys.stderr)
        sized_by_img_size = "img_size" in arch and tile[0] == tile[1]
        reference_arch = {**arch, "img_size": tile[0]} if sized_by_img_size else arch
        naive_model = build_original(entry, reference_arch, _with_masks_for(entry, reference_arch, state_dict))
        naive, _ = export.simplify(naive_export(naive_model, shape))
        naive_path = Path(tmp) / "naive.onnx"
        onnx.save(naive, str(naive_path))
        naive_nodes, naive_mb = len(naive.graph.node), naive_path.stat().st_size / 1e6
        del naive
        rows.insert(2, ("ONNX Runtime FP32, naive export of the original (CPU)", median_latency(OrtRunner(naive_path, name="naive"), batch, args.runs)))
        # At a tile other than its img_size the original recomputes masks in every block; onnxsim
        # on that graph ran past 15 minutes, so only the traced size is reported.
        as_shipped = len(naive_export(original.model, shape).graph.node) if sized_by_img_size and tile[0] != arch["img_size"] else None

    baseline = rows[0][1]
    result = {
        "model_id": entry.id,
        "tile": list(tile),
        "batch": args.batch,
        "weights": source.describe(),
        "threads": torch.get_num_threads(),
        "latency_s": {name: round(seconds, 4) for name, seconds in rows},
        "tiles_per_s": {name: round(args.batch / seconds, 3) for name, seconds in rows},
        "speedup_vs_original": {name: round(baseline / seconds, 2) for name, seconds in rows},
        "nodes_after_onnxsim": {"naive export of the original": naive_nodes, "ours": manifest.graph.nodes},
        "naive_traced_nodes_at_shipped_img_size": as_shipped,
        "model_onnx_mb": round(manifest.files[FP32_FILE].bytes / 1e6, 2),
        "naive_model_onnx_mb": round(naive_mb, 2),
        "model_fp16_onnx_mb": round(manifest.files[FP16_FILE].bytes / 1e6, 2),
        "fp16_flop_share": round(manifest.fp16.fp16_flop_share, 4),
        "export_wall_s": round(export_seconds, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"\n{entry.id}, tile {tile[0]}x{tile[1]}, batch {args.batch}, {result['threads']} threads, {source.describe()}\n")
    print("| runtime | latency per batch (s) | tiles/s | speed vs original |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {args.batch / seconds:.2f} | {baseline / seconds:.2f}x |")
    print(f"\nnodes after onnxsim: naive export of the original {naive_nodes}, ours {manifest.graph.nodes}")
    print(f"model.onnx after onnxsim: naive export of the original {naive_mb:.1f} MB, ours {result['model_onnx_mb']} MB")
    if as_shipped:
        print(f"naive export of the original as shipped (img_size {arch.get('img_size')}, tile {tile[0]}): {as_shipped} nodes before onnxsim")
    print(f"model.onnx {result['model_onnx_mb']} MB, model_fp16.onnx {result['model_fp16_onnx_mb']} MB; FP16 share of FLOPs {result['fp16_flop_share']:.1%}")
    print(f"export wall time (trace, onnxsim, checks, FP16 calibration): {export_seconds:.1f} s")
    return 0


def _with_masks_for(entry, arch, state_dict):
    """The state dict with masks recomputed for the reference's img_size (only buffers differ)."""
    from deploytool.build.networks import instantiate_original

    fresh = instantiate_original(entry, arch).state_dict()
    return {key: (fresh[key] if key.rsplit(".", 1)[-1].startswith("attn_mask") else value) for key, value in state_dict.items()}


if __name__ == "__main__":
    sys.exit(main())
