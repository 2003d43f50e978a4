"""The parity harness: the original implementation against every way we run the model.

Compared on the same inputs: the original PyTorch code (a third-party faithful port, never our
code), our definition in PyTorch, ONNX Runtime on the FP32 and FP16 graphs, and a TensorRT
engine when this export has one for this machine. Synthetic inputs have the graph's static
shape; with real images, the original runs on the whole image and every backend runs through
the tiler, so tile seams are part of what is measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploytool import images, inference
from deploytool import inputs as input_sources
from deploytool.backends import Runner, open_runner
from deploytool.backends.torch import TorchRunner
from deploytool.errors import BackendUnavailable, ParityError
from deploytool.export import read_manifest
from deploytool.fileio import write_text_atomic
from deploytool.models import arch_for, build_def, export_weights
from deploytool.references import build_reference, reference_name

ORIGINAL = "original"
REPORT_JSON, REPORT_MD = "parity.json", "parity.md"


@dataclass
class Comparison:
    """One pair of outputs on one input set. PSNR is on outputs clipped to [0, 1] (what is shown)."""

    inputs: str
    reference: str
    candidate: str
    max_abs: float
    mean_abs: float
    psnr: float
    limits: str
    passed: bool


def metrics(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    """max |diff|, mean |diff| on raw outputs; PSNR (dB, peak 1) on clipped outputs."""
    if not np.isfinite(candidate).all():
        return math.inf, math.inf, -math.inf
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    mse = float(np.mean((np.clip(reference, 0, 1).astype(np.float64) - np.clip(candidate, 0, 1)) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    return float(diff.max()), float(diff.mean()), psnr


def pair_limits(candidate: str, tolerances: dict[str, float], *, tiled: bool) -> tuple[float | None, float | None]:
    """(max_abs limit, PSNR floor) for the original vs `candidate`."""
    if tiled:
        return None, tolerances.get("tiled_psnr_min")
    if candidate == "torch":
        return tolerances.get("def_max_abs"), None
    if candidate == "ort":
        return tolerances.get("onnx_max_abs"), None
    return tolerances.get("fp16_max_abs"), tolerances.get("fp16_psnr_min")


def judge(inputs: str, reference: str, candidate: str, ref_out: np.ndarray, out: np.ndarray, limits: tuple[float | None, float | None]) -> Comparison:
    max_abs, mean_abs, psnr = metrics(ref_out, out)
    max_limit, psnr_floor = limits
    passed = (max_limit is None or max_abs <= max_limit) and (psnr_floor is None or psnr >= psnr_floor)
    described = [f"max|d|<={max_limit:g}" if max_limit is not None else "", f"PSNR>={psnr_floor:g}" if psnr_floor is not None else ""]
    return Comparison(inputs, reference, candidate, max_abs, mean_abs, psnr, ", ".join(d for d in described if d) or "report only", passed)


def original_runner(entry, state_dict) -> TorchRunner:
    """The original implementation with these weights, as a runner."""
    return TorchRunner(build_reference(entry, arch_for(entry, state_dict), state_dict), name=ORIGINAL)


def open_backends(export_dir: Path, manifest: dict[str, Any], names: list[str], def_model, skipped: dict[str, str]) -> dict[str, Runner]:
    runners: dict[str, Runner] = {}
    for name in names:
        if name == "torch":
            runners[name] = TorchRunner(def_model, name="torch")
            continue
        try:
            runners[name] = open_runner(export_dir, manifest, name)
        except BackendUnavailable as exc:
            skipped[name] = str(exc)
        except Exception as exc:  # noqa: BLE001 - an engine for another machine is reported, not fatal
            if name != "trt":
                raise
            skipped[name] = str(exc)
    return runners


def verify(
    export_dir: str | Path,
    *,
    images_dir: str | Path | None = None,
    weights: str | Path | None = None,
    backends: list[str] | None = None,
    synthetic_batches: int = 2,
    overlap: int | None = None,
    max_images: int | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run the harness, write parity.json and parity.md into the export; raise ParityError on failure."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    entry, source, state_dict = export_weights(manifest, weights)
    backends = backends or ["torch", "ort", "ort-fp16", "trt"]
    if "ort-fp16" in backends and "model_fp16.onnx" not in manifest["files"]:
        backends = [b for b in backends if b != "ort-fp16"]
    progress(f"original: {reference_name(entry)}; weights: {source.describe()}")
    original = original_runner(entry, state_dict)
    def_model = build_def(entry, state_dict, source=source.path or "random init")
    skipped: dict[str, str] = {}
    runners = open_backends(export_dir, manifest, backends, def_model, skipped)
    for name, reason in skipped.items():
        progress(f"skipping {name}: {reason}")

    comparisons: list[Comparison] = []
    shape = tuple(manifest["input"]["shape"])
    for seed in range(synthetic_batches):
        batch = input_sources.synthetic_batch(shape, seed=1000 + seed)
        label = f"synthetic#{seed} {'x'.join(map(str, shape))}"
        progress(f"{label}: original")
        ref_out = original(batch)
        for name, runner in runners.items():
            progress(f"{label}: {name}")
            comparisons.append(judge(label, ORIGINAL, name, ref_out, runner(batch), pair_limits(name, entry.tolerances, tiled=False)))

    if images_dir is not None and entry.channels == 6:
        skipped["images"] = "dual-view models take image pairs; --images compares single images only"
        images_dir = None
    if images_dir is not None:
        overlap = int(manifest["overlap"]) if overlap is None else overlap
        paths = input_sources.list_images(images_dir)[: max_images or None]
        for path in paths:
            pixels = images.fit_channels(images.read_image(path).pixels, entry.channels, model_id=entry.id, path=path)
            whole = pixels.transpose(2, 0, 1)[None]
            progress(f"{path.name} ({pixels.shape[1]}x{pixels.shape[0]}): original on the whole image")
            ref_out = original(whole)[0].transpose(1, 2, 0)
            for name, runner in runners.items():
                progress(f"{path.name}: {name}, tiled (overlap {overlap})")
                out = inference.restore_array(runner, manifest, pixels, overlap=overlap)
                comparisons.append(judge(f"image {path.name} tiled", ORIGINAL, name, ref_out, out, pair_limits(name, entry.tolerances, tiled=True)))

    report = {
        "model_id": entry.id,
        "export_dir": str(export_dir),
        "original": reference_name(entry),
        "weights": source.describe(),
        "backends": list(runners),
        "skipped": skipped,
        "passed": all(c.passed for c in comparisons),
        "comparisons": [asdict(c) for c in comparisons],
    }
    write_text_atomic(export_dir / REPORT_JSON, json.dumps(report, indent=2, default=_json_number) + "\n")
    write_text_atomic(export_dir / REPORT_MD, markdown(report))
    return report


def _json_number(value: Any) -> Any:
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Parity: {report['model_id']}",
        "",
        f"Original: {report['original']}. Weights: {report['weights']}.",
        "",
        "| inputs | original vs | max abs | mean abs | PSNR dB | limits | result |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for c in report["comparisons"]:
        lines.append(
            f"| {c['inputs']} | {c['candidate']} | {c['max_abs']:.2e} | {c['mean_abs']:.2e} | {c['psnr']:.2f} | {c['limits']} | {'pass' if c['passed'] else 'FAIL'} |"
        )
    for name, reason in report["skipped"].items():
        lines.append(f"\nSkipped {name}: {reason}")
    lines.append(f"\n**{'PASSED' if report['passed'] else 'FAILED'}**\n")
    return "\n".join(lines)


def raise_on_failure(report: dict[str, Any]) -> None:
    failed = [c for c in report["comparisons"] if not c["passed"]]
    if failed:
        worst = failed[0]
        raise ParityError(
            f"{report['model_id']}: {len(failed)} of {len(report['comparisons'])} comparisons failed, first: "
            f"{worst['candidate']} on {worst['inputs']} (max |d| {worst['max_abs']:.3g}, PSNR {worst['psnr']:.2f} dB; limits {worst['limits']})"
        )
