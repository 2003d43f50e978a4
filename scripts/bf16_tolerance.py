"""What BF16 costs each family in precision, measured: the numbers its configs' BF16 tolerances
(`bf16_max_abs`, `bf16_psnr_min`, `bf16_calibration_max_abs`) are set from.

    python scripts/bf16_tolerance.py [--ids ID,ID,...] [--tile PX] [--batches 4] [--exports DIR] [--json]

Each id (default: one per family) is exported at full size with its seeded random initialisation
at --tile (default 64 px, the size of the full-size tests; a fixed-tile model keeps its own tile
and batch) with its BF16 plan and without the FP16 graph. Then --batches synthetic batches
(seeds the export's calibration does not use) run through:

- torch-bf16: our PyTorch definition with its weights and input in bfloat16 (what `model.bfloat16()`
  gives a user), on this CPU;
- torch-autocast: the FP32 definition under `torch.autocast("cpu", torch.bfloat16)` (PyTorch's own
  mixed precision: normalisations and softmax kept FP32 by its op lists);
- whole-graph: `model.onnx` with every node in BF16 (the emulation `bf16.emulate` with no island);
- plan: the shipped plan (`model_bf16.onnx`'s FP32 islands) on the same emulation;
- input-rounded: the FP32 definition with only its input rounded to BF16. What a model makes of
  that one rounding (a BF16 first layer reads it) is about the least a plan computing its first
  layer in BF16 can be off by; random-init IPT makes more than its limits of it (see README, BF16).

Each is compared with the FP32 definition's output: max |d| and mean |d| over every batch, and the
lowest per-batch PSNR (clipped to [0, 1], as `verify` computes it). The emulation rounds exactly as
BF16 arithmetic with FP32 accumulation does, so the two graph rows hold on any CPU; the PyTorch rows
use PyTorch's CPU BF16 kernels (on a CPU without BF16 arithmetic, emulated by PyTorch too).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
import torch  # noqa: E402

from deploytool.build import bf16, export, registry  # noqa: E402
from deploytool.build.networks import build_def, load_state_dict, resolve_source  # noqa: E402
from deploytool.build.precision import run_graph  # noqa: E402
from deploytool.runtime.input_batches import synthetic_batch  # noqa: E402
from deploytool.runtime.manifest import BF16_FILE, FP32_FILE, read_manifest  # noqa: E402
from deploytool.verify.parity import metrics  # noqa: E402

ROWS = ("torch-bf16", "torch-autocast", "whole-graph", "plan", "input-rounded")
# far from the seeds the export calibrates and validates its plan with (0-15)
FIRST_SEED = 1000


def exported(model_id: str, tile: int, exports: Path) -> Path:
    """`exports`/<id>, exported with the BF16 plan at `tile` unless an export of it is there."""
    out = exports / model_id
    if (out / "manifest.json").exists() and read_manifest(out).bf16 is not None:
        return out
    entry = registry.get(model_id)
    size = entry.tiling.tile if entry.tiling.fixed_tile else (tile, tile)
    batch = entry.tiling.batch if entry.tiling.fixed_tile else 1
    request = export.ExportRequest(entry=entry, source=resolve_source(entry, random_init=True), out_dir=out, tile=size, batch=batch, fp16=False, bf16=True)
    started = time.perf_counter()
    export.export(request, progress=lambda message: print(f"{model_id}: {message}", file=sys.stderr))
    print(f"{model_id}: exported in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out


def torch_runners(model: torch.nn.Module) -> dict:
    """{row: batch -> output} of the two PyTorch rows."""
    as_bf16 = copy.deepcopy(model).to(torch.bfloat16)

    def pure(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return as_bf16(torch.from_numpy(batch).to(torch.bfloat16)).float().numpy()

    def autocast(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(torch.from_numpy(batch)).float().numpy()

    def input_rounded(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(bf16.round_to_bf16(batch))).numpy()

    return {"torch-bf16": pure, "torch-autocast": autocast, "input-rounded": input_rounded}


def measure_id(model_id: str, tile: int, batches: int, exports: Path) -> dict:
    """`measure` on the export of `model_id` (made if `exports` lacks it) and its definition."""
    out = exported(model_id, tile, exports)
    entry = registry.get(model_id)
    model = build_def(entry, load_state_dict(entry, resolve_source(entry, random_init=True))).eval()
    result = measure(out, model, batches)
    print(f"{model_id}: {json.dumps(result)}", file=sys.stderr)  # the rows so far, should a later id not finish
    return result


def measure(out: Path, model: torch.nn.Module, batches: int) -> dict:
    """Every row's error against `model` (the export's definition, FP32) on `batches` synthetic batches."""
    manifest = read_manifest(out)
    fp32 = onnx.load(str(out / FP32_FILE))
    plan_fp32_nodes = bf16.fp32_islands(onnx.load(str(out / BF16_FILE)), fp32)
    inputs = [synthetic_batch(manifest.input.shape, FIRST_SEED + i) for i in range(batches)]
    with torch.no_grad():
        reference = [model(torch.from_numpy(batch)).numpy() for batch in inputs]
    outputs = {row: [run(batch) for batch in inputs] for row, run in torch_runners(model).items()}
    outputs["whole-graph"] = run_graph(bf16.emulate(fp32, ()), inputs)
    outputs["plan"] = run_graph(bf16.emulate(fp32, plan_fp32_nodes), inputs)
    rows = {}
    for row in ROWS:
        measured = [metrics(expected, actual) for expected, actual in zip(reference, outputs[row])]
        rows[row] = {"max_abs": max(m[0] for m in measured), "mean_abs": float(np.mean([m[1] for m in measured])), "min_psnr": min(m[2] for m in measured)}
    plan = manifest.bf16
    return {
        "model_id": manifest.model_id,
        "input_shape": list(manifest.input.shape),
        "batches": batches,
        "tolerances": {name: value for name, value in manifest.tolerances.items() if name.startswith("bf16_")},
        "plan_max_abs_vs_fp32": plan.max_abs_vs_fp32,
        "bf16_flop_share": plan.bf16_flop_share,
        "rows": rows,
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| id | input | row | max abs | mean abs | min PSNR (dB) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for result in results:
        shape = "x".join(map(str, result["input_shape"]))
        for row, m in result["rows"].items():
            lines.append(f"| {result['model_id']} | {shape} | {row} | {m['max_abs']:.2g} | {m['mean_abs']:.2g} | {m['min_psnr']:.1f} |")
    lines.append("")
    lines.append("| id | bf16_max_abs | bf16_psnr_min | bf16_calibration_max_abs | plan's calibration max abs | bf16_flop_share |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for result in results:
        t = result["tolerances"]
        lines.append(
            f"| {result['model_id']} | {t.get('bf16_max_abs')} | {t.get('bf16_psnr_min')} | {t.get('bf16_calibration_max_abs')} "
            f"| {result['plan_max_abs_vs_fp32']:.2g} | {result['bf16_flop_share']:.3f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", default=",".join(registry.one_id_per_family()), help="comma-separated model ids (default: one per family)")
    parser.add_argument("--tile", type=int, default=64, help="tile side in pixels (a fixed-tile model keeps its own)")
    parser.add_argument("--batches", type=int, default=4, help="synthetic batches per id")
    parser.add_argument("--exports", type=Path, help="keep the exports here and reuse them in a later run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.batches < 1 or args.tile < 1:
        parser.error("--batches and --tile must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    with contextlib.ExitStack() as stack:
        if args.exports is None:
            exports = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bf16_tolerance_")))
        else:
            exports = args.exports
        results = [measure_id(model_id, args.tile, args.batches, exports) for model_id in args.ids.split(",")]
    print(json.dumps({"torch": torch.__version__, "results": results}, indent=2) if args.json else markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
