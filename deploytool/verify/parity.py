"""The parity harness: the original implementation against every way we run the model.

Running is apart from judging (as Polygraphy keeps `Comparator.run` apart from
`compare_accuracy`). `run` executes backends on the same inputs and returns their raw outputs
(`deploytool.verify.results`, savable to one `.npz`); `judge` compares the original's outputs with every
other backend's, across one or several results files, with the tolerances of the export's
manifest. `verify` is run-then-judge in one process; `compare` judges saved files, so a TensorRT
engine run on a GPU machine is judged against the original run elsewhere.

Compared on the same inputs: the original PyTorch code (a third-party faithful port, never our
code), our definition in PyTorch, ONNX Runtime on the FP32 and FP16 graphs, and a TensorRT
engine when this export has one for this machine. Synthetic inputs have the graph's static
shape; with real images, the original runs on the whole image and every backend runs through
the tiler, so tile seams are part of what is measured.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploytool.build.metrics import psnr
from deploytool.build.networks import arch_for, build_original, export_weights
from deploytool.build.runners import checkpoint_model
from deploytool.errors import (
    BackendUnavailable,
    CheckpointError,
    DeployError,
    ParityError,
)
from deploytool.runtime import backends as registry
from deploytool.runtime import images, inference, input_batches
from deploytool.runtime.backends import BF16, FP16, FP32, Runner, open_runner
from deploytool.runtime.backends.torch import TorchRunner
from deploytool.runtime.fileio import write_text_atomic
from deploytool.runtime.manifest import (
    PARITY_HTML,
    PARITY_JSON,
    PARITY_MD,
    Manifest,
    read_manifest,
)
from deploytool.verify import results as saved_results
from deploytool.verify.results import IMAGE, SYNTHETIC, BackendRun, RunInput, RunResults

Progress = Callable[[str], None]

# {precision class: (max |diff| key, PSNR floor key)} of the manifest's tolerances, for backends
# that run an export's graph; those built from the checkpoint are judged by `def_max_abs`
PRECISION_TOLERANCES = {FP32: ("onnx_max_abs", None), FP16: ("fp16_max_abs", "fp16_psnr_min"), BF16: ("bf16_max_abs", "bf16_psnr_min")}


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
    return float(diff.max()), float(diff.mean()), psnr(np.clip(reference, 0, 1), np.clip(candidate, 0, 1))


def pair_limits(candidate: str, tolerances: dict[str, float], *, tiled: bool) -> tuple[float | None, float | None]:
    """(max_abs limit, PSNR floor) for the original vs `candidate` (a backend name)."""
    if tiled:
        return None, tolerances.get("tiled_psnr_min")
    backend = registry.get(candidate)
    if backend.needs_checkpoint:  # our definition, or the original on another machine: FP32 PyTorch code
        return tolerances.get("def_max_abs"), None
    max_key, psnr_key = PRECISION_TOLERANCES[backend.precision]
    return tolerances.get(max_key), None if psnr_key is None else tolerances.get(psnr_key)


def judge_pair(inputs: str, reference: str, candidate: str, ref_out: np.ndarray, out: np.ndarray, limits: tuple[float | None, float | None]) -> Comparison:
    max_abs, mean_abs, value_psnr = metrics(ref_out, out)
    max_limit, psnr_floor = limits
    passed = (max_limit is None or max_abs <= max_limit) and (psnr_floor is None or value_psnr >= psnr_floor)
    described = [f"max|d|<={max_limit:g}" if max_limit is not None else "", f"PSNR>={psnr_floor:g}" if psnr_floor is not None else ""]
    return Comparison(inputs, reference, candidate, max_abs, mean_abs, value_psnr, ", ".join(d for d in described if d) or "report only", passed)


def original_runner(entry, state_dict) -> TorchRunner:
    """The original implementation with these weights, as a runner."""
    return TorchRunner(build_original(entry, arch_for(entry, state_dict), state_dict), name=registry.original().name)


# -- running


def parity_inputs(
    manifest: Manifest, *, synthetic_batches: int, images_dir: str | Path | None, max_images: int | None, skipped: dict[str, str]
) -> list[RunInput]:
    """The inputs every backend runs on: seeded synthetic tiles, then whole images (at most
    `max_images` of them, where given: at least 1)."""
    if max_images is not None and max_images < 1:
        raise DeployError(f"--max-images must be at least 1, not {max_images}")
    shape = manifest.input.shape
    found = [
        RunInput(f"synthetic#{index} {'x'.join(map(str, shape))}", SYNTHETIC, input_batches.parity_batch(shape, index)) for index in range(synthetic_batches)
    ]
    if images_dir is not None and len(manifest.views) > 1:
        skipped["images"] = "models of several views take image groups; --images compares single images only"
        images_dir = None
    if images_dir is not None:
        view = manifest.views[0]
        for path in input_batches.list_images(images_dir)[:max_images]:
            pixels = images.fit_channels(images.read_image(path).pixels, view.channels, model_id=manifest.model_id, path=path)
            found.append(RunInput(f"image {path.name} tiled", IMAGE, pixels))
    return found


@dataclass
class _Opener:
    """Opens a run's backends with its options (`device` to the backends that take one); the
    checkpoint is loaded once for all backends that need it."""

    export_dir: Path
    manifest: Manifest
    weights: str | Path | None
    device: str | None
    skip_missing_weights: bool
    loaded: Any = None  # export_weights' (entry, source, state dict), once a backend needed it

    def open(self, name: str) -> Runner:
        backend = registry.get(name)
        options = backend.own_options(self.device)
        if not backend.needs_checkpoint:
            return open_runner(self.export_dir, self.manifest, name, **options)
        if self.loaded is None:
            self.loaded = export_weights(self.manifest, self.weights)
        return open_runner(self.export_dir, self.manifest, name, model=checkpoint_model(self.manifest, backend, loaded=self.loaded), **options)

    def open_or_skip(self, name: str) -> Runner | str:
        """A runner, or the reason to skip a backend this machine cannot run (no TensorRT, no
        engine for this GPU; the checkpoint missing when `skip_missing_weights`)."""
        try:
            return self.open(name)
        except CheckpointError as exc:
            if not self.skip_missing_weights:
                raise
            return str(exc)
        except BackendUnavailable as exc:
            return str(exc)
        except DeployError as exc:
            if not registry.get(name).machine_specific:
                raise
            return str(exc)


def _selected(manifest: Manifest, names: list[str], skipped: dict[str, str]) -> list[str]:
    """`names` checked, less the backends whose file this export was made without (no FP16
    graph), which go into `skipped` with that reason."""
    unknown = [b for b in names if b not in registry.names()]
    if unknown:
        raise DeployError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(registry.names())}")
    for name in names:
        if registry.get(name).file not in (None, *manifest.files):
            skipped[name] = f"this export was made without {registry.get(name).file}"
    return [b for b in names if b not in skipped]


def _run_input(runner: Runner, name: str, label: str, item: RunInput, manifest: Manifest, overlap: int, progress: Progress) -> np.ndarray:
    if item.kind == SYNTHETIC:
        progress(f"{label}: {name}")
        return runner(item.array)
    if registry.get(name).is_original:
        progress(f"{label}: {name} on the whole image ({item.array.shape[1]}x{item.array.shape[0]})")
        return runner(item.array.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
    progress(f"{label}: {name} (overlap {overlap})")
    return inference.restore_array(runner, manifest, item.array, overlap=overlap)


def run(
    export_dir: str | Path,
    backends: list[str],
    *,
    images_dir: str | Path | None = None,
    weights: str | Path | None = None,
    synthetic_batches: int = input_batches.PARITY_BATCHES,
    overlap: int | None = None,
    max_images: int | None = None,
    skip_missing_weights: bool = False,
    device: str | None = None,
    progress: Progress = lambda message: None,
) -> RunResults:
    """Run `backends` on the same inputs, one backend at a time (each released before the next).

    A backend this machine cannot run (no TensorRT, no engine for this GPU) is skipped with its
    reason, as is one whose file the export lacks; so are the original and our PyTorch definition
    when the checkpoint is missing and `skip_missing_weights` is set (a GPU machine that has the
    export but not the checkpoint). `device` goes to the backends that take one (OpenVINO's).
    """
    registry.check_options_apply(backends, device)
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    results = RunResults(manifest=manifest, original=manifest.model.reference, weights=manifest.source.describe(), host=saved_results.host_info())
    backends = _selected(manifest, backends, results.skipped)
    overlap = manifest.overlap(overlap)
    results.inputs = {
        item.label: item
        for item in parity_inputs(manifest, synthetic_batches=synthetic_batches, images_dir=images_dir, max_images=max_images, skipped=results.skipped)
    }
    progress(f"original: {results.original}; weights: {results.weights}")
    for name, reason in results.skipped.items():
        if name in registry.names():
            progress(f"skipping {name}: {reason}")
    opener = _Opener(export_dir, manifest, weights, device, skip_missing_weights)
    for name in backends:
        runner = opener.open_or_skip(name)
        if isinstance(runner, str):
            results.skipped[name] = runner
            progress(f"skipping {name}: {runner}")
            continue
        with runner:
            record = BackendRun(name, runner.device, overlap=None if registry.get(name).is_original else overlap)
            for label, item in results.inputs.items():
                record.outputs[label] = _run_input(runner, name, label, item, manifest, overlap, progress)
        results.backends[name] = record
    return results


# -- judging


def _qualified_backends(runs: list[RunResults]) -> list[tuple[str, str, RunResults]]:
    """(display name, backend, results) for every backend of every file; a backend found in
    several files is named with its file, e.g. 'torch (gpu.npz)'."""
    counts: dict[str, int] = {}
    for item in runs:
        for name in item.backends:
            counts[name] = counts.get(name, 0) + 1
    found = []
    for item in runs:
        for name in item.backends:
            display = name if counts[name] == 1 else f"{name} ({Path(item.source_file).name or 'this run'})"
            found.append((display, name, item))
    return found


def _check_compatible(runs: list[RunResults]) -> None:
    first = runs[0]
    for other in runs[1:]:
        if other.fingerprint != first.fingerprint:
            raise DeployError(
                f"{other.source_file or 'results'} and {first.source_file or 'results'} come from different exports "
                f"({other.manifest.model_id} {other.fingerprint[:12]}… vs {first.manifest.model_id} {first.fingerprint[:12]}…)"
            )
        for label, item in other.inputs.items():
            mine = first.inputs.get(label)
            if mine is not None and mine.sha256 != item.sha256:
                raise DeployError(
                    f"input {label!r} differs between {first.source_file} and {other.source_file} (sha256 mismatch): they ran on different inputs"
                )


@dataclass
class Judgement:
    report: dict[str, Any]
    # (comparison, reference output, candidate output) for pictures in the HTML report
    pairs: list[tuple[Comparison, np.ndarray, np.ndarray]]


def _is_original(name: str) -> bool:
    return registry.get(name).is_original


def _merged_inputs(runs: list[RunResults]) -> tuple[dict[str, RunInput], dict[str, str]]:
    """Every input of every file (the first file's where labels repeat), and every skipped reason."""
    inputs: dict[str, RunInput] = {}
    skipped: dict[str, str] = {}
    for item in runs:
        for label, value in item.inputs.items():
            inputs.setdefault(label, value)
        skipped.update(item.skipped)
    return inputs, skipped


def _compare_all(
    backends: list[tuple[str, str, RunResults]], inputs: dict[str, RunInput], reference_run: RunResults, tolerances: dict[str, float], skipped: dict[str, str]
) -> list[tuple[Comparison, np.ndarray, np.ndarray]]:
    """The original's outputs against every other backend's, input by input."""
    original = registry.original().name
    reference_outputs = reference_run.backends[original].outputs
    pairs: list[tuple[Comparison, np.ndarray, np.ndarray]] = []
    for label, item in inputs.items():
        if label not in reference_outputs:
            skipped[f"inputs {label}"] = "the original did not run on it"
            continue
        for display, name, owner in backends:
            out = owner.backends[name].outputs.get(label)
            if (owner is reference_run and _is_original(name)) or out is None:
                continue
            limits = pair_limits(name, tolerances, tiled=item.kind == IMAGE)
            comparison = judge_pair(label, original, display, reference_outputs[label], out, limits)
            pairs.append((comparison, reference_outputs[label], out))
    return pairs


def judge(runs: list[RunResults], *, export_dir: str | Path | None = None) -> Judgement:
    """Compare the original's outputs with every other backend's, across `runs`."""
    if not runs:
        raise DeployError("nothing to judge: no results given")
    _check_compatible(runs)
    manifest = runs[0].manifest
    backends = _qualified_backends(runs)
    originals = [b for b in backends if _is_original(b[1])]
    if not originals:
        raise DeployError("no results hold the original's outputs: run `deploytool verify --backends original,... --save-outputs FILE` where the checkpoint is")
    _, _, reference_run = originals[0]
    inputs, skipped = _merged_inputs(runs)
    pairs = _compare_all(backends, inputs, reference_run, manifest.tolerances, skipped)
    comparisons = [comparison for comparison, _, _ in pairs]
    report = {
        "model_id": manifest.model_id,
        "export_dir": str(export_dir) if export_dir is not None else None,
        "original": reference_run.original,
        "weights": reference_run.weights,
        "backends": [display for display, name, owner in backends if not (owner is reference_run and _is_original(name))],
        "skipped": skipped,
        "passed": bool(comparisons) and all(c.passed for c in comparisons),
        "comparisons": [asdict(c) for c in comparisons],
        "fp16_vs_fp32": fp16_figures(backends, inputs),
        "manifest_fp16": None if manifest.fp16 is None else manifest_fp16_figures(manifest),
        "results": [saved_results.describe(item) for item in runs],
    }
    return Judgement(report, pairs)


def fp16_figures(backends: list[tuple[str, str, RunResults]], inputs: dict[str, RunInput]) -> list[dict[str, Any]]:
    """The shipped FP16 graph's (and engines') own distance from the FP32 graph, at the export's
    shape on this run's inputs: the figures the manifest's `fp16` gives for the calibration graph."""
    fp32 = next(((display, name, item) for display, name, item in backends if registry.get(name).fp32_graph_reference), None)
    if fp32 is None:
        return []
    fp32_display, fp32_name, fp32_run = fp32
    figures = []
    for label in inputs:
        expected = fp32_run.backends[fp32_name].outputs.get(label)
        for display, name, item in backends:
            out = item.backends[name].outputs.get(label)
            if registry.get(name).precision != FP16 or expected is None or out is None:
                continue
            max_abs, mean_abs, value_psnr = metrics(expected, out)
            figures.append({"inputs": label, "fp32": fp32_display, "fp16": display, "max_abs": max_abs, "mean_abs": mean_abs, "psnr": value_psnr})
    return figures


def manifest_fp16_figures(manifest: Manifest) -> dict[str, Any]:
    fp16 = manifest.fp16
    return {
        "max_abs_vs_fp32": fp16.max_abs_vs_fp32,
        "psnr_vs_fp32": fp16.psnr_vs_fp32,
        "measured_at": None if fp16.measured_at is None else asdict(fp16.measured_at),
        "verify_inputs_max_abs": fp16.verify_inputs_max_abs,
        "verify_inputs_limit": fp16.verify_inputs_limit,
    }


def write_reports(judgement: Judgement, out_dir: str | Path, *, html: bool = False) -> list[Path]:
    """parity.json and parity.md (and parity.html) in `out_dir`, atomically."""
    out_dir = Path(out_dir)
    report = judgement.report
    write_text_atomic(out_dir / PARITY_JSON, json.dumps(report, indent=2, default=_json_number) + "\n")
    write_text_atomic(out_dir / PARITY_MD, markdown(report))
    written = [out_dir / PARITY_JSON, out_dir / PARITY_MD]
    if html:
        from deploytool.verify import report as html_report

        visuals = [html_report.Visual(c.inputs, c.candidate, _as_picture(ref), _as_picture(out)) for c, ref, out in judgement.pairs]
        html_report.write_html(out_dir / PARITY_HTML, report, visuals)
        written.append(out_dir / PARITY_HTML)
    return written


def _as_picture(output: np.ndarray) -> np.ndarray:
    """HWC float32: a synthetic batch's first tile (NCHW), or a whole image as it is (HWC)."""
    return output[0].transpose(1, 2, 0) if output.ndim == 4 else output


def verify(
    export_dir: str | Path,
    *,
    images_dir: str | Path | None = None,
    weights: str | Path | None = None,
    backends: list[str] | None = None,
    synthetic_batches: int = input_batches.PARITY_BATCHES,
    overlap: int | None = None,
    max_images: int | None = None,
    save_outputs: str | Path | None = None,
    html: bool = False,
    device: str | None = None,
    progress: Progress = lambda message: None,
) -> dict[str, Any] | None:
    """Run, then judge: write parity.json and parity.md (and parity.html) into the export.
    `device`: where the backends that take one run (`run`'s).

    Without `save_outputs` the original always runs (there is nothing to judge without it).
    With it, exactly `backends` run and their outputs are saved; the run is judged only when the
    original is among them, else None is returned (judge later with `compare`).
    """
    backends = list(backends or registry.verify_default_names())
    if save_outputs is None and not any(_is_original(name) for name in backends):
        backends.insert(0, registry.original().name)
    results = run(
        export_dir,
        backends,
        images_dir=images_dir,
        weights=weights,
        synthetic_batches=synthetic_batches,
        overlap=overlap,
        max_images=max_images,
        skip_missing_weights=save_outputs is not None,
        device=device,
        progress=progress,
    )
    if save_outputs is not None:
        started = time.perf_counter()
        saved = results.save(save_outputs)
        results.source_file = str(saved)
        progress(
            f"saved inputs and outputs of {', '.join(results.backends) or 'no backend'} to {saved} "
            f"({saved.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.2f} s)"
        )
        if not any(_is_original(name) for name in results.backends):
            return None
    judgement = judge([results], export_dir=export_dir)
    write_reports(judgement, export_dir, html=html)
    return judgement.report


def compare(paths: list[str | Path], *, report_dir: str | Path | None = None, html: bool = False) -> dict[str, Any]:
    """Judge saved results files together, without running a model."""
    if not paths:
        raise DeployError("compare needs at least one results file")
    judgement = judge([saved_results.load(p) for p in paths])
    if report_dir is not None:
        write_reports(judgement, report_dir, html=html)
    return judgement.report


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
    figures = report.get("fp16_vs_fp32") or []
    if figures:
        lines += [
            "",
            "The shipped FP16 graph against the FP32 graph, at the export's shape:",
            "",
            "| inputs | FP32 | FP16 | max abs | mean abs | PSNR dB |",
            "|---|---|---|---:|---:|---:|",
        ]
        lines += [f"| {f['inputs']} | {f['fp32']} | {f['fp16']} | {f['max_abs']:.2e} | {f['mean_abs']:.2e} | {f['psnr']:.2f} |" for f in figures]
    planned = report.get("manifest_fp16")
    if planned is not None:
        where = planned["measured_at"]
        at = f"on {'x'.join(map(str, where['shape']))}, {where['inputs']}" if where else "on calibration inputs"
        value_psnr = "identical" if planned["psnr_vs_fp32"] is None else f"PSNR {planned['psnr_vs_fp32']:.2f} dB"
        lines.append(f"\nThe manifest's FP16 figures, measured by the export {at}: max abs {planned['max_abs_vs_fp32']:.2e}, {value_psnr}.")
    for name, reason in report["skipped"].items():
        lines.append(f"\nSkipped {name}: {reason}")
    lines.append(f"\n**{'PASSED' if report['passed'] else 'FAILED'}**\n")
    return "\n".join(lines)


def raise_on_failure(report: dict[str, Any]) -> None:
    if not report["comparisons"]:
        raise ParityError(f"{report['model_id']}: no backend was compared with the original ({', '.join(report['skipped']) or 'none ran'})")
    failed = [c for c in report["comparisons"] if not c["passed"]]
    if failed:
        worst = failed[0]
        raise ParityError(
            f"{report['model_id']}: {len(failed)} of {len(report['comparisons'])} comparisons failed, first: "
            f"{worst['candidate']} on {worst['inputs']} (max |d| {worst['max_abs']:.3g}, PSNR {worst['psnr']:.2f} dB; limits {worst['limits']})"
        )
