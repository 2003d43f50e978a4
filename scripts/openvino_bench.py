"""ONNX Runtime FP32 against OpenVINO FP32 on the CPU, one id per family, in one run.

    python scripts/openvino_bench.py [--ids ID,ID,...] [--tile 64] [--runs 5] [--threads N] [--json]

Each id is exported with its official architecture and seeded random initialisation (weights do
not change the arithmetic's cost) at a small --tile (a fixed-tile model keeps its own tile and
batch), without the FP16 graph. Both runtimes run the same synthetic batch with the same thread
count, their timed calls alternating (so a change in the machine's load falls on both): latency
per batch is the median of --runs after one warm-up each, tiles/s beside it, and the speed ratio
is ONNX Runtime's latency over OpenVINO's, measured in the same run. The outputs
are compared: max |OpenVINO - ONNX Runtime| and PSNR (clipped to [0, 1], as `verify` computes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deploytool.build import export, registry  # noqa: E402
from deploytool.build.networks import resolve_source  # noqa: E402
from deploytool.errors import DeployError  # noqa: E402
from deploytool.runtime.backends.onnxruntime import OrtRunner  # noqa: E402
from deploytool.runtime.backends.openvino import OpenVinoRunner, openvino_build  # noqa: E402
from deploytool.runtime.input_batches import synthetic_batch  # noqa: E402
from deploytool.runtime.manifest import FP32_FILE, read_manifest  # noqa: E402
from deploytool.verify.benchmark import median_seconds  # noqa: E402
from deploytool.verify.parity import metrics  # noqa: E402


def default_ids() -> list[str]:
    """The first single-image id of every family, in id order."""
    chosen: dict[str, str] = {}
    for model_id, entry in sorted(registry.all_entries().items()):
        if len(entry.views) == 1:
            chosen.setdefault(entry.family, model_id)
    return sorted(chosen.values())


def bench_id(model_id: str, tile: int, runs: int, threads: int, scratch: Path) -> dict:
    entry = registry.get(model_id)
    size = entry.tiling.tile if entry.tiling.fixed_tile else (tile, tile)
    out = scratch / model_id
    started = time.perf_counter()
    source = resolve_source(entry, random_init=True)
    export.export(
        export.ExportRequest(entry=entry, source=source, out_dir=out, tile=size, batch=entry.tiling.batch if entry.tiling.fixed_tile else 1, fp16=False)
    )
    manifest = read_manifest(out)
    print(f"{model_id}: exported at {size[0]}x{size[1]}, batch {manifest.tiling.batch} in {time.perf_counter() - started:.0f} s; timing", file=sys.stderr)
    batch = synthetic_batch(manifest.input.shape, seed=0)
    with OrtRunner(out / FP32_FILE, providers=["CPUExecutionProvider"], threads=threads) as ort, OpenVinoRunner(out / FP32_FILE, threads=threads) as openvino:
        ort_out, openvino_out = ort(batch), openvino(batch)  # the warm-up calls
        ort_times, openvino_times = [], []
        for _ in range(runs):
            ort_times.append(median_seconds(lambda: ort(batch), 1, warmup=0)[0])
            openvino_times.append(median_seconds(lambda: openvino(batch), 1, warmup=0)[0])
    ort_s, openvino_s = statistics.median(ort_times), statistics.median(openvino_times)
    max_abs, _, psnr = metrics(ort_out, openvino_out)
    tiles = manifest.input.shape[0]
    return {
        "model_id": model_id,
        "input_shape": list(manifest.input.shape),
        "ort_s": ort_s,
        "openvino_s": openvino_s,
        "ort_tiles_per_s": tiles / ort_s,
        "openvino_tiles_per_s": tiles / openvino_s,
        "openvino_speed_vs_ort": ort_s / openvino_s,
        "max_abs_vs_ort": max_abs,
        "psnr_vs_ort": psnr,
    }


def markdown(report: dict) -> str:
    lines = [
        f"OpenVINO {report['openvino']}, {report['threads']} threads, {report['cpu']}; median of {report['runs']} runs per batch",
        "",
        "| export | input | ORT FP32 s/batch | OpenVINO FP32 s/batch | ORT tiles/s | OpenVINO tiles/s | OpenVINO vs ORT | max abs vs ORT | PSNR vs ORT (dB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        shape = "x".join(map(str, row["input_shape"]))
        lines.append(
            f"| {row['model_id']} | {shape} | {row['ort_s']:.3f} | {row['openvino_s']:.3f} | {row['ort_tiles_per_s']:.2f} | "
            f"{row['openvino_tiles_per_s']:.2f} | {row['openvino_speed_vs_ort']:.2f}x | {row['max_abs_vs_ort']:.2e} | {row['psnr_vs_ort']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", help="comma-separated model ids  [default: the first single-image id of every family]")
    parser.add_argument("--tile", type=int, default=64, help="input tile in pixels (fixed-tile models keep theirs)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both runtimes")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    try:
        ids = [i.strip() for i in args.ids.split(",") if i.strip()] if args.ids else default_ids()
        for model_id in ids:
            registry.get(model_id)
        with tempfile.TemporaryDirectory(prefix="openvino_bench_") as scratch:
            results = [bench_id(model_id, args.tile, args.runs, args.threads, Path(scratch)) for model_id in ids]
        cpu = platform.processor() or platform.machine()
        report = {"openvino": openvino_build(), "threads": args.threads, "runs": args.runs, "cpu": cpu, "load_average": os.getloadavg()[0], "results": results}
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
