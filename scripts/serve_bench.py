"""Throughput and latency of an export served by Triton (python-ort, on this machine's CPU), against
local `deploytool run --backend ort` on the same images, as ratios from one run.

    python scripts/serve_bench.py [--export build/esrt-x2] [--images DIR] [--clients 1,2,4] [--instances 1,2] [--json]

Local: the images one after another through the same code `deploytool run` uses (ONNX Runtime on
every core, in process: no interpreter start-up is counted). Served: for each count of `<id>-tiles`
instances, a repository written by `deploytool triton --runtime python-ort`, the wheel's tritonserver
on 127.0.0.1, and `deploytool client`'s library with 1, 2, 4 requests in flight; one warm-up image
first on both sides, and the local pass runs before and after the served ones (the ratios use both). Latency is per image, from reading it to its file written, on both sides. Without --export,
esrt-x2 is exported at a 64 px tile, with ../shared's epoch-20 weights when present.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from deploytool.build import export, registry
from deploytool.build.networks import resolve_source
from deploytool.errors import DeployError
from deploytool.runtime import inference
from deploytool.runtime.backends import TRITON_PYTHON_ORT
from deploytool.runtime.backends.onnxruntime import OrtRunner
from deploytool.runtime.input_batches import list_images
from deploytool.runtime.manifest import FP32_FILE, read_manifest
from deploytool.serving import repository, server
from deploytool.serving.client import restore_remote

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ESRT_WEIGHTS = SHARED / "weights" / "esrt_x2_partial_epoch20.pth"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(label: dict, latencies: list[float], wall: float) -> dict:
    return {
        **label,
        "images": len(latencies),
        "wall_s": round(wall, 3),
        "images_per_s": round(len(latencies) / wall, 4),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "latencies": [round(v, 4) for v in latencies],
    }


def default_export(base: Path) -> Path:
    entry = registry.get("esrt-x2")
    if ESRT_WEIGHTS.is_file():
        source = resolve_source(entry, weights=ESRT_WEIGHTS)
    else:
        source = resolve_source(entry, random_init=True)
    out = base / "esrt-x2"
    export.export(export.ExportRequest(entry=entry, source=source, out_dir=out, tile=(64, 64), batch=1, fp16=False, calibration_count=2))
    return out


def bench_local(export_dir: Path, paths: list[Path], out: Path) -> dict:
    manifest = read_manifest(export_dir)
    latencies = []
    with OrtRunner(manifest.check_file(export_dir, FP32_FILE), providers=["CPUExecutionProvider"]) as runner:
        inference.restore_file(runner, manifest, paths[0], out / "warmup" / paths[0].name, overlap=manifest.overlap())  # as the server gets
        started = time.perf_counter()
        for path in paths:
            begun = time.perf_counter()
            inference.restore_file(runner, manifest, path, out / path.name, overlap=manifest.overlap())
            latencies.append(time.perf_counter() - begun)
        wall = time.perf_counter() - started
    return summary({"where": "local run (ort)", "instances": None, "clients": 1}, latencies, wall)


def combined(before: dict, after: dict) -> dict:
    """Both local passes as one baseline: images over total wall time, median/p95 of all latencies."""
    images = before["images"] + after["images"]
    wall = before["wall_s"] + after["wall_s"]
    return {
        **before,
        "where": "local run (ort), 2 passes",
        "images": images,
        "wall_s": round(wall, 3),
        "images_per_s": round(images / wall, 4),
        "p50_s": round(statistics.median(before["latencies"] + after["latencies"]), 3),
        "p95_s": round(percentile(before["latencies"] + after["latencies"], 0.95), 3),
        "passes_images_per_s": [before["images_per_s"], after["images_per_s"]],
    }


def bench_served(export_dir: Path, paths: list[Path], base: Path, instances: int, client_counts: list[int], say) -> list[dict]:
    repo = base / f"models-{instances}"
    options = repository.RepositoryOptions(runtime=TRITON_PYTHON_ORT, instances=instances)
    repository.write_repository([export_dir], repo, options)
    model = read_manifest(export_dir).model_id
    rows = []
    with server.TritonServer(repo, http_port=server.free_port()) as triton:
        restore_remote(triton.url, model, paths[:1], base / "warmup", concurrency=1)
        for clients in client_counts:
            started = time.perf_counter()
            report = restore_remote(triton.url, model, paths, base / f"served-{instances}-{clients}", concurrency=clients)
            wall = time.perf_counter() - started
            if report.failures:
                raise DeployError(f"{len(report.failures)} image(s) failed: {report.failures[0]}")
            rows.append(summary({"where": "triton python-ort", "instances": instances, "clients": clients}, [r["seconds"] for r in report.images], wall))
            say(f"  {instances} tile instance(s), {clients} client(s): {rows[-1]['images_per_s']:.3f} images/s")
    return rows


def markdown(rows: list[dict], local: dict, model: str, images: int) -> str:
    lines = [
        f"{model}, {images} images; ratios against local `run` ({local['images_per_s']:.3f} images/s, p50 {local['p50_s']:.2f} s; "
        f"its passes before and after: {' and '.join(f'{v:.3f}' for v in local['passes_images_per_s'])} images/s)",
        "",
        "| where | tile instances | clients | images/s | p50 s | p95 s | throughput vs local | p50 vs local |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in [local, *rows]:
        instances = "-" if row["instances"] is None else row["instances"]
        lines.append(
            f"| {row['where']} | {instances} | {row['clients']} | {row['images_per_s']:.3f} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | "
            f"{row['images_per_s'] / local['images_per_s']:.2f}x | {row['p50_s'] / local['p50_s']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="Export folder (default: esrt-x2 at a 64 px tile, exported now).")
    parser.add_argument("--images", type=Path, default=SHARED / "testsets" / "Set14" / "LR_bicubic" / "X2")
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument("--instances", default="1,2")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        server.find_environment()
        with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
            base = Path(scratch)
            export_dir = args.export or default_export(base)
            paths = list_images(args.images)
            say(f"local run on {len(paths)} images")
            before = bench_local(export_dir, paths, base / "local")
            say(f"  local: {before['images_per_s']:.3f} images/s")
            rows = []
            for instances in [int(n) for n in args.instances.split(",")]:
                rows += bench_served(export_dir, paths, base, instances, [int(n) for n in args.clients.split(",")], say)
            # local again: on a shared machine the load can change during the run; the ratios use
            # both local passes, and the spread between them says how far to trust them
            say("local run again")
            after = bench_local(export_dir, paths, base / "local")
            local = combined(before, after)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = read_manifest(export_dir).model_id if args.export else "esrt-x2"
    if args.json:
        print(json.dumps({"model": model, "local": local, "served": rows}, indent=2))
    else:
        print(markdown(rows, local, model, len(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
