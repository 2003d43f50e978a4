"""ONNX Runtime FP32 against OpenVINO FP32, OpenVINO BF16 with the plan and whole-graph BF16 on the
CPU, one id per family, in one run.

    python scripts/openvino_bench.py [--ids ID,ID,...] [--tile PX] [--runs 5] [--threads N]
                                     [--set5 DIR --esrt-weights FILE | --no-set5] [--exports DIR] [--json]

Each id is exported with its official architecture and seeded random initialisation (weights do
not change the arithmetic's cost) at its default tile, or at --tile where given (a fixed-tile
model keeps its own tile and batch), with the BF16 plan (`model_bf16.onnx`) and without the FP16
graph. Every row runs the same synthetic batch with the same thread count, in a process of its own
(see time_rows), in two passes over the rows, forward then backward, that share its --runs timed
calls (so a change in the machine's load falls on all of them): latency per batch is the median of
those --runs, tiles/s beside it, and each speed ratio is ONNX Runtime FP32's latency over the
row's, measured in the same run. Outputs are compared with ONNX Runtime FP32's: max |d| and PSNR
(clipped to [0, 1], as `verify` computes it). The rows:

- ort-fp32: ONNX Runtime, `model.onnx`;
- openvino-fp32: OpenVINO, `model.onnx`, f32 inference precision (the `openvino` backend);
- openvino-bf16: OpenVINO, the BF16 plan `model_bf16.onnx` (the `openvino-bf16` backend);
- whole-bf16: OpenVINO, `model.onnx` with bf16 inference precision (no islands but OpenVINO's own).

Every OpenVINO row compiles its graph as the backends do, its channel Splits rewritten
(`openvino.split_channel_convolutions`).

With --set5 and --esrt-weights (by default ../shared's Set5 and ESRT x2 epoch-20 checkpoint, where
both are there; --no-set5 leaves the rows out), ESRT x2 is exported from the real weights at its
default tile and every row restores Set5's LR X2 images (tiled, as `eval` does): PSNR against HR
(Y channel) and the lowest per-image PSNR against ONNX Runtime FP32's output. On a CPU without
BF16 (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16) the script says so and reports the FP32
rows; the BF16 plan is made all the same (the export measures it on its emulation), so its BF16
FLOP share is in the table.

With --exports DIR the exports are kept in DIR/<id> and a later run with the same DIR times them
again instead of exporting (another --threads, say); an export there whose input shape, weights
or BF16 graph is not what this run asks for is an error, not silently re-made.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_SET5 = REPO.parent / "shared" / "testsets" / "Set5"
SHARED_ESRT_WEIGHTS = REPO.parent / "shared" / "weights" / "esrt_x2_partial_epoch20.pth"

from deploytool.build import export, registry  # noqa: E402
from deploytool.build.networks import resolve_source  # noqa: E402
from deploytool.errors import DeployError  # noqa: E402
from deploytool.runtime.backends.onnxruntime import OrtRunner  # noqa: E402
from deploytool.runtime.backends.openvino import OpenVinoRunner, bf16_devices, openvino_build  # noqa: E402
from deploytool.runtime.input_batches import synthetic_batch  # noqa: E402
from deploytool.runtime.manifest import BF16_FILE, FP32_FILE, read_manifest  # noqa: E402
from deploytool.verify import evaluation  # noqa: E402
from deploytool.verify.parity import metrics  # noqa: E402

ORT_FP32, OPENVINO_FP32, OPENVINO_BF16, WHOLE_BF16 = "ort-fp32", "openvino-fp32", "openvino-bf16", "whole-bf16"
ESRT_X2 = "esrt-x2"


def export_with_plan(model_id: str, out: Path, tile: int | None, bf16: bool, weights: Path | None = None) -> None:
    """Export `model_id` into `out` (with the BF16 plan where `bf16`), unless `out` holds this
    export already (see exported_before)."""
    if exported_before(out, model_id, tile, bf16, weights):
        return
    entry = registry.get(model_id)
    size = entry.tiling.tile if entry.tiling.fixed_tile or tile is None else (tile, tile)
    batch = entry.tiling.batch if entry.tiling.fixed_tile else 1
    source = resolve_source(entry, weights=weights, random_init=weights is None)
    started = time.perf_counter()
    request = export.ExportRequest(entry=entry, source=source, out_dir=out, tile=size, batch=batch, fp16=False, bf16=bf16)
    export.export(request, progress=lambda message: print(f"{model_id}: {message}", file=sys.stderr))
    print(f"{model_id}: exported at {size[0]}x{size[1]}, batch {batch} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def row_openers(out: Path, threads: int, bf16: bool) -> dict:
    """{row: a function that opens its runner}."""
    rows = {
        ORT_FP32: lambda: OrtRunner(out / FP32_FILE, providers=["CPUExecutionProvider"], threads=threads),
        OPENVINO_FP32: lambda: OpenVinoRunner(out / FP32_FILE, threads=threads),
    }
    if bf16:
        rows[OPENVINO_BF16] = lambda: OpenVinoRunner(out / BF16_FILE, name=OPENVINO_BF16, threads=threads)
        rows[WHOLE_BF16] = lambda: OpenVinoRunner(out / FP32_FILE, name=WHOLE_BF16, threads=threads, precision="bf16")
    return rows


def time_rows(out: Path, rows: list[str], threads: int, runs: int) -> tuple[dict[str, float], dict]:
    """(median seconds per batch over `runs` timed calls, output) of every row of the export in
    `out`, each row in a process of its own (`time_row`), as a user runs one runtime: in one
    process, OpenVINO's rows of restormer-dn-color-15 at 512 px ran 1.7-2.7x slower after ONNX
    Runtime had run there, its session closed or not. Two passes, the rows forward then backward,
    share each row's timed calls, so a drift in the machine's load falls on every row."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    outputs = {}
    with tempfile.TemporaryDirectory(prefix="openvino_bench_rows_") as scratch:
        for order, calls in ((rows, runs - runs // 2), (rows[::-1], runs // 2)):
            for name in order if calls else ():
                output = Path(scratch) / f"{name}.npy"
                command = [
                    sys.executable,
                    __file__,
                    "--time-row",
                    name,
                    "--exports",
                    str(out),
                    "--threads",
                    str(threads),
                    "--runs",
                    str(calls),
                    "--output",
                    str(output),
                ]
                child = subprocess.run(command, capture_output=True, text=True)
                if child.returncode != 0:
                    raise DeployError(f"timing {name} on {out} failed: {(child.stderr.strip().splitlines() or ['no message'])[-1]}")
                times[name] += json.loads(child.stdout)["seconds"]
                outputs[name] = np.load(output)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def time_row(row: str, out: Path, threads: int, calls: int, output: Path) -> dict:
    """One row's warm-up call (its output saved to `output`) and `calls` timed calls, in this
    process: what time_rows runs in each of its child processes."""
    manifest = read_manifest(out)
    batch = synthetic_batch(manifest.input.shape, seed=0)
    with contextlib.closing(row_openers(out, threads, bf16=True)[row]()) as runner:
        np.save(output, runner(batch))
        seconds = []
        for _ in range(calls):
            started = time.perf_counter()
            runner(batch)
            seconds.append(time.perf_counter() - started)
    return {"seconds": seconds}


def exported_before(out: Path, model_id: str, tile: int | None, bf16: bool, weights: Path | None = None) -> bool:
    """Whether `out` holds this run's export of `model_id` already (see --exports): the same input
    shape, weights and, where asked, the BF16 plan; another export there is an error."""
    if not (out / "manifest.json").exists():
        return False
    manifest = read_manifest(out)
    entry = registry.get(model_id)
    size = entry.tiling.tile if entry.tiling.fixed_tile or tile is None else (tile, tile)
    wanted = resolve_source(entry, weights=weights, random_init=weights is None)
    same_weights = (manifest.source.kind, manifest.source.sha256, manifest.source.seed) == (wanted.kind, wanted.sha256, wanted.seed)
    if tuple(manifest.input.shape[2:]) != tuple(size) or not same_weights or (bf16 and manifest.bf16 is None):
        raise DeployError(
            f"{out} holds another export of {model_id} (input {manifest.input.shape}, {manifest.source.describe()}, BF16 plan: {manifest.bf16 is not None}): "
            "remove it or choose another --exports"
        )
    print(f"{model_id}: timing the export in {out}", file=sys.stderr)
    return True


def bench_id(model_id: str, tile: int | None, runs: int, threads: int, bf16: bool, scratch: Path) -> dict:
    """The rows of `model_id` (the BF16 ones where `bf16`: the CPU has it), exported with its plan."""
    out = scratch / model_id
    export_with_plan(model_id, out, tile, bf16=True)
    manifest = read_manifest(out)
    seconds, outputs = time_rows(out, list(row_openers(out, threads, bf16)), threads, runs)
    tiles = manifest.input.shape[0]
    measured = {}
    for name, value in seconds.items():
        max_abs, _, psnr = metrics(outputs[ORT_FP32], outputs[name])
        speed = seconds[ORT_FP32] / value
        measured[name] = {"s": value, "tiles_per_s": tiles / value, "speed_vs_ort_fp32": speed, "max_abs_vs_fp32": max_abs, "psnr_vs_fp32": psnr}
    plan = manifest.bf16
    result = {"model_id": model_id, "input_shape": list(manifest.input.shape), "bf16_flop_share": plan.bf16_flop_share if plan else None, "rows": measured}
    print(f"{model_id}: {json.dumps(result)}", file=sys.stderr)  # the rows so far, should a later id not finish
    return result


def set5_report(weights: Path, dataset: Path, threads: int, bf16: bool, scratch: Path) -> dict:
    """Set5 PSNR against HR for ESRT x2's real weights through every row, and each row's lowest
    per-image PSNR against ONNX Runtime FP32's output."""
    out = scratch / "esrt-set5"
    export_with_plan(ESRT_X2, out, None, bf16=True, weights=weights)
    manifest = read_manifest(out)
    rows = {name: opener() for name, opener in row_openers(out, threads, bf16).items()}  # ESRT's small runtimes side by side
    restored: dict[str, list] = {name: [] for name in rows}

    def method(name, runner):
        tiled = evaluation.tiled_method(runner, manifest, manifest.overlap())

        def restore(lr):
            restored[name].append(tiled(lr))
            return restored[name][-1]

        return restore

    try:
        report = evaluation.evaluate(ESRT_X2, manifest.scale, dataset, {n: method(n, r) for n, r in rows.items()}, scale=manifest.scale)
    finally:
        for runner in rows.values():
            runner.close()
    vs_fp32 = {name: min(metrics(a, b)[2] for a, b in zip(restored[ORT_FP32], images)) for name, images in restored.items()}
    return {name: {"psnr_vs_hr": values["psnr"], "min_psnr_vs_fp32": vs_fp32[name]} for name, values in report["summary"].items()}


def markdown(report: dict) -> str:
    lines = [
        f"OpenVINO {report['openvino']}, {report['threads']} threads, {report['cpu']}, load average {report['load_average']:.1f}; "
        f"median of {report['runs']} runs per batch; speed = ORT FP32's latency over the row's, in the same run",
    ]
    if not report["bf16_devices"]:
        lines.append("This CPU has no BF16 (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16): FP32 rows only.")
    lines += [
        "",
        "| export | input | BF16 FLOP share | row | s/batch | tiles/s | speed vs ORT FP32 | max abs vs FP32 | PSNR vs FP32 (dB) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for result in report["results"]:
        shape, share = "x".join(map(str, result["input_shape"])), result["bf16_flop_share"]
        for name, row in result["rows"].items():
            lines.append(
                f"| {result['model_id']} | {shape} | {'' if share is None else f'{share:.3f}'} | {name} | {row['s']:.3f} | {row['tiles_per_s']:.2f} | "
                f"{row['speed_vs_ort_fp32']:.2f}x | {row['max_abs_vs_fp32']:.2e} | {row['psnr_vs_fp32']:.1f} |"
            )
    if report.get("set5"):
        lines += ["", "ESRT x2, real weights, Set5 X2 (Y channel PSNR against HR; lowest per-image PSNR against ORT FP32's output)", ""]
        lines += ["| row | PSNR vs HR (dB) | min PSNR vs FP32 (dB) |", "|---|---:|---:|"]
        lines += [f"| {name} | {row['psnr_vs_hr']:.2f} | {row['min_psnr_vs_fp32']:.1f} |" for name, row in report["set5"].items()]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", help="comma-separated model ids  [default: the first single-image id of every family]")
    parser.add_argument("--tile", type=int, help="input tile in pixels  [default: each id's default tile; fixed-tile models keep theirs]")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every runtime")
    parser.add_argument("--set5", type=Path, help="Set5 folder (HR/, LR_bicubic/X2/) for the real-weights rows  [default: ../shared's, where it is]")
    parser.add_argument("--esrt-weights", type=Path, help="ESRT x2 checkpoint for the Set5 rows  [default: ../shared's epoch 20, where it is]")
    parser.add_argument("--no-set5", action="store_true", help="leave out the Set5 rows")
    parser.add_argument("--exports", type=Path, help="keep the exports in DIR/<id>, and time those already there instead of exporting")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    # time_rows' child processes: one row of the export in --exports, --runs timed calls
    parser.add_argument("--time-row", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.time_row:
        print(json.dumps(time_row(args.time_row, args.exports, args.threads, args.runs, args.output)))
        return 0
    try:
        if args.set5 is None and args.esrt_weights is None and not args.no_set5 and SHARED_SET5.is_dir() and SHARED_ESRT_WEIGHTS.is_file():
            args.set5, args.esrt_weights = SHARED_SET5, SHARED_ESRT_WEIGHTS
            print(f"Set5 rows: {SHARED_SET5} and {SHARED_ESRT_WEIGHTS} (--no-set5 leaves them out)", file=sys.stderr)
        if bool(args.set5) != bool(args.esrt_weights):
            raise DeployError("--set5 and --esrt-weights go together")
        ids = [i.strip() for i in args.ids.split(",") if i.strip()] if args.ids else registry.one_id_per_family()
        for model_id in ids:
            registry.get(model_id)
        devices = bf16_devices()
        bf16 = "CPU" in devices
        with contextlib.nullcontext(args.exports) if args.exports else tempfile.TemporaryDirectory(prefix="openvino_bench_") as scratch:
            results = [bench_id(model_id, args.tile, args.runs, args.threads, bf16, Path(scratch)) for model_id in ids]
            set5 = set5_report(args.esrt_weights, args.set5, args.threads, bf16, Path(scratch)) if args.set5 else None
        cpu = platform.processor() or platform.machine()
        report = {"openvino": openvino_build(), "threads": args.threads, "runs": args.runs, "cpu": cpu, "load_average": os.getloadavg()[0]}
        report |= {"bf16_devices": devices, "results": results, "set5": set5}
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
