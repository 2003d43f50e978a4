"""Runtimes that execute an export: PyTorch (our definition), ONNX Runtime, OpenVINO, TensorRT.

Every runner is a callable taking and returning NCHW float32 numpy batches, with `name`,
`input_shape` (None where any shape is accepted) and `device`; `close()` releases what it holds
(sessions, CUDA buffers), and a runner is a context manager that closes itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from deploytool.errors import DeployError
from deploytool.runtime.manifest import FP16_FILE, FP32_FILE, Manifest

# The backend names, in one place: the original implementation (parity only), our PyTorch
# definition, ONNX Runtime on the FP32 and FP16 graphs, OpenVINO on the FP32 graph, and a
# TensorRT engine.
ORIGINAL, TORCH, ORT, ORT_FP16, OPENVINO, TRT = "original", "torch", "ort", "ort-fp16", "openvino", "trt"
RUNTIMES = (TORCH, ORT, ORT_FP16, OPENVINO, TRT)  # what `run`, `bench` and `eval` can tile with
PARITY_BACKENDS = (ORIGINAL, *RUNTIMES)  # what `verify` can run
# What `verify` runs unless told: OpenVINO is an optional extra, so it is asked for by name.
DEFAULT_PARITY_BACKENDS = (ORIGINAL, TORCH, ORT, ORT_FP16, TRT)
ONNX_FILES = {ORT: FP32_FILE, ORT_FP16: FP16_FILE}
# What a Triton tile model runs (`deploytool triton --runtime`): a TensorRT engine, Triton's ONNX
# Runtime backend on GPUs, ONNX Runtime inside a Python-backend model (CPU servers), or Triton's
# OpenVINO backend (CPU).
TRITON_TRT, TRITON_ONNX, TRITON_PYTHON_ORT, TRITON_OPENVINO = TRT, "onnx", "python-ort", OPENVINO
TRITON_RUNTIMES = (TRITON_TRT, TRITON_ONNX, TRITON_PYTHON_ORT, TRITON_OPENVINO)


class Runner(Protocol):
    name: str
    input_shape: tuple[int, ...] | None
    device: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc_info) -> None: ...


class ClosingRunner:
    """Context-manager behaviour for runners: `with open_runner(...) as runner:` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def parse_backends(text: str, allowed: tuple[str, ...] = PARITY_BACKENDS) -> list[str]:
    """'torch, ort' -> ['torch', 'ort'], refusing unknown names in one line."""
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in allowed]
    if unknown or not names:
        raise DeployError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def open_runner(export_dir: str | Path, manifest: Manifest, backend: str, *, cuda_graph: bool = False, device: str | None = None) -> Runner:
    """A runner for `backend` on the export's files in `export_dir` (checked against the manifest).

    `cuda_graph` applies to TensorRT: replay one captured launch per batch of tiles. `device`
    applies to OpenVINO (`CPU`, `GPU`, `NPU`, as OpenVINO names them; default CPU). The torch
    backend is not a file of the export but our definition built from the checkpoint:
    deploytool.build.runners.open_runner opens it (and every backend here).
    """
    if device is not None and backend != OPENVINO:
        raise DeployError(f"--device applies to the {OPENVINO} backend, not {backend}")
    if backend in ONNX_FILES:
        from deploytool.runtime.backends.onnxruntime import OrtRunner

        return OrtRunner(manifest.check_file(export_dir, ONNX_FILES[backend]), name=backend)
    if backend == OPENVINO:
        from deploytool.runtime.backends.openvino import DEFAULT_DEVICE, OpenVinoRunner

        return OpenVinoRunner.for_export(export_dir, manifest, device=device or DEFAULT_DEVICE)
    if backend == TRT:
        from deploytool.runtime.backends.tensorrt.run import TrtRunner

        return TrtRunner.for_export(export_dir, manifest, cuda_graph=cuda_graph)
    if backend == TORCH:
        raise DeployError(
            f"the {TORCH} backend runs our PyTorch definition built from the checkpoint, not a file of the export: open it with deploytool.build.runners"
        )
    raise DeployError(f"unknown backend {backend!r}; choose from {', '.join(RUNTIMES)}")
