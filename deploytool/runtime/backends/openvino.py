"""The OpenVINO backends, one module in the registry: `openvino`, the exported FP32 graph
(`model.onnx`) on an OpenVINO device, CPU by default; and `openvino-bf16`, the export's BF16 plan
(`model_bf16.onnx`) on a device with BF16 arithmetic (below).

Imported lazily: OpenVINO is an optional extra (`pip install deploytool[openvino]`). Inference
precision is pinned to f32: on CPUs with AVX-512 BF16 or AMX, OpenVINO otherwise runs the graph
in bf16, which is not the FP32 backend's contract (its outputs are judged with FP32 tolerances).

OpenVINO compiles the graph as `split_channel_convolutions` leaves it: a channel Split whose
chunks a convolution made is computed chunk by chunk where they are made (the same sums).

Compiled models are cached in the export folder, under `openvino-cache/<key>/`, where the key
hashes the graph's sha256 (from the manifest), OpenVINO's build, the device, the precision and
the graph's form (`GRAPH_FORM`): a changed graph or another OpenVINO never meets a blob compiled
for something else. The folder holds the graph as OpenVINO compiles it (`graph.xml`, OpenVINO's
IR) and the blob compiled from it, and the second `run` on the same export imports the blob
instead of reading and compiling the graph again. The C++ runtime (`deploytool-infer --backend
openvino`) computes the same key and writes the same IR, so both share the blobs.

`openvino-bf16` honours the plan by compiling `model_bf16.onnx` with f32 inference precision:
OpenVINO's CPU plugin then runs every node in the type the graph gives it, the bfloat16 nodes on
its BF16 kernels and the float32 nodes (the plan's FP32 islands) in FP32. With bf16 inference
precision it would lower the islands to BF16 as well, and OpenVINO's per-node "keep in FP32"
marking (`DisablePrecisionConversion`) is neither in its Python API nor in the wheel's C++
headers. Devices are asked, not guessed: a device runs the plan when OpenVINO lists `BF16` in its
`OPTIMIZATION_CAPABILITIES`; elsewhere the backend is refused in one line with the reason
(OpenVINO would otherwise emulate BF16 slowly). Its compiled models are cached as the FP32
backend's, keyed by the BF16 graph's sha256, so a second `run` imports the blob.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends.base import BF16, FP32, Backend, ClosingRunner, OpenRequest, TritonRuntime, register
from deploytool.runtime.manifest import BF16_FILE, FP32_FILE, Manifest

OPENVINO = "openvino"
INSTALL = "pip install deploytool[openvino]"
NOT_INSTALLED = f"OpenVINO is not installed: {INSTALL}"
DEFAULT_DEVICE = "CPU"
PRECISION = "f32"
CACHE_FOLDER = "openvino-cache"
# The form OpenVINO compiles the export's graph in (split_channel_convolutions), part of the cache
# key: a later form never imports a blob compiled from an earlier one
GRAPH_FORM = "channel-split-convolutions-1"
IR_FILE = "graph.xml"


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(NOT_INSTALLED) from None
    return openvino


def openvino_build() -> str:
    """OpenVINO's full build string, e.g. '2026.4.1-22982-e213a147257-releases/2026/4'."""
    return require_openvino().get_version()


def cache_key(graph_sha256: str, build: str, device: str, precision: str = PRECISION) -> str:
    """The cache folder's name for one graph, OpenVINO build, device and inference precision (and
    `GRAPH_FORM`)."""
    return hashlib.sha256(f"{graph_sha256}\n{build}\n{device}\n{precision}\n{GRAPH_FORM}".encode()).hexdigest()[:16]


def cache_dir(export_dir: str | Path, manifest: Manifest, device: str, precision: str = PRECISION, graph: str = FP32_FILE) -> Path:
    """The cache folder for the export's `graph` (a file of its manifest) compiled for `device`."""
    return Path(export_dir) / CACHE_FOLDER / cache_key(manifest.files[graph].sha256, openvino_build(), device, precision)


def available_devices() -> list[str]:
    return list(require_openvino().Core().available_devices)


def openvino_reason(exc: Exception) -> str:
    """The line of an OpenVINO exception that says what is wrong: its message starts with lines
    naming where it was raised ("Exception from src/inference/src/cpp/core.cpp:84:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Exception from ")]
    return (said or lines or [type(exc).__name__])[0]


def check_device(device: str, available: list[str]) -> None:
    """Refuse, in one line listing what OpenVINO sees, a device it does not see.

    A device with an index (`GPU.1`) must be listed as such; a bare family name (`GPU`) is
    accepted when any device of that family is listed (OpenVINO then picks its first). A
    DeployError, not BackendUnavailable: `verify` fails on a device asked for, where it skips a
    backend this machine cannot run at all.
    """
    if device in available or any(seen.split(".")[0] == device for seen in available):
        return
    raise DeployError(f"OpenVINO sees no {device} device on this machine; it sees: {', '.join(available) or 'none'}")


# How many channel-wise nodes (bias Adds, depthwise convolutions) may lie between a Split and the
# Convolution that made its channels
_CHANNEL_WISE_DEPTH = 4


def split_channel_convolutions(model) -> int:
    """Compute the chunks of a channel Split where they are made, in an OpenVINO model; returns how
    many Splits went.

    Where a Split (or VariadicSplit) of the channel axis reads a Convolution's output through
    nodes that compute each channel from that channel alone (a per-channel bias Add, a depthwise
    GroupConvolution), each read by the next alone, every chunk gets a Convolution and chain of
    its own over its slice of the weights. Each channel is the same sum of the same products
    (OpenVINO may add a smaller convolution's in another order: last-bit differences; Restormer at
    128 px came out bit for bit the same). Why: OpenVINO's CPU plugin copies a channel Split of its
    blocked layouts in its reference kernel, which was 29% of Restormer's FP32 time at 128 px
    (88 Splits: its attention's q/k/v, its gated feed-forward's halves) and half its BF16 time;
    ONNX Runtime splits well and runs the smaller convolutions slower, so the export's graph keeps
    the Split and the OpenVINO backends rewrite what they compile.
    """
    _fold_constants(model)
    rewritten = 0
    for split in [op for op in model.get_ordered_ops() if op.get_type_name() in ("Split", "VariadicSplit")]:
        chunks, chain = _channel_chunks(split), _channel_chain(split)
        if chunks is None or chain is None:
            continue
        for index, (start, stop) in enumerate(chunks):
            value = chain[-1].input_value(0)
            for node in reversed(chain):
                value = _chunk_node(node, value, start, stop, f"{node.get_friendly_name()}/chunk{index}").output(0)
            for target in list(split.output(index).get_target_inputs()):
                target.replace_source_output(value)
        rewritten += 1
    if rewritten:
        _fold_constants(model)  # the weights' slices become constants
    return rewritten


def _fold_constants(model) -> None:
    from openvino import passes

    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(model)


def _constant(node, index: int):
    """The Constant feeding input `index` of `node`, or None."""
    source = node.input_value(index).get_node()
    return source if source.get_type_name() == "Constant" else None


def _integers(node, index: int) -> list[int] | None:
    """The integers of the Constant feeding input `index` of `node`, or None."""
    source = _constant(node, index)
    return None if source is None else [int(v) for v in np.ravel(source.get_data())]


def _channel_chunks(split) -> list[tuple[int, int]] | None:
    """The [start, stop) channels of each output of a channel Split of a static NCHW tensor."""
    shape = split.input_value(0).get_partial_shape()
    axis = _integers(split, 1)
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or not shape[1].is_static or axis is None or axis[0] % 4 != 1:
        return None
    channels = shape[1].get_length()
    if split.get_type_name() == "Split":
        count = split.get_attributes()["num_splits"]
        lengths = [channels // count] * count
    else:
        lengths = _integers(split, 2)
        if lengths is None:
            return None
        if -1 in lengths:
            lengths[lengths.index(-1)] = channels - (sum(lengths) + 1)
    starts = np.cumsum([0, *lengths])
    return [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


def _channel_chain(split) -> list | None:
    """The nodes from the Split's input up to the Convolution that made its channels (Split side
    first), each read by the next alone; None where the channels come otherwise."""
    chain, value = [], split.input_value(0)
    while len(chain) <= _CHANNEL_WISE_DEPTH and len(value.get_target_inputs()) == 1:
        node = value.get_node()
        kind = node.get_type_name()
        if kind == "Convolution" and _constant(node, 1) is not None:
            return [*chain, node]
        if kind == "GroupConvolution" and _is_depthwise(node):
            value = node.input_value(0)
        elif kind == "Add" and (constant := _per_channel_input(node)) is not None:
            value = node.input_value(1 - constant)
        else:
            return None
        chain.append(node)
    return None


def _is_depthwise(node) -> bool:
    """A GroupConvolution of one input and one output channel per group (weights G x 1 x 1 x kh x kw)."""
    weights = _constant(node, 1)
    return weights is not None and len(weights.shape) == 5 and tuple(weights.shape)[1:3] == (1, 1)


def _per_channel_input(node) -> int | None:
    """Which input of an Add is a constant of one value per channel (N x C x 1 x 1 or C x 1 x 1)."""
    for index in (1, 0):
        source = _constant(node, index)
        shape = tuple(source.shape) if source is not None else ()
        if len(shape) in (3, 4) and all(d == 1 for d in shape[-2:]) and all(d == 1 for d in shape[:-3]):
            return index
    return None


def _chunk_node(node, value, start: int, stop: int, name: str):
    """`node` computing channels [start, stop) of its output from `value` (those channels of its
    input, or for the Convolution all of them), over its constant's slice."""
    from openvino import opset13 as ops

    def sliced(index: int, axis: int):
        return ops.slice(node.input_value(index), np.array([start]), np.array([stop]), np.array([1]), np.array([axis]))

    kind, attributes = node.get_type_name(), node.get_attributes()
    if kind in ("Convolution", "GroupConvolution"):
        convolution = ops.convolution if kind == "Convolution" else ops.group_convolution
        geometry = [attributes[k] for k in ("strides", "pads_begin", "pads_end", "dilations")]
        made = convolution(value, sliced(1, 0), *geometry, auto_pad=attributes["auto_pad"])
    else:
        index = _per_channel_input(node)
        constant = _constant(node, index)
        axis = len(constant.shape) - 3
        made = ops.add(value, sliced(index, axis) if tuple(constant.shape)[axis] != 1 else node.input_value(index))
    made.set_friendly_name(name)
    return made


def compiled_graph(core, graph: str | Path, cache: str | Path | None):
    """What OpenVINO compiles for the ONNX `graph`: the model `split_channel_convolutions` leaves;
    with a `cache` folder, that model written there as IR (`IR_FILE`, once) and compiled from its
    path, so that a cached blob is imported without reading either graph."""
    ir = None if cache is None else Path(cache) / IR_FILE
    if ir is not None and ir.is_file():
        return str(ir)
    model = core.read_model(str(graph))
    split_channel_convolutions(model)
    if ir is None:
        return model
    write_ir(model, ir)
    return str(ir)


def write_ir(model, ir: Path) -> None:
    """`model` as OpenVINO IR at `ir` (and its .bin), weights in their own types, written beside
    and renamed into place (the .bin first: an .xml names a complete pair)."""
    from openvino import save_model

    staged = ir.with_name(f".{ir.stem}-{os.getpid()}.xml")
    try:
        save_model(model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), ir.with_suffix(".bin"))
        os.replace(staged, ir)
    except (OSError, RuntimeError) as exc:  # OpenVINO's own write errors are RuntimeErrors: their last line says what
        for path in (staged, staged.with_suffix(".bin")):
            path.unlink(missing_ok=True)
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1]
        raise DeployError(f"cannot write the OpenVINO graph {ir}: {reason}") from None


class OpenVinoRunner(ClosingRunner):
    """Runs an ONNX graph of the export compiled by OpenVINO for `device`, with f32 inference
    precision (each node in the type the graph gives it); `precision="bf16"` lowers the whole
    graph to BF16 instead (scripts/openvino_bench.py's whole-graph row, not a backend)."""

    def __init__(
        self,
        graph: str | Path,
        *,
        name: str = OPENVINO,
        device: str = DEFAULT_DEVICE,
        cache: str | Path | None = None,
        threads: int = 0,
        precision: str = PRECISION,
    ):
        openvino = require_openvino()
        core = openvino.Core()
        check_device(device, list(core.available_devices))
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if cache is not None:
            try:
                Path(cache).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DeployError(f"cannot create the OpenVINO cache folder {cache}: {exc.strerror or exc}") from None
            config["CACHE_DIR"] = str(cache)
        self.name = name
        self.device = f"openvino {device}"
        try:
            self.compiled = core.compile_model(compiled_graph(core, graph, cache), device, config)
        except RuntimeError as exc:
            raise DeployError(f"OpenVINO could not compile {graph} for {device}: {openvino_reason(exc)}") from None
        graph_input = self.compiled.input(0)
        if graph_input.get_partial_shape().is_dynamic:
            raise DeployError(f"{graph}: OpenVINO reads a dynamic input shape; exports have static shapes")
        self.input_shape = tuple(int(d) for d in graph_input.get_shape())
        self.request = self.compiled.create_infer_request()

    @classmethod
    def for_export(cls, export_dir: str | Path, manifest: Manifest, *, device: str = DEFAULT_DEVICE) -> OpenVinoRunner:
        graph = manifest.check_file(export_dir, FP32_FILE)
        return cls(graph, device=device, cache=cache_dir(export_dir, manifest, device))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.request is None:
            raise DeployError(f"{self.name}: the runner was closed")
        if tuple(batch.shape) != self.input_shape:
            raise DeployError(f"{self.name}: input shape {tuple(batch.shape)} does not match the graph's static {self.input_shape}")
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return self.request.get_output_tensor(0).data.copy()

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _open(request: OpenRequest) -> OpenVinoRunner:
    return OpenVinoRunner.for_export(request.export_dir, request.manifest, device=request.device or DEFAULT_DEVICE)


def triton_parameters(instances: int) -> dict[str, str]:
    """Triton's OpenVINO backend parameters (the keys its README documents; it refuses others):
    one OpenVINO stream per tile instance, so instances run side by side instead of queueing on one.

    The backend has no parameter for FP32 inference precision (`HINT_BF16` takes only YES), so on
    CPUs with AVX-512 BF16 or AMX OpenVINO's default, bf16, applies: `TRITON_PRECISION_NOTE`.
    """
    return {"PERFORMANCE_HINT": "LATENCY" if instances == 1 else "THROUGHPUT", "NUM_STREAMS": str(instances)}


TRITON_PRECISION_NOTE = (
    "Triton's OpenVINO backend cannot pin f32 inference precision: on CPUs with AVX-512 BF16 or AMX it runs the graph in bf16, "
    "unlike `deploytool run --backend openvino`; use --runtime python-ort for FP32 results there"
)


def _fp32_graph(export_dir: Path, manifest: Manifest, fp32: bool) -> Path:
    return manifest.check_file(export_dir, FP32_FILE)


TRITON_OPENVINO = TritonRuntime(
    OPENVINO,
    "Triton's OpenVINO backend (CPU)",
    {"backend": "openvino", "default_model_filename": "model.onnx"},
    "model.onnx",
    _fp32_graph,
    on_cpu=True,
    parameters=triton_parameters,
    note=TRITON_PRECISION_NOTE,
)


def _probe(facts: dict) -> dict:
    return {"openvino_devices": available_devices() if facts.get("openvino") else []}


def _report(facts: dict) -> list[str]:
    return [f"{'OpenVINO':<12} devices {', '.join(facts.get('openvino_devices') or []) or 'none'}"] if facts.get("openvino") else []


def _doctor_note(facts: dict) -> str:
    if not facts.get("openvino"):
        return f"no {OPENVINO} backend ({NOT_INSTALLED})"
    return f"OpenVINO on {', '.join(facts.get('openvino_devices') or ['no device'])} (--device; default CPU)"


register(
    Backend(
        OPENVINO,
        FP32,
        "OpenVINO on the exported FP32 graph, f32 inference precision",
        _open,
        file=FP32_FILE,
        requires=("openvino",),
        install=INSTALL,
        takes_device=True,
        device_help="the OpenVINO device, e.g. GPU or NPU  [default: CPU]",
        verify_by_default=False,  # an optional extra: `verify` runs it when asked by name
        doctor_note=_doctor_note,
        triton=(TRITON_OPENVINO,),
        probe=_probe,
        report=_report,
    )
)


# -- openvino-bf16: the BF16 plan (see the module's docstring)

OPENVINO_BF16 = "openvino-bf16"
BF16_CAPABILITY = "BF16"


def bf16_refusal(device: str, capabilities: list[str]) -> str | None:
    """Why `device`, whose OPTIMIZATION_CAPABILITIES are `capabilities`, cannot run the BF16 plan (None: it can)."""
    if BF16_CAPABILITY in capabilities:
        return None
    return (
        f"{OPENVINO_BF16} needs BF16 arithmetic (on a CPU: AVX-512 BF16 or AMX); OpenVINO's {device} offers "
        f"{', '.join(capabilities) or 'no optimization capabilities'}, without BF16"
    )


def device_capabilities(core, device: str) -> list[str]:
    return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]


def _bf16_probe(facts: dict[str, Any]) -> dict[str, Any]:
    """doctor's fact: {device: its OPTIMIZATION_CAPABILITIES} for every device OpenVINO sees."""
    if not facts.get("openvino"):
        return {"openvino_capabilities": {}}
    core = require_openvino().Core()
    return {"openvino_capabilities": {device: device_capabilities(core, device) for device in core.available_devices}}


def capable(capabilities: dict[str, list[str]]) -> list[str]:
    """The devices of {device: OPTIMIZATION_CAPABILITIES} that can run the BF16 plan."""
    return [device for device, offered in capabilities.items() if bf16_refusal(device, offered) is None]


