"""torch -> ONNX at one static tile, simplified, checked, plus the FP16/BF16 deploy graphs and manifest.

Writes an export folder (`deploytool.runtime.manifest` owns its layout): `model.onnx` (FP32,
simplified), `model_fp16.onnx` (FP16 with FP32 islands, FP32 IO), where asked `model_bf16.onnx`
(BF16 likewise) and `manifest.json` (written last: a folder without it is an unfinished export).
Only the exporter imports this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from deploytool.build import precision
from deploytool.build.forked_trace import ForkedTrace
from deploytool.build.graph_passes import (
    constants_to_initializers,
    deduplicate_initializers,
    graph_summary,
    save_model,
    simplify,
    static_graph_violations,
)
from deploytool.build.networks import build_def, load_state_dict, original_name
from deploytool.build.registry import ModelEntry
from deploytool.build.trace_cache import TraceCache, take_note, trace_key
from deploytool.build.tracing import EXPORTER, OPSET, load_exporter, trace
from deploytool.errors import DeployError, ExportError
from deploytool.runtime import input_batches
from deploytool.runtime.fileio import make_folder, sha256_file
from deploytool.runtime.manifest import (
    BF16_FILE,
    FP16_FILE,
    FP32_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Bf16Summary,
    FileRecord,
    Fp16Summary,
    GraphStats,
    Manifest,
    ModelInfo,
    StageCost,
    WeightsSource,
    export_outputs,
    tiled_graph,
)
from deploytool.runtime.tiling import round_up

Progress = Callable[[str], None]
# FP16 ranges are measured on the same graph traced at this side (rounded up to the tile multiple,
# and at least three multiples: at two windows a shifted-window graph folds its masks otherwise),
# and carried to the export's tile by precision.tile_growth: at 256 px a HAT run costs 16 times
# a 64 px one, and memory grows alike. The calibration graph's batch is 1 (IPT exports 16 tiles
# a run): a tile's ranges do not depend on the others in its batch.
CALIBRATION_SIDE = 64


@dataclass(frozen=True)
class ExportRequest:
    entry: ModelEntry
    source: WeightsSource
    out_dir: Path
    tile: tuple[int, int]
    batch: int
    fp16: bool = True
    calibration_images: Path | None = None
    calibration_count: int = 4
    bf16: bool = False
    trace_cache: Path | None = None  # the trace cache's folder (trace_cache), None: trace every time

    @property
    def precisions(self) -> tuple[str, ...]:
        """The reduced-precision deploy graphs asked for, in the order they are built."""
        return tuple(name for name, wanted in (("fp16", self.fp16), ("bf16", self.bf16)) if wanted)


def traced_graph(model: torch.nn.Module, shape: tuple[int, ...], cache: Path | None = None) -> onnx.ModelProto:
    """The model's traced (unsimplified) graph at input `shape`: the export's tile and the
    calibration tile are its two calls, the second beside the first (`forked_trace`;
    `tracing.trace`: no forward pass runs at either), through the trace cache in `cache`."""
    return trace(model, torch.zeros(shape), TraceCache(cache) if cache is not None else None)


@dataclass
class FinishedGraph:
    graph: onnx.ModelProto
    merged_initializers: int
    held: frozenset[str]  # traced nodes kept from constant folding (see simplify)


def finish_graph(traced: onnx.ModelProto, fold_limit_mb: float, hold: frozenset[str] | None = None) -> FinishedGraph:
    """The traced graph simplified, its constants deduplicated and its nodes named."""
    graph, held = simplify(traced, fold_limit_mb, hold)
    constants_to_initializers(graph)
    merged = deduplicate_initializers(graph)
    precision.ensure_named(graph)
    return FinishedGraph(graph, merged, held)


def calibration_tile(entry: ModelEntry, tile: tuple[int, int]) -> tuple[int, int]:
    """The smaller tile the FP16 plan's ranges are measured at (see CALIBRATION_SIDE)."""
    if entry.tiling.fixed_tile:
        return tuple(tile)
    multiple = entry.tiling.tile_multiple
    side = round_up(max(CALIBRATION_SIDE, 3 * multiple), multiple)
    return (min(side, tile[0]), min(side, tile[1]))


