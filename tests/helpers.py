"""Shared test helpers: tiny configurations of the real model ids, and tiny exports."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

import model_defs
from deploytool.build import export, precision, registry
from deploytool.build.networks import WeightsSource
from deploytool.build.registry import ModelEntry
from deploytool.runtime.fileio import sha256_file
from deploytool.runtime.input_batches import PARITY_BATCHES, parity_batch
from deploytool.runtime.manifest import BF16_FILE, FP32_FILE, MANIFEST_FILE, Manifest, read_manifest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# the variable naming this test run's trace cache (tests/conftest.py)
RUN_TRACE_CACHE = "DEPLOYTOOL_TEST_RUN_TRACE_CACHE"


def run_trace_cache() -> Path | None:
    """This test run's trace cache, shared by its exports (tests/conftest.py makes it): the suite
    exports the same tiny definitions at the same tiles many times, with other weights and options,
    and a reused trace is byte for byte the fresh one (tests/deploytool/build/test_trace_cache.py).
    None outside a pytest run (a script importing these helpers traces every time)."""
    folder = os.environ.get(RUN_TRACE_CACHE)
    return Path(folder) if folder else None


def load_script(name: str):
    """scripts/NAME.py as a module (scripts/ is not a package), for its tests."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cli_runner():
    """click's CliRunner with stderr kept apart from stdout (`result.stderr`): click 8.2 and later
    always keep them apart; 8.1, the declared floor (scripts/floor_check.py), only when asked."""
    import inspect

    from click.testing import CliRunner

    return CliRunner(mix_stderr=False) if "mix_stderr" in inspect.signature(CliRunner).parameters else CliRunner()


def family_ids(family: str) -> list[str]:
    return sorted(i for i, e in registry.all_entries().items() if e.family == family)


def full_size_state_dicts(model_id: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(ours, original) state dicts of a model id at its real size, asserted to share one layout.

    The original defines the official checkpoints' keys: the same keys and shapes mean those
    files load strictly into our definition.
    """
    from deploytool.build.networks import instantiate_original

    entry = registry.get(model_id)
    original = instantiate_original(entry, entry.arch).state_dict()
    ours = model_defs.build_model(entry.family, entry.arch).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in original.items()}
    return ours, original


def all_ids() -> list[str]:
    """Every model id of every discovered family."""
    return sorted(registry.all_entries())


def needs_openvino(test=None):
    """The mark that skips a test where OpenVINO is not installed (the test extra installs it):
    `@needs_openvino` on a test, `needs_openvino()` as a parameter's mark. (pytest is imported
    here, not by the module: scripts/cpp_bench.py imports this module without it.)"""
    import pytest

    missing = importlib.util.find_spec("openvino") is None
    mark = pytest.mark.skipif(missing, reason="OpenVINO is not installed: pip install deploytool[openvino] (the test extra has it)")
    return mark if test is None else mark(test)


def bf16_cpu_missing() -> str | None:
    """Why this machine cannot run the openvino-bf16 backend on its CPU (None: it can)."""
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed: pip install deploytool[openvino] (the test extra has it)"
    from deploytool.runtime.backends.openvino import bf16_devices

    if "CPU" not in bf16_devices():
        return "this CPU has no BF16 arithmetic (OpenVINO's OPTIMIZATION_CAPABILITIES lack BF16: no AVX-512 BF16 or AMX)"
    return None


def needs_bf16_cpu(test=None):
    """The mark that skips a test where the CPU cannot run the openvino-bf16 backend, saying why:
    `@needs_bf16_cpu` on a test, `needs_bf16_cpu()` as a parameter's mark."""
    import pytest

    missing = bf16_cpu_missing()
    mark = pytest.mark.skipif(missing is not None, reason=str(missing))
    return mark if test is None else mark(test)


