"""`deploytool bench`: latency and throughput of an export's backends on this machine.

Every backend runs the export's static batch of synthetic tiles: a warm-up, then timed runs;
medians and ratios against the first backend listed, all measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import read_manifest


def median_seconds(run: Callable[[], Any], runs: int, *, warmup: int = 1, synchronize: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """(median, min) wall time of `run()` over `runs` timed calls after `warmup` untimed ones;
    `synchronize` waits for asynchronous work (a CUDA stream) before each clock reading."""
    for _ in range(warmup):
        run()
    synchronize()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


def alternating_medians(calls: dict[str, Callable[[], Any]], runs: int) -> dict[str, float]:
    """Median wall time of each call over `runs` rounds that time every call once, in turn, so
    that a change in the machine's load falls on all of them (warm-ups are the caller's)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            times[name].append(median_seconds(call, 1, warmup=0)[0])
    return {name: statistics.median(values) for name, values in times.items()}


def bench(
    export_dir: str | Path,
    backends: list[str],
    *,
    runs: int = 10,
    warmup: int = 2,
    cuda_graph: bool = False,
    weights: str | Path | None = None,
    device: str | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    from deploytool.build.runners import open_runner
    from deploytool.runtime import backends as registry

    registry.check_options_apply(backends, device, cuda_graph)
    manifest = read_manifest(export_dir)
    shape = manifest.input.shape
    batch = synthetic_batch(shape, seed=0)
    results = []
    for backend in backends:
        progress(f"{backend}: {warmup} warm-up and {runs} timed runs of a {'x'.join(map(str, shape))} batch")
        with open_runner(export_dir, manifest, backend, weights=weights, **registry.get(backend).own_options(device, cuda_graph)) as runner:
            median, fastest = median_seconds(lambda: runner(batch), runs, warmup=warmup)
            where = runner.device
        results.append({"backend": backend, "device": where, "median_s": median, "min_s": fastest, "tiles_per_s": shape[0] / median})
    baseline = results[0]["median_s"] if results else 1.0
    for item in results:
        item["speed_vs_first"] = baseline / item["median_s"]
    return {"model_id": manifest.model_id, "input_shape": list(shape), "runs": runs, "cuda_graph": cuda_graph, "results": results}


def markdown(report: dict[str, Any]) -> str:
    shape = "x".join(map(str, report["input_shape"]))
    lines = [
        f"{report['model_id']}, batch of {shape}, {report['runs']} runs (median)",
        "",
        "| backend | device | latency (ms) | tiles/s | speed vs first |",
        "|---|---|---:|---:|---:|",
    ]
    for item in report["results"]:
        lines.append(f"| {item['backend']} | {item['device']} | {item['median_s'] * 1e3:.1f} | {item['tiles_per_s']:.2f} | {item['speed_vs_first']:.2f}x |")
    return "\n".join(lines)