def calibration_batches(request: ExportRequest, shape: tuple[int, int, int, int]) -> tuple[list[np.ndarray], str]:
    if request.calibration_images:
        paths = input_batches.list_images(request.calibration_images)
        batches = input_batches.image_crops(paths, shape, model_id=request.entry.id, limit=request.calibration_count)
        if batches:
            return batches, f"{len(batches)} crop batch(es) from {request.calibration_images}"
    batches = [input_batches.synthetic_batch(shape, seed) for seed in range(request.calibration_count)]
    return batches, f"{len(batches)} synthetic texture batch(es)"


def verify_inputs(entry: ModelEntry, shape: tuple[int, int, int, int], measured_shape: tuple[int, ...], reduced: str = "fp16") -> precision.VerifyInputs | None:
    """`verify`'s standard synthetic inputs for an export of `shape`, as the graph the `reduced`
    plan is validated on (of `measured_shape`) takes them: exactly verify's tiles at the export's
    tile, the same generator and seeds drawn at the smaller tile otherwise; None without a limit."""
    limit = entry.tolerances.get(f"{reduced}_max_abs")
    if limit is None:
        return None
    count = input_batches.PARITY_BATCHES
    if tuple(measured_shape) == tuple(shape):
        arrays = [input_batches.parity_batch(shape, index) for index in range(count)]
        label = f"verify's {count} synthetic batches"
    else:
        arrays = input_batches.verify_tiles(shape, tuple(measured_shape[2:]))
        drawn = "" if tuple(measured_shape[2:]) == tuple(shape[2:]) else f" drawn at {_shape_text(measured_shape[2:])}"
        label = f"verify's {count} synthetic batches as {len(arrays)} tiles{drawn}"
    return precision.VerifyInputs(arrays, label, limit / precision.VERIFY_SAFETY)