def one_id_per_family() -> list[str]:
    """The first id (in `all_ids`' order) of every family."""
    first: dict[str, str] = {}
    for model_id in all_ids():
        first.setdefault(registry.get(model_id).family, model_id)
    return sorted(first.values())


def tiny_entry(model_id: str) -> ModelEntry:
    """The id's structure (upsampler, residual conv, window, range, channels, scale) at the toy
    size its family declares, with that configuration's tile."""
    entry = registry.get(model_id)
    family = model_defs.family(entry.family)
    arch = family.tiny_arch(dict(entry.arch))
    tile = family.tiny_tile(arch) if family.tiny_tile else entry.tiling.tile
    return dataclasses.replace(entry, arch=arch, tiling=dataclasses.replace(entry.tiling, tile=tile))


def tiny_state_dict(entry: ModelEntry, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights in the official layout, made by the original implementation (spandrel)."""
    from deploytool.build.networks import instantiate_original

    torch.manual_seed(seed)
    original = instantiate_original(entry, entry.arch)
    state, parameters = original.state_dict(), dict(original.named_parameters())
    # Random but not degenerate: biases, norms and BatchNorm statistics away from their 0/1 init
    # (computed buffers, e.g. position indices, stay: loading checks them)
    generator = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        if (key in parameters and ("bias" in key or "norm" in key)) or ".running_" in key:
            state[key] = value + 0.05 * torch.randn(value.shape, generator=generator)
    return state


def assert_matches_original(model_id: str, shapes: list[tuple[int, int, int, int]], atol: float = 1e-5) -> None:
    """Our definition and the original, given the same tiny weights, agree on inputs of `shapes`
    (batch, channels, height, width), and both upscale by the id's scale."""
    from deploytool.build.networks import build_def, build_original

    entry = tiny_entry(model_id)
    state = tiny_state_dict(entry)
    ours, original = build_def(entry, state), build_original(entry, entry.arch, state)
    for shape in shapes:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected, actual = original(x), ours(x)
        assert actual.shape == expected.shape == (shape[0], entry.out_channels, shape[2] * entry.scale, shape[3] * entry.scale)
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def save_official(state: dict[str, torch.Tensor], path: Path, wrapper: str | None = "params") -> Path:
    torch.save({wrapper: state} if wrapper else state, path)
    return path


def export_tiny(
    model_id: str, out_dir: Path, *, weights: Path | None = None, fp16: bool = True, bf16: bool = False, tile=None, batch: int = 1, **entry_changes
) -> dict:
    entry = dataclasses.replace(tiny_entry(model_id), **entry_changes)
    if weights is None:
        weights = save_official(tiny_state_dict(entry), out_dir.parent / f"{out_dir.name}.pth")
    from deploytool.build.checkpoints import load_state_dict_file

    loaded = load_state_dict_file(weights)
    source = WeightsSource(kind="checkpoint", path=str(weights), sha256=loaded.sha256, wrapper_key=loaded.wrapper_key)
    request = export.ExportRequest(
        entry=entry,
        source=source,
        out_dir=out_dir,
        tile=tile or entry.tiling.tile,
        batch=batch,
        fp16=fp16,
        bf16=bf16,
        calibration_count=2,
        trace_cache=run_trace_cache(),
    )
    return export.export(request)


class TinyExports:
    """The tiny export of each model id with both reduced plans (`export_tiny(ID, fp16=True,
    bf16=True)`: the id's tiny tile, batch 1, `tiny_state_dict`'s seed-0 weights), made on first
    use under `root` and shared by every test of a run (the `tiny_exports` fixture), because a
    real export costs seconds and the suite needs each one many times. The pytest-xdist workers of
    a run share `root`: the first worker to ask for an id exports it while the others wait on its
    lock, then read it (an id's tests land on either worker: each made its own copy before).
    Read-only: a test that writes into an export (verify's reports, OpenVINO's compiled blobs)
    writes into a `copy`; `changed` names the shared exports whose files differ from when they
    were made."""

    def __init__(self, root: Path):
        self.root = root
        self._manifests: dict[str, Manifest] = {}
        self._files: dict[str, dict[str, tuple[int, int]]] = {}

    def manifest(self, model_id: str) -> Manifest:
        if model_id not in self._manifests:
            self._record(model_id, wait=True)
        return self._manifests[model_id]

    def made(self, model_ids: list[str]) -> None:
        """Every id of `model_ids` exported (or read), those another worker is exporting now
        last: two workers asking for the same ids (a fixture of every family) each export
        others side by side, where asking in one order kept one waiting on the other's lock."""
        busy = [model_id for model_id in model_ids if model_id not in self._manifests and not self._record(model_id, wait=False)]
        for model_id in busy:
            self.manifest(model_id)

    def _record(self, model_id: str, wait: bool) -> bool:
        """Export (or read) the id and record it; False, without waiting, where another worker
        holds its lock and `wait` is False."""
        with exclusive(self.root / f"{model_id}.lock", wait=wait) as held:
            if held:
                out_dir = self.root / model_id
                # another worker of this run may have made it
                self._manifests[model_id] = read_manifest(out_dir) if (out_dir / MANIFEST_FILE).is_file() else self._make(model_id, out_dir)
                self._files[model_id] = _file_stamps(out_dir)
            return held

    def _make(self, model_id: str, out_dir: Path) -> Manifest:
        return export_tiny(model_id, out_dir, fp16=True, bf16=True)

    def folder(self, model_id: str) -> Path:
        self.manifest(model_id)
        return self.root / model_id

    def copy(self, model_id: str, into: Path) -> Path:
        """A private copy of the id's export at `into` (its checkpoint stays the shared one)."""
        return Path(shutil.copytree(self.folder(model_id), into))

    def copies(self, model_ids: list[str], into: Path) -> dict[str, Path]:
        """{id: a private copy of its export in the folder `into`}, the exports `made` first."""
        self.made(model_ids)
        return {model_id: self.copy(model_id, into / model_id) for model_id in model_ids}

    def changed(self) -> list[str]:
        return [model_id for model_id, stamps in self._files.items() if _file_stamps(self.root / model_id) != stamps]


class FullSizeExports(TinyExports):
    """The full-size export of each model id with both reduced plans: random-init weights (seed
    0), a 64 px tile (the id's own where its tile is fixed), batch 1, two calibration inputs. Shared
    by every test of a run (the `full_size_exports` fixture) and its pytest-xdist workers as
    TinyExports are. A full-size export costs tens of seconds to minutes, and the FP16 and the
    BF16 tests of an id judge the same graph."""

    def request(self, model_id: str) -> export.ExportRequest:
        entry = registry.get(model_id)
        tile = entry.tiling.tile if entry.tiling.fixed_tile else (64, 64)
        source = WeightsSource(kind="random-init", seed=0)
        return export.ExportRequest(entry, source, self.root / model_id, tile, 1, fp16=True, bf16=True, calibration_count=2)

    def _make(self, model_id: str, out_dir: Path) -> Manifest:
        return export.export(self.request(model_id))


def full_size_id(model_id: str):
    """`model_id` as the parameter of a test on `full_size_exports`: every test of one id in one
    xdist group, so that `--dist loadgroup` can run them on one worker, where none waits for
    another's export. (pytest 9.2 drops the groups: pytest-xdist issue 1386; the exports are
    shared across workers all the same.)"""
    import pytest

    return pytest.param(model_id, marks=pytest.mark.xdist_group(f"full-size-{model_id}"))


@contextlib.contextmanager
def exclusive(lock: Path, wait: bool = True):
    """Holds an exclusive lock on the file `lock` (made if missing) while the block runs; the OS
    releases it when the process ends, so a killed run leaves no stale lock. Yields whether it
    holds the lock: with `wait=False` it does not wait for another holder (False)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def _file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {path.relative_to(folder).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*")}


def assert_bf16_plan_holds(out: Path, manifest: Manifest) -> None:
    """The shipped BF16 graph (its islands read back from model_bf16.onnx, emulated) against
    model.onnx on verify's standard inputs: within the config's BF16 tolerances."""
    from deploytool.build import bf16
    from deploytool.build.metrics import psnr

    fp32, shipped = onnx.load(str(out / FP32_FILE)), onnx.load(str(out / BF16_FILE))
    assert export.static_graph_violations(shipped) == []
    assert manifest.files[BF16_FILE].sha256 == sha256_file(out / BF16_FILE)
    plan, tolerances = manifest.bf16, manifest.tolerances
    assert plan.max_abs_vs_fp32 <= tolerances["bf16_calibration_max_abs"] and 0 < plan.bf16_flop_share <= 1
    islands = bf16.fp32_islands(shipped, fp32)
    assert plan.fp32_nodes == len(islands)
    batches = [parity_batch(manifest.input.shape, index) for index in range(PARITY_BATCHES)]
    expected = precision.run_graph(fp32, batches)
    actual = precision.run_graph(bf16.emulate(fp32, islands), batches)
    for e, a in zip(expected, actual):
        assert float(np.abs(e - a).max()) <= tolerances["bf16_max_abs"] and psnr(e, a) >= tolerances["bf16_psnr_min"]


def assert_bf16_plan_needs_no_range(out: Path, manifest: Manifest, accumulations: list[str] = ()) -> None:
    """On an export stressed beyond FP16's range (the FP16 stress tests' twin): BF16 has FP32's
    exponent, so whole-graph BF16 (emulated) stays finite, the plan keeps no node for range, the
    `accumulations` (reductions over more than 256 values: the tile-wide sums) stay FP32, and the
    shipped plan holds (`assert_bf16_plan_holds`)."""
    from deploytool.build import bf16

    fp32 = onnx.load(str(out / FP32_FILE))
    batch = parity_batch(manifest.input.shape, 0)
    assert np.isfinite(precision.run_graph(bf16.emulate(fp32, ()), [batch])[0]).all()
    assert "range" not in manifest.bf16.fp32_by_reason, manifest.bf16.fp32_by_reason
    assert set(accumulations) <= bf16.fp32_islands(onnx.load(str(out / BF16_FILE)), fp32)
    assert manifest.bf16.fp32_by_reason.get("accumulation", 0) >= len(accumulations)
    assert_bf16_plan_holds(out, manifest)


# README: the stages in the order an export runs them
STAGES = ("load", "trace", "simplify", "check", "calibration_trace", "fp16", "bf16", "save")
TOP_LEVEL = {
    "schema_version",
    "model_id",
    "model",
    "scale",
    "input",
    "output",
    "tiling",
    "opset",
    "exporter",
    "versions",
    "source",
    "graph",
    "fp16",
    "files",
    "tolerances",
    "export_seconds",
    "unused_weights",
    "engines",
}


def contract_violations(data: dict) -> list[str]:
    """What in one manifest breaks the README's contract between its fields."""
    problems = [f"missing {key}" for key in sorted(TOP_LEVEL - set(data))]
    if problems:
        return problems
    if not re.fullmatch(r"1\.[0-9]+", str(data["schema_version"])):
        problems.append(f"schema_version {data['schema_version']!r} is not 1.MINOR")
    problems += _shape_violations(data) + _reduced_plan_violations(data)
    stages = list(data.get("export_stages", {}))
    if stages != [stage for stage in STAGES if stage in stages]:
        problems.append(f"export_stages {stages} are not in the order {STAGES}")
    return problems


