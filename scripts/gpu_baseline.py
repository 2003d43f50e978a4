"""What a CUDA GPU offers without TensorRT: the baseline an engine must beat, and how far
half precision drifts in plain PyTorch.

    python scripts/gpu_baseline.py [--ids hat-x4,swinir-m-x4,...] [--images DIR] [--weights-dir DIR]
                                   [--runs 20] [--no-compile] [--json]

For every model id (default: one per family), on crops of real images at the id's default tile
and batch: our definition in FP32 against itself in FP16 and BF16 (max/mean |diff|, PSNR), and
median latencies of eager FP32, eager FP16, eager BF16 and torch.compile FP16, with ratios
against eager FP32 measured in the same run. Weights: the official file from --weights-dir
when present, else seeded random init (the report says which).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploytool.build import registry
from deploytool.build.networks import build_def, load_state_dict, resolve_source
from deploytool.runtime import input_batches
from deploytool.verify.benchmark import median_seconds
from deploytool.verify.parity import metrics

DEFAULT_IDS = ("swinir-m-x4", "hat-x4", "restormer-derain", "ipt-sr-x4", "esrt-x2")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "testsets"


def drift(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """How far a half-precision output is from FP32 (both in [0, 1] units)."""
    max_abs, mean_abs, db = metrics(reference.float().cpu().numpy(), candidate.float().cpu().numpy())
    return {"max_abs": max_abs, "mean_abs": mean_abs, "psnr": db, "finite": bool(torch.isfinite(candidate).all())}


def latency(run: Callable[[], Any], runs: int, device: torch.device) -> float:
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return median_seconds(run, runs, warmup=3, synchronize=synchronize)[0]


def measure(model: torch.nn.Module, batch: torch.Tensor, *, runs: int, compile_fp16: bool) -> dict[str, Any]:
    """Parity of FP16/BF16 against FP32 on `batch`, and latencies of each way to run it."""
    device = batch.device
    result: dict[str, Any] = {"parity": {}, "latency_s": {}}
    with torch.inference_mode():
        reference = model.float()(batch)
        result["latency_s"]["eager FP32"] = latency(lambda: model(batch), runs, device)
        for label, dtype in (("FP16", torch.float16), ("BF16", torch.bfloat16)):
            half_model, half_batch = model.to(dtype), batch.to(dtype)
            result["parity"][label] = drift(reference, half_model(half_batch))
            result["latency_s"][f"eager {label}"] = latency(lambda m=half_model, b=half_batch: m(b), runs, device)
        model.float()
    if compile_fp16:
        compiled, half_batch = torch.compile(model.half()), batch.half()
        with torch.inference_mode():
            result["parity"]["FP16 compiled"] = drift(reference, compiled(half_batch))
            result["latency_s"]["torch.compile FP16"] = latency(lambda: compiled(half_batch), runs, device)
        model.float()
    base = result["latency_s"]["eager FP32"]
    result["speed_vs_eager_fp32"] = {name: base / seconds for name, seconds in result["latency_s"].items()}
    return result


def real_batch(entry: registry.ModelEntry, images_dir: Path | None) -> tuple[np.ndarray, str]:
    shape = (entry.tiling.batch, entry.channels, *entry.tiling.tile)
    candidates = [images_dir] if images_dir else [SHARED / "Urban100", SHARED / "Set14" / "HR", SHARED / "Set5" / "HR"]
    for folder in candidates:
        if folder and folder.is_dir():
            batches = input_batches.image_crops(input_batches.list_images(folder), shape, model_id=entry.id, limit=1)
            if batches:
                return batches[0], f"crops of {folder}"
    return input_batches.synthetic_batch(shape, seed=0), "synthetic textures (no image folder found)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", default=",".join(DEFAULT_IDS))
    parser.add_argument("--images", type=Path, help="folder of real images to crop tiles from")
    parser.add_argument("--weights-dir", type=Path, help="folder holding official checkpoints by their file names")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test this script")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch; this script measures what a GPU offers (use --device cpu only to smoke-test it)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__, "models": []}
    for model_id in [i.strip() for i in args.ids.split(",") if i.strip()]:
        entry = registry.get(model_id)
        official = args.weights_dir / entry.weights.filename if args.weights_dir and entry.weights.filename else None
        have_weights = official is not None and official.is_file()
        source = resolve_source(entry, weights=official if have_weights else None, random_init=not have_weights, progress=False)
        model = build_def(entry, load_state_dict(entry, source)).to(device)
        array, where = real_batch(entry, args.images)
        print(f"{model_id}: {tuple(array.shape)} from {where}, {source.describe()}", file=sys.stderr)
        result = measure(model, torch.from_numpy(array).to(device), runs=args.runs, compile_fp16=not args.no_compile)
        report["models"].append({"model_id": model_id, "input_shape": list(array.shape), "inputs": where, "weights": source.describe(), **result})
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    lines = [f"{report['device']}, torch {report['torch']}", ""]
    lines += ["| model | input | half | max abs | mean abs | PSNR dB |", "|---|---|---|---:|---:|---:|"]
    for model in report["models"]:
        for label, d in model["parity"].items():
            lines.append(
                f"| {model['model_id']} | {'x'.join(map(str, model['input_shape']))} | {label} | {d['max_abs']:.2e} | {d['mean_abs']:.2e} | {d['psnr']:.1f} |"
            )
    lines += ["", "| model | runtime | latency (ms) | vs eager FP32 |", "|---|---|---:|---:|"]
    for model in report["models"]:
        for name, seconds in model["latency_s"].items():
            lines.append(f"| {model['model_id']} | {name} | {seconds * 1e3:.1f} | {model['speed_vs_eager_fp32'][name]:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