def versions() -> dict[str, str]:
    import onnx_ir
    import onnxruntime
    import onnxscript
    import onnxsim

    import deploytool

    return {
        "deploytool": deploytool.__version__,
        "torch": torch.__version__,
        "onnxscript": onnxscript.__version__,
        "onnx-ir": onnx_ir.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": getattr(onnxsim, "__version__", "unknown"),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class StageClock:
    """Announces each export stage, then records its wall time and the peak memory after it: the
    larger of this process's and the collected traces' (`traced`)."""

    def __init__(self, total: int, progress: Progress):
        self.total, self.progress, self.done = total, progress, 0
        self.costs: dict[str, StageCost] = {}
        self.traces_peak_mb = 0.0

    def traced(self, trace: ForkedTrace) -> onnx.ModelProto:
        """`trace`'s graph, its process's peak memory counted from now on; what it did with the
        trace cache said."""
        graph = trace.graph()
        self.traces_peak_mb = max(self.traces_peak_mb, trace.peak_rss_mb)
        if note := take_note(graph):
            self.progress(f"      the trace at {_shape_text(trace.shape)}: {note}")
        return graph

    @contextlib.contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        self.done += 1
        self.progress(f"[{self.done}/{self.total}] {message}")
        started = time.perf_counter()
        yield
        # to 0.1 ms: a stage that did work records a time above zero
        cost = StageCost(seconds=round(time.perf_counter() - started, 4), peak_rss_mb=round(max(peak_rss_mb(), self.traces_peak_mb), 1))
        self.costs[name] = cost
        self.progress(f"      {name}: {cost.seconds:.1f} s, peak RSS so far {cost.peak_rss_mb / 1024:.2f} GB")


def export(request: ExportRequest, progress: Progress = lambda message: None) -> Manifest:
    """Run every export stage into `request.out_dir`; returns the manifest.

    When no FP16 (or BF16) plan meets the model's tolerance, the export is still written without
    that graph before the ExportError says so.
    """
    entry, out_dir = request.entry, request.out_dir
    check_request(request)
    parent = make_folder(out_dir.parent, "export's parent folder")  # where it cannot be made, refused before the work
    started = time.perf_counter()
    small_shape = calibration_shape(request) if request.precisions else None
    clock = StageClock(5 + (small_shape is not None) + len(request.precisions), progress)

    unused: dict[str, str] = {}
    shape = (request.batch, entry.channels, *request.tile)
    with clock.stage("load", f"loading weights: {request.source.describe()}"):
        model = loaded_model(request, [shape, small_shape] if small_shape else [shape], unused, progress)

    plans = "/".join(request.precisions).upper()
    tracer = functools.partial(traced_graph, cache=request.trace_cache)
    # each tile's trace in a child of its own, both at once (forked_trace)
    with (
        ForkedTrace(tracer, model, shape) as export_trace,
        ForkedTrace(tracer, model, small_shape) if small_shape else contextlib.nullcontext() as calibration_trace,
    ):
        del model  # the traces hold what they need
        with clock.stage("trace", f"tracing {entry.id} at {shape} (opset {OPSET}){_where(export_trace, calibration_trace, plans)}"):
            traced = clock.traced(export_trace)
            traced_nodes = len(traced.graph.node)

        with clock.stage("simplify", f"simplifying {traced_nodes} nodes with onnxsim"):
            finished = finish_graph(traced, entry.fold_limit_mb)
            graph, merged = finished.graph, finished.merged_initializers
            del traced

        with clock.stage("check", f"checking the static graph ({len(graph.graph.node)} nodes)"):
            check_static(entry, graph)

        small_graph = None
        if calibration_trace is not None:
            waiting = "waiting for the trace at" if calibration_trace.in_child else "tracing again at"
            with clock.stage("calibration_trace", f"{waiting} {small_shape} for the {plans} plan's calibration"):
                small_graph = calibration_graph(clock.traced(calibration_trace), finished, request, lambda message: progress(f"      {message}"))

    with tempfile.TemporaryDirectory(prefix=".export-", dir=parent) as staging:
        staging = Path(staging)
        reduced = ReducedGraphs(staging, small_graph)
        for name in request.precisions:
            with clock.stage(name, f"building the {name.upper()} deploy graph"):
                build_reduced_graph(name, request, graph, reduced, lambda message: progress(f"      {message}"))
        with clock.stage("save", f"writing {out_dir}"):
            records = move_into(out_dir, staging, [FP32_FILE, *reduced.files], graph)
        manifest = build_manifest(request, records, graph, traced_nodes, merged, reduced.plans.get("fp16"), unused, time.perf_counter() - started, clock.costs)
        manifest = dataclasses.replace(manifest, bf16=reduced.plans.get("bf16"))
        manifest.write(out_dir)
    if reduced.failures:
        raise ExportError("; ".join(failure_message(name, exc, out_dir) for name, exc in reduced.failures.items()))
    progress(f"done in {manifest.export_seconds:.1f} s: {out_dir}")
    return manifest


def loaded_model(request: ExportRequest, shapes: list[tuple[int, ...]], unused: dict[str, str], progress: Progress) -> torch.nn.Module:
    """Our definition with the request's weights (the checkpoint's entries of other tasks into
    `unused`), and the exporter's modules imported for its traces at `shapes` (`load_exporter`:
    here, once, not in each trace's child; not where the trace cache holds every one)."""
    entry = request.entry
    state_dict = load_state_dict(entry, request.source, unused=unused)
    if unused:
        progress(f"      left out {len(unused)} checkpoint entries of other tasks, as expected (manifest.json lists them under unused_weights)")
    model = build_def(entry, state_dict, source=request.source.path or "random init")
    cache = TraceCache(request.trace_cache) if request.trace_cache is not None else None
    if cache is None or not all(cache.holds(trace_key(model, shape)) for shape in shapes):
        load_exporter()
    return model


def check_request(request: ExportRequest) -> None:
    """Refuse, before any work, a tile or batch the model cannot take, or a precision whose
    tolerance its config lacks."""
    request.entry.check_tile(request.tile)
    if request.batch < 1:
        raise DeployError(f"batch must be at least 1, not {request.batch}")
    for name in request.precisions:
        calibration_tolerance(request.entry, name)


def check_static(entry: ModelEntry, graph: onnx.ModelProto) -> None:
    problems = static_graph_violations(graph)
    if problems:
        raise ExportError(f"{entry.id}: exported graph is not static: {'; '.join(problems[:5])}")
    onnx.checker.check_model(graph, full_check=True)


def _where(export_trace: ForkedTrace, calibration_trace: ForkedTrace | None, plans: str) -> str:
    """Where the traces run, for the progress line."""
    where = " in a child process" if export_trace.in_child else ""
    if calibration_trace is not None and calibration_trace.in_child:
        where += f", and at {calibration_trace.shape} for the {plans} plan's calibration in another"
    return where


@dataclass
class ReducedGraphs:
    """The reduced-precision graphs an export built into `staging`: their files, their plans, and
    why a precision has none (no plan met its tolerance)."""

    staging: Path
    small_graph: onnx.ModelProto | None = None  # the calibration graph (see calibration_graph)
    calibration: precision.SharedCalibration | None = None  # measured for the first plan, shared by the next
    files: list[str] = dataclasses.field(default_factory=list)
    plans: dict[str, Fp16Summary | Bf16Summary] = dataclasses.field(default_factory=dict)
    failures: dict[str, ExportError] = dataclasses.field(default_factory=dict)


REDUCED_FILES = {"fp16": FP16_FILE, "bf16": BF16_FILE}


def build_reduced_graph(name: str, request: ExportRequest, graph: onnx.ModelProto, built: ReducedGraphs, progress: Progress) -> None:
    """Plan, check and stage the `name` ("fp16" | "bf16") deploy graph of `graph`, or record why not."""
    entry = request.entry
    shape = (request.batch, entry.channels, *request.tile)
    measured_shape = shape if built.small_graph is None else precision.input_shape(built.small_graph)
    checked_on = verify_inputs(entry, shape, measured_shape, name)
    builder = precision.build_fp16 if name == "fp16" else precision.build_bf16
    try:
        if built.calibration is None or not built.calibration.serves(checked_on):
            batches, label = calibration_batches(request, measured_shape)
            built.calibration = precision.measure(graph, batches, label, built.small_graph, checked_on, progress)
        else:
            progress(f"the {'/'.join(built.plans).upper() or 'first'} plan's calibration serves this plan too (same graph, same inputs)")
        reduced_graph, plan = builder(built.calibration, max_abs_tolerance=calibration_tolerance(entry, name), verify_inputs=checked_on, progress=progress)
    except ExportError as exc:
        built.failures[name] = exc
        return
    deduplicate_initializers(reduced_graph)
    onnx.checker.check_model(reduced_graph, full_check=True)
    save_model(reduced_graph, built.staging / REDUCED_FILES[name])
    built.files.append(REDUCED_FILES[name])
    built.plans[name] = plan


def calibration_tolerance(entry: ModelEntry, name: str) -> float:
    """The max |diff| a `name` plan must meet on its calibration inputs. FP16's has a default
    (0.02, from before configs named it); BF16's must be measured into the config."""
    key = f"{name}_calibration_max_abs"
    if name == "fp16":
        return entry.tolerances.get(key, 0.02)
    if key not in entry.tolerances:
        raise ExportError(f"{entry.id}: its config has no {key} tolerance; measure one before exporting {name.upper()}")
    return entry.tolerances[key]


def failure_message(name: str, exc: ExportError, out_dir: Path) -> str:
    """Why an export has no `name` graph, and how to export without asking for it."""
    if name == "fp16":
        return f"{exc}; the FP32 export is written to {out_dir} without model_fp16.onnx (re-export with --no-fp16, or without fp16 in --precision, to skip the FP16 graph)"
    return f"{exc}; the export is written to {out_dir} without {REDUCED_FILES[name]} (re-export without {name} in --precision to skip the {name.upper()} graph)"


def move_into(out_dir: Path, staging: Path, files: list[str], graph: onnx.ModelProto) -> dict[str, FileRecord]:
    """Save `graph` as model.onnx beside the staged `files`, then move them into `out_dir`;
    returns their records."""
    save_model(graph, staging / FP32_FILE)
    records = {name: FileRecord(sha256=sha256_file(staging / name), bytes=(staging / name).stat().st_size) for name in files}
    out_dir.mkdir(parents=True, exist_ok=True)
    # the manifest first: until the new one is written, the folder is an unfinished export;
    # then what an earlier export, its `verify` and `build` wrote, which would not describe this one
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    for stale in export_outputs(out_dir):
        stale.unlink()
    for name in files:
        shutil.move(str(staging / name), out_dir / name)
    return records


def calibration_shape(request: ExportRequest) -> tuple[int, int, int, int] | None:
    """The calibration graph's input shape: batch 1 at `calibration_tile`; None where that is the
    export's own shape (ranges are then measured on the export's graph)."""
    shape = (1, request.entry.channels, *calibration_tile(request.entry, request.tile))
    return None if shape == (request.batch, request.entry.channels, *request.tile) else shape


def calibration_graph(traced: onnx.ModelProto, export_graph: FinishedGraph, request: ExportRequest, progress: Progress) -> onnx.ModelProto | None:
    """The export's graph traced at the calibration tile (`traced`), finished as the export's was,
    or None where its nodes differ from the export's (ranges are then measured on the export's
    graph)."""
    small_graph = finish_graph(traced, request.entry.fold_limit_mb, hold=export_graph.held).graph
    if precision.corresponding_tensors(small_graph, export_graph.graph) is None:
        progress(
            f"the graph at {_shape_text(precision.input_shape(small_graph))} has other nodes than at {_shape_text(precision.input_shape(export_graph.graph))}: measuring ranges on the export's graph"
        )
        return None
    return small_graph


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def build_manifest(
    request: ExportRequest,
    files: dict[str, FileRecord],
    graph: onnx.ModelProto,
    traced_nodes: int,
    merged_initializers: int,
    fp16_report: Fp16Summary | None,
    unused: dict[str, str],
    seconds: float,
    stages: dict[str, StageCost],
) -> Manifest:
    entry, tile, batch = request.entry, request.tile, request.batch
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model_id=entry.id,
        model=ModelInfo(
            family=entry.family,
            task=entry.task,
            description=entry.description,
            arch=entry.arch,
            reference=original_name(entry),
            reference_chop=entry.reference_chop,
            task_index=entry.task_index,
        ),
        scale=entry.scale,
        **tiled_graph(
            tiling=replace(entry.tiling, tile=tuple(tile), batch=batch),
            scale=entry.scale,
            channels=entry.channels,
            out_channels=entry.out_channels,
            views=entry.views,
        ),
        opset=OPSET,
        exporter=EXPORTER,
        versions=versions(),
        source=request.source,
        graph=GraphStats(traced_nodes=traced_nodes, merged_initializers=merged_initializers, **graph_summary(graph)),
        fp16=fp16_report,
        files=files,
        tolerances=entry.tolerances,
        export_seconds=round(seconds, 4),
        unused_weights=unused,
        export_stages=stages,
    )