def _shape_violations(data: dict) -> list[str]:
    """The graph shapes against the tiling, the views and the scale."""
    problems = []
    batch, channels, height, width = data["input"]["shape"]
    tiling, scale = data["tiling"], data["scale"]
    if [batch, height, width] != [tiling["batch"], *tiling["tile"]]:
        problems.append(f"input shape {data['input']['shape']} is not the tiling's batch {tiling['batch']} and tile {tiling['tile']}")
    if sum(view["channels"] for view in data["input"]["views"]) != channels:
        problems.append("the views' channels do not add up to the input's")
    out_batch, _, out_height, out_width = data["output"]["shape"]
    if [out_batch, out_height, out_width] != [batch, height * scale, width * scale]:
        problems.append(f"output shape {data['output']['shape']} is not the input's {data['input']['shape']} scaled by {scale}")
    return problems


def _reduced_plan_violations(data: dict) -> list[str]:
    """The graph files against the FP16 and BF16 summaries, and the summaries' own figures."""
    problems = []
    if "model.onnx" not in data["files"]:
        problems.append("files lists no model.onnx")
    for reduced in ("fp16", "bf16"):
        problems += reduced_plan_violations(data, reduced, data["input"]["shape"][1])
    return problems


def reduced_plan_violations(data: dict, reduced: str, channels: int) -> list[str]:
    """What in one manifest's `reduced` ("fp16" | "bf16") plan breaks the contract."""
    problems = []
    plan = data.get(reduced)  # bf16: absent before 1.4
    if (plan is None) != (f"model_{reduced}.onnx" not in data["files"]):
        problems.append(f"{reduced} and files disagree on whether there is a model_{reduced}.onnx")
    plan = plan or {}
    measured_at = plan.get("measured_at")
    if measured_at is not None and measured_at["shape"][1] != channels:
        problems.append(f"{reduced}.measured_at.shape {measured_at['shape']} has other channels than the input")
    limit, measured = plan.get("verify_inputs_limit"), plan.get("verify_inputs_max_abs")
    if (limit is None) != (measured is None) or (limit is not None and measured > limit):
        problems.append(f"{reduced}.verify_inputs_max_abs {measured} does not meet its limit {limit}")
    return problems