def _bf16_report(facts: dict[str, Any]) -> list[str]:
    if not facts.get("openvino"):
        return []
    return [f"{'OpenVINO BF16':<12} {', '.join(capable(facts.get('openvino_capabilities') or {})) or 'no device'}"]


def bf16_devices() -> list[str]:
    """The devices OpenVINO sees here that can run the BF16 plan."""
    return capable(_bf16_probe({"openvino": True})["openvino_capabilities"])


def check_bf16_device(device: str) -> None:
    """Refuse, in one line, a device OpenVINO does not see or one without BF16 arithmetic."""
    core = require_openvino().Core()
    check_device(device, list(core.available_devices))
    refusal = bf16_refusal(device, device_capabilities(core, device))
    if refusal:
        raise BackendUnavailable(refusal)


def open_bf16_runner(export_dir: str | Path, manifest: Manifest, *, device: str = DEFAULT_DEVICE) -> OpenVinoRunner:
    """A runner of the export's BF16 plan on `device` (refused where it has no BF16)."""
    graph = manifest.check_file(export_dir, BF16_FILE)
    check_bf16_device(device)
    return OpenVinoRunner(graph, name=OPENVINO_BF16, device=device, cache=cache_dir(export_dir, manifest, device, graph=BF16_FILE))


def _bf16_check(facts: dict[str, Any]) -> str | None:
    capabilities = facts.get("openvino_capabilities") or {}
    return None if capable(capabilities) else bf16_refusal(DEFAULT_DEVICE, capabilities.get(DEFAULT_DEVICE, []))


def _bf16_doctor_note(facts: dict[str, Any]) -> str:
    if not facts.get("openvino"):
        return f"no {OPENVINO_BF16} backend ({NOT_INSTALLED})"
    refusal = _bf16_check(facts)
    if refusal:
        return f"no {OPENVINO_BF16} backend: {refusal}"
    return f"{OPENVINO_BF16}: the BF16 plan on {', '.join(capable(facts.get('openvino_capabilities') or {}))}"


def _open_bf16(request: OpenRequest) -> OpenVinoRunner:
    return open_bf16_runner(request.export_dir, request.manifest, device=request.device or DEFAULT_DEVICE)


def _bf16_plan(export_dir: Path, manifest: Manifest, fp32: bool) -> Path:
    if BF16_FILE not in manifest.files:
        raise DeployError(f"{export_dir} has no {BF16_FILE}: export it with --precision fp16,bf16 to serve the BF16 plan")
    return manifest.check_file(export_dir, BF16_FILE)


# Triton's OpenVINO backend cannot serve the plan: of the CPU properties it sets only
# INFERENCE_NUM_THREADS, COMPILATION_NUM_THREADS, HINT_BF16 (YES: bf16 inference precision),
# NUM_STREAMS and PERFORMANCE_HINT, so on a BF16 CPU OpenVINO's default, bf16 inference precision,
# would lower the plan's FP32 islands to BF16. A Python-backend model runs this backend instead.
TRITON_OPENVINO_BF16 = TritonRuntime(
    OPENVINO_BF16,
    "OpenVINO on the BF16 plan in a Python model (CPU with BF16)",
    {"backend": "python"},
    BF16_FILE,
    _bf16_plan,
    on_cpu=True,
    python_model="BackendTileModel",
    fp32_refusal=f"--fp32 chooses model.onnx for --runtime onnx; the {OPENVINO_BF16} runtime serves the BF16 plan ({BF16_FILE})",
    note="the server's CPU needs BF16 arithmetic (AVX-512 BF16 or AMX), as this one has, and the environment of its Python models deploytool[serve,openvino]",
    opens=OPENVINO_BF16,
    check=lambda: check_bf16_device(DEFAULT_DEVICE),
)

register(
    Backend(
        OPENVINO_BF16,
        BF16,
        "OpenVINO on the BF16 plan (model_bf16.onnx), its FP32 islands in FP32, on devices with BF16 arithmetic",
        _open_bf16,
        file=BF16_FILE,
        requires=("openvino",),
        install=INSTALL,
        check=_bf16_check,
        takes_device=True,
        verify_by_default=False,  # an optional extra, and a CPU feature: `verify` runs it when asked by name
        device_help="an OpenVINO device with BF16 arithmetic  [default: CPU]",
        doctor_note=_bf16_doctor_note,
        triton=(TRITON_OPENVINO_BF16,),
        probe=_bf16_probe,
        report=_bf16_report,
    )
)
