"""Runtimes that execute an export, as objects in one registry (ggml's backend registry,
Polygraphy's `backend/<runtime>/`): the original implementation (parity only), our PyTorch
definition, ONNX Runtime, OpenVINO, TensorRT.

Each backend module declares a `Backend` descriptor (name, precision class, the export file it
runs, whether it needs the checkpoint, an availability check naming the pip extra, how to open a
runner) and registers it; callers ask the registry (`get`, `names`, `available`) and the
descriptor. Adding a backend is one module here, imported below, plus its tests.

Every runner is a callable taking and returning NCHW float32 numpy batches (also `run(batch)`),
with `name`, `input_shape` (None where any shape is accepted) and `device`; `close()` releases
what it holds (sessions, CUDA buffers), and a runner is a context manager that closes itself.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from deploytool.errors import DeployError
from deploytool.runtime.backends.base import (
    BF16,
    DEFAULT_TRITON_RUNTIME,
    FP16,
    FP32,
    Backend,
    ClosingRunner,
    OpenRequest,
    Runner,
    TritonRuntime,
    available,
    check_options_apply,
    cuda_graph_backends,
    device_backends,
    get,
    names,
    original,
    register,
    runtime_names,
    triton_runtime,
    triton_runtimes,
    verify_default_names,
)
from deploytool.runtime.manifest import Manifest

# The backend modules, each registering its backends when imported; this order is the order
# every list of backends shows.
BACKEND_MODULES = ("torch", "onnxruntime", "openvino", "tensorrt")
for _module in BACKEND_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

from deploytool.runtime.backends import onnxruntime, openvino, tensorrt  # noqa: E402
from deploytool.runtime.backends.onnxruntime import ORT, ORT_FP16  # noqa: E402
from deploytool.runtime.backends.openvino import OPENVINO  # noqa: E402
from deploytool.runtime.backends.tensorrt import TRT  # noqa: E402
from deploytool.runtime.backends.torch import ORIGINAL, TORCH  # noqa: E402

DEFAULT_RUNTIME = ORT_FP16  # what `deploytool run` uses unless --backend says otherwise

# The Triton runtimes' names, for code that picks one (`deploytool triton --runtime`)
TRITON_TRT, TRITON_ONNX, TRITON_PYTHON_ORT, TRITON_OPENVINO = (
    tensorrt.TRITON_PLAN.name,
    onnxruntime.TRITON_ONNX.name,
    onnxruntime.TRITON_PYTHON_ORT.name,
    openvino.TRITON_OPENVINO.name,
)

__all__ = [
    "BF16",
    "DEFAULT_RUNTIME",
    "DEFAULT_TRITON_RUNTIME",
    "FP16",
    "FP32",
    "OPENVINO",
    "ORIGINAL",
    "ORT",
    "ORT_FP16",
    "TORCH",
    "TRITON_ONNX",
    "TRITON_OPENVINO",
    "TRITON_PYTHON_ORT",
    "TRITON_TRT",
    "TRT",
    "Backend",
    "ClosingRunner",
    "OpenRequest",
    "Runner",
    "TritonRuntime",
    "available",
    "check_options_apply",
    "cuda_graph_backends",
    "device_backends",
    "get",
    "names",
    "open_runner",
    "original",
    "parse_backends",
    "register",
    "runtime_names",
    "triton_runtime",
    "triton_runtimes",
    "verify_default_names",
]


def parse_backends(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """'torch, ort' -> ['torch', 'ort'], refusing unknown names in one line (default: any registered name)."""
    allowed = names() if allowed is None else allowed
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in allowed]
    if unknown or not chosen:
        raise DeployError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(chosen))


def open_runner(export_dir: str | Path, manifest: Manifest, backend: str, *, cuda_graph: bool = False, device: str | None = None, model=None) -> Runner:
    """A runner for `backend` on the export's files in `export_dir` (checked against the manifest).

    `cuda_graph` applies to TensorRT: replay one captured launch per batch of tiles. `device`
    applies to backends that take one (OpenVINO: `CPU`, `GPU`, `NPU`; default CPU). Backends
    that need the checkpoint run a PyTorch `model` built from it: deploytool.build.runners.open_runner
    builds it (and opens every backend).
    """
    request = OpenRequest(Path(export_dir), manifest, device=device, cuda_graph=cuda_graph, model=model)
    return get(backend).open(request)
