"""TensorRT engines from an export: which graph and flags a TensorRT version needs, the build,
and the manifest record that `run` checks an engine against.

The precision contract is `model_fp16.onnx`. TensorRT >= 10.12 (and 11, which has nothing else)
builds it as a strongly typed network: every tensor keeps the type the ONNX gives it, FP32
islands included. Older TensorRT 10 releases (e.g. JetPack's) cannot build strongly typed
networks; there the FP32 graph is built with the FP16 flag, and the nodes that are FP32 in
`model_fp16.onnx` are pinned to FP32 as layer precision constraints, so both paths keep the same
islands. Everything but `build_engine` is pure and tested without TensorRT.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from deploytool.backends.tensorrt import engine_filename, require_tensorrt
from deploytool.errors import BackendUnavailable, DeployError
from deploytool.fileio import atomic_path, inside, sha256_file
from deploytool.graphs import tensor_types
from deploytool.manifest import (
    FP16_FILE,
    FP32_FILE,
    TIMING_CACHE,
    EngineRecord,
    read_manifest,
)

STRONGLY_TYPED_SINCE = (10, 12)
OLDEST_SUPPORTED = (10, 0)


def parse_version(version: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35); refuses what is not a TensorRT version string."""
    numbers = re.findall(r"\d+", version)
    if not numbers:
        raise DeployError(f"cannot read a TensorRT version from {version!r}")
    return tuple(int(n) for n in numbers)


@dataclass(frozen=True)
class BuildPlan:
    """What the builder is given for one TensorRT version."""

    graph: str  # file in the export directory
    strongly_typed: bool
    fp16_flag: bool
    # ONNX node names pinned to FP32 (layer precision constraints); empty when strongly typed
    fp32_layers: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        if self.strongly_typed:
            return f"{self.graph} as a strongly typed network (precision as written in the ONNX)"
        return f"{self.graph} with the FP16 flag and {len(self.fp32_layers)} layers pinned to FP32"


def plan_build(trt_version: str, fp32_islands: tuple[str, ...]) -> BuildPlan:
    """The graph and flags for `trt_version`; `fp32_islands` are the FP32 nodes of model_fp16.onnx."""
    version = parse_version(trt_version)[:2]
    if version < OLDEST_SUPPORTED:
        raise DeployError(f"TensorRT {trt_version} is too old: deploytool builds with TensorRT 10 or 11")
    if version >= STRONGLY_TYPED_SINCE:
        return BuildPlan(graph=FP16_FILE, strongly_typed=True, fp16_flag=False)
    return BuildPlan(graph=FP32_FILE, strongly_typed=False, fp16_flag=True, fp32_layers=tuple(fp32_islands))


def fp32_islands(fp16_model: onnx.ModelProto) -> tuple[str, ...]:
    """Names of the compute nodes that model_fp16.onnx runs in FP32 (its Casts excluded).

    They are the nodes of the FP32 graph too (the FP16 graph keeps node names), so an older
    TensorRT can be told to keep exactly these in FP32.
    """
    from onnx import TensorProto

    types = {name: tensor.elem_type for name, tensor in tensor_types(fp16_model).items()}
    islands = []
    for node in fp16_model.graph.node:
        if node.op_type == "Cast":
            continue
        if any(types.get(name) == TensorProto.FLOAT for name in node.output):
            islands.append(node.name)
    return tuple(islands)


def parse_size(text: str) -> int:
    """'4G', '512M', '1048576' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise DeployError(f"cannot read a size from {text!r}: use e.g. 4G, 512M or a number of bytes")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit])


@dataclass(frozen=True)
class BuildOptions:
    workspace_bytes: int = 4 * 2**30
    opt_level: int = 3
    timing_cache: Path | None = None  # default: timing.cache next to the engine


def engine_path(export_dir: Path, capability: tuple[int, int], trt_version: str) -> Path:
    """Where the engine for this GPU and TensorRT goes: a file of the export folder, whatever the
    version string holds."""
    return inside(export_dir, engine_filename(capability, trt_version), "engine name")


def build_engine(export_dir: str | Path, options: BuildOptions = BuildOptions(), progress: Callable[[str], None] = lambda m: None) -> tuple[str, EngineRecord]:
    """Build the engine of an export for this GPU and TensorRT; returns its file name and record."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    trt = require_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("building a TensorRT engine needs a CUDA GPU, and torch sees none on this machine")
    capability, version = torch.cuda.get_device_capability(), trt.__version__
    engine_file = engine_path(export_dir, capability, version)
    islands = fp32_islands(onnx.load(str(manifest.check_file(export_dir, FP16_FILE)), load_external_data=False))
    plan = plan_build(version, islands)
    graph_path = manifest.check_file(export_dir, plan.graph)
    progress(f"TensorRT {version} on {torch.cuda.get_device_name()} (sm{capability[0]}{capability[1]}): {plan.describe()}")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(typed) if plan.strongly_typed and typed is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeployError(f"TensorRT could not parse {graph_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.opt_level
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pin_fp32(network, set(plan.fp32_layers), trt)
    cache_path = Path(options.timing_cache) if options.timing_cache else export_dir / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    progress("building (minutes for large models; the timing cache makes rebuilds faster)")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeployError("TensorRT failed to build the engine (its log above says why)")
    seconds = time.perf_counter() - started
    name = engine_file.name
    with atomic_path(export_dir / name) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    entry = EngineRecord(
        sha256=sha256_file(export_dir / name),
        bytes=(export_dir / name).stat().st_size,
        gpu=torch.cuda.get_device_name(),
        compute_capability=tuple(capability),
        tensorrt=version,
        plan=asdict(plan) | {"fp32_layers": len(plan.fp32_layers)},
        workspace_bytes=options.workspace_bytes,
        opt_level=options.opt_level,
        timing_cache=str(cache_path),
        build_seconds=round(seconds, 1),
    )
    manifest.with_engine(name, entry).write(export_dir)
    progress(f"engine {name} built in {seconds:.0f} s")
    return name, entry


def pin_fp32(network: Any, node_names: set[str], trt: Any) -> int:
    """Constrain to FP32 every layer the ONNX parser made from one of `node_names`.

    A layer is matched by its name (the parser names a single-layer node after it) or by the
    ONNX node its metadata names (`[ONNX Layer: NAME]`, set by the parser on every layer it
    creates, also the extra ones of a multi-layer node). Returns how many layers were pinned.
    """
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        sources = set(re.findall(r"\[ONNX Layer: ([^\]]+)\]", getattr(layer, "metadata", "") or ""))
        if layer.name in node_names or sources & node_names:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned
