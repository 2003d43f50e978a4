"""Runtimes that execute an export: PyTorch (our definition), ONNX Runtime, TensorRT.

Every runner is a callable taking and returning NCHW float32 numpy batches, with `name` and
`input_shape` (None where any shape is accepted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deploytool.errors import DeployError

BACKENDS = ("torch", "ort", "ort-fp16", "trt")


class Runner(Protocol):
    name: str
    input_shape: tuple[int, ...] | None

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def open_runner(export_dir: str | Path, manifest: dict[str, Any], backend: str, *, weights: str | Path | None = None, cuda_graph: bool = False) -> Runner:
    """A runner for `backend` on the export in `export_dir` (files checked against the manifest).

    `cuda_graph` applies to TensorRT: replay one captured launch per batch of tiles.
    """
    from deploytool import export

    if backend == "torch":
        from deploytool.backends.torch import TorchRunner
        from deploytool.models import build_def, export_weights

        entry, source, state_dict = export_weights(manifest, weights)
        return TorchRunner(build_def(entry, state_dict, source=source.path or "random init"), name="torch")
    if backend in ("ort", "ort-fp16"):
        from deploytool.backends.onnxruntime import OrtRunner

        name = export.FP32_FILE if backend == "ort" else export.FP16_FILE
        return OrtRunner(export.check_file(export_dir, manifest, name), name=backend)
    if backend == "trt":
        from deploytool.backends.tensorrt import TrtRunner

        return TrtRunner.for_export(export_dir, manifest, cuda_graph=cuda_graph)
    raise DeployError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