def ops_reading_the_input(model: onnx.ModelProto) -> dict[str, int]:
    """op type -> how many nodes read the graph's input, directly or through other nodes: what every
    run computes from the image, apart from what the graph computes from its constants alone."""
    reached = {value.name for value in model.graph.input}
    ops: dict[str, int] = {}
    for node in model.graph.node:  # in topological order
        if any(name in reached for name in node.input):
            reached.update(node.output)
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def constant_only_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes whose inputs are all constants, or made from constants alone (kept computed by the
    fold limit)."""
    constant = {init.name for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if all(name in constant for name in node.input if name):
            constant.update(node.output)
            found.append(node)
    return found


def write_test_png(path: Path, channels: int, size: tuple[int, int] = (21, 37)) -> Path:
    """An 8-bit PNG of seeded synthetic pixels, `channels` 1 or 3."""
    from deploytool.runtime import images
    from deploytool.runtime.input_batches import synthetic_batch

    images.write_image(path, synthetic_batch((1, channels, *size), seed=3)[0].transpose(1, 2, 0), bit_depth=8)
    return path


def assert_one_line_error(result, *fragments: str) -> None:
    """A click result that failed with exit status 2 and one `error:` line holding every fragment."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    assert all(fragment in lines[-1] for fragment in fragments), lines[-1]


def torchscript_graph(model: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """The graph torch's TorchScript-based exporter (the one before `tracing.trace`) makes at
    `example`'s shape, as the export used it (opset 17, folding left to onnxsim), unsimplified.
    Only for comparing the two exporters, while torch still has that one."""
    import io
    import warnings

    from deploytool.runtime.manifest import INPUT_NAME, OUTPUT_NAME

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=17, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=False
        )
    return onnx.load_from_string(buffer.getvalue())


def max_abs_against_torchscript(graph: onnx.ModelProto, model: torch.nn.Module, fold_limit_mb: float) -> float:
    """Max |difference| in ONNX Runtime, on one synthetic input at `graph`'s input shape, between
    `graph` (a finished export graph) and the TorchScript exporter's graph of `model`, finished
    as the export finishes its graphs."""
    from deploytool.build import precision
    from deploytool.runtime.input_batches import synthetic_batch

    shape = precision.input_shape(graph)
    reference = export.finish_graph(torchscript_graph(model, torch.zeros(shape)), fold_limit_mb).graph
    batch = synthetic_batch(shape, seed=0)
    ours, theirs = (precision.run_graph(g, [batch])[0].astype("float64") for g in (graph, reference))
    assert ours.shape == theirs.shape
    return float(abs(ours - theirs).max())


def assert_tiny_export_computes_what_torchscript_did(model_id: str, out_dir: Path) -> None:
    """`export_tiny(model_id, out_dir)`'s FP32 graph (torch.export) within 1e-6 max abs of the
    TorchScript exporter's graph of the same tiny model, while torch still has that exporter."""
    from deploytool.build.networks import build_def
    from deploytool.runtime.manifest import FP32_FILE

    entry = tiny_entry(model_id)
    model = build_def(entry, tiny_state_dict(entry))
    assert max_abs_against_torchscript(onnx.load(str(out_dir / FP32_FILE)), model, entry.fold_limit_mb) <= 1e-6


def _fp16_products() -> list[type]:
    """onnx.reference's Conv, MatMul and Gemm, whose products of FP16 operands run in FP32 (BLAS)
    and round to FP16 once; what follows the product (Conv's bias, Gemm's alpha, beta and C) stays
    in float16 as the reference computes it."""
    from onnx.reference.ops.op_conv import Conv
    from onnx.reference.ops.op_gemm import Gemm_7
    from onnx.reference.ops.op_matmul import MatMul

    def product(a, b):
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)

    def matmul(self, a, b):
        return (product(a, b),) if a.dtype == np.float16 else MatMul._run(self, a, b)

    def conv(self, x, w, b=None, **attributes):
        if x.dtype != np.float16:
            return Conv._run(self, x, w, b, **attributes)
        (y,) = Conv._run(self, x.astype(np.float32), w.astype(np.float32), None, **attributes)
        y = y.astype(np.float16)
        return (y if b is None else y + b.reshape(1, -1, *[1] * (y.ndim - 2)),)

    def gemm(self, a, b, c=None, alpha=None, beta=None, transA=None, transB=None):
        if a.dtype != np.float16:
            return Gemm_7._run(self, a, b, c, alpha, beta, transA, transB)
        y = product(a.T if transA else a, b.T if transB else b) * alpha
        if c is not None and beta != 0:
            y += c * beta
        return (y.astype(np.float16),)

    return [type(name, (op,), {"_run": run, "op_domain": ""}) for name, op, run in (("Conv", Conv, conv), ("MatMul", MatMul, matmul), ("Gemm", Gemm_7, gemm))]


def true_fp16_outputs(model: onnx.ModelProto, batch: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
    """`names` (default: the graph's outputs) as onnx's reference evaluator computes them: FP16
    nodes in numpy float16, every result stored in FP16 as a GPU stores it. (ONNX Runtime's CPU
    provider runs FP16 nodes in FP32 and may skip the rounding between two of them, so it cannot
    show an overflow between nodes.)

    The products (Conv, MatMul, Gemm) take their FP16 operands to FP32 and round the result to
    FP16: numpy's float16 products, which the evaluator would run, also sum in FP32, but without
    BLAS, and they were most of the time of the tests that use this. The two agree to one FP16
    step and overflow alike (tests/test_helpers.py)."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model, new_ops=_fp16_products())
    with np.errstate(all="ignore"):
        return evaluator.run(names, {evaluator.input_names[0]: batch})
