"""TensorRT engines from an export: which graph and flags a TensorRT version needs, the build,
and the manifest record that `run` checks an engine against.

The precision contract is `model_fp16.onnx` (or, with `--precision bf16`, `model_bf16.onnx`),
built as a strongly typed network: every tensor keeps the type the ONNX gives it, FP32 islands
included. BF16 kernels need compute capability 8.0 (Ampere) or newer, checked before building. Every TensorRT deploytool supports (10, JetPack
6's 10.3 included, and 11) has `NetworkDefinitionCreationFlag.STRONGLY_TYPED`; 10.12 deprecated
weak typing, it did not add strong typing. A TensorRT without the flag is refused rather than
given a weakly typed network, which would build in FP32 or lose the islands. Everything but
`build_engine` is pure and tested without TensorRT.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends.tensorrt.run import engine_filename, require_tensorrt
from deploytool.runtime.fileio import atomic_path, inside, sha256_file
from deploytool.runtime.manifest import (
    BF16_FILE,
    FP16_FILE,
    TIMING_CACHE,
    EngineRecord,
    read_manifest,
)

OLDEST_SUPPORTED = (10, 0)
# the deploy graph each engine precision is built from
GRAPHS = {"fp16": FP16_FILE, "bf16": BF16_FILE}
BF16_OLDEST_GPU = (8, 0)


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

    def describe(self) -> str:
        return f"{self.graph} as a strongly typed network (precision as written in the ONNX)"


def has_strongly_typed(trt: Any) -> bool:
    """Whether this TensorRT module can create strongly typed networks (asked, not inferred from its version)."""
    return hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def check_precision(precision: str) -> str:
    if precision not in GRAPHS:
        raise DeployError(f"unknown engine precision {precision!r}; choose from {', '.join(GRAPHS)}")
    return precision


def bf16_refusal(compute_capability: tuple[int, int], gpu: str) -> str | None:
    """Why this GPU cannot run BF16 engines (None when it can)."""
    if tuple(compute_capability) >= BF16_OLDEST_GPU:
        return None
    major, minor = compute_capability
    return f"BF16 TensorRT engines need a GPU of compute capability 8.0 (Ampere) or newer; {gpu} is sm{major}{minor}"


def plan_build(trt_version: str, strongly_typed: bool, precision: str = "fp16") -> BuildPlan:
    """The graph and flags for TensorRT `trt_version`, which has strongly typed networks or not."""
    graph = GRAPHS[check_precision(precision)]
    version = parse_version(trt_version)[:2]
    if version < OLDEST_SUPPORTED:
        raise DeployError(f"TensorRT {trt_version} is too old: deploytool builds with TensorRT 10 or 11")
    if not strongly_typed:
        raise DeployError(
            f"TensorRT {trt_version} has no NetworkDefinitionCreationFlag.STRONGLY_TYPED, which deploytool needs to build "
            f"{graph} with its FP32 islands; install an official TensorRT 10 or 11 release"
        )
    return BuildPlan(graph=graph, strongly_typed=True)


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
    precision: str = "fp16"  # which deploy graph: fp16 (model_fp16.onnx) or bf16 (model_bf16.onnx)


def engine_path(export_dir: Path, capability: tuple[int, int], trt_version: str, precision: str = "fp16") -> Path:
    """Where the engine for this GPU, TensorRT and precision goes: a file of the export folder,
    whatever the version string holds."""
    return inside(export_dir, engine_filename(capability, trt_version, precision), "engine name")


def _parse_network(trt: Any, logger: Any, graph_path: Path) -> tuple[Any, Any, Any]:
    """(builder, network, parser) holding the strongly typed network of `graph_path` (the parser
    owns what the network's weights point to, so it lives as long as the network)."""
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeployError(f"TensorRT could not parse {graph_path.name}: {errors}")
    return builder, network, parser


def _target(trt: Any, precision: str) -> tuple[tuple[int, int], str, str]:
    """(compute capability, TensorRT version, GPU name) of this machine, refused in one line where
    it has no CUDA GPU or one too old for `precision`."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("building a TensorRT engine needs a CUDA GPU, and torch sees none on this machine")
    capability, gpu = tuple(torch.cuda.get_device_capability()), torch.cuda.get_device_name()
    refusal = bf16_refusal(capability, gpu) if precision == "bf16" else None
    if refusal:
        raise BackendUnavailable(refusal)
    return capability, trt.__version__, gpu


def build_engine(export_dir: str | Path, options: BuildOptions = BuildOptions(), progress: Callable[[str], None] = lambda m: None) -> tuple[str, EngineRecord]:
    """Build the engine of an export for this GPU, TensorRT and `options.precision`; returns its file name and record."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    precision = check_precision(options.precision)
    trt = require_tensorrt()
    capability, version, gpu = _target(trt, precision)
    engine_file = engine_path(export_dir, capability, version, precision)
    plan = plan_build(version, has_strongly_typed(trt), precision)
    graph_path = manifest.check_file(export_dir, plan.graph)
    progress(f"TensorRT {version} on {gpu} (sm{capability[0]}{capability[1]}): {plan.describe()}")

    logger = trt.Logger(trt.Logger.WARNING)
    builder, network, _parser = _parse_network(trt, logger, graph_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.opt_level
    # no precision flags: a strongly typed network takes its types from the ONNX, and TensorRT refuses FP16/BF16/INT8 flags on it
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
        gpu=gpu,
        compute_capability=capability,
        tensorrt=version,
        plan=asdict(plan),
        workspace_bytes=options.workspace_bytes,
        opt_level=options.opt_level,
        timing_cache=str(cache_path),
        build_seconds=round(seconds, 1),
    )
    manifest.with_engine(name, entry).write(export_dir)
    progress(f"engine {name} built in {seconds:.0f} s")
    return name, entry
