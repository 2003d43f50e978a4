"""ONNX Runtime backend: the exported FP32 or FP16 graph, on CUDA when present, else CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploytool.errors import BackendUnavailable, DeployError


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def default_providers() -> list[str]:
    """CUDA when a GPU is usable, else CPU.

    TensorRT's provider is left out on purpose (engines are built by `deploytool build`); CUDA is
    only asked for where torch sees a GPU, since a CUDA build of ONNX Runtime on a machine without
    one logs errors for every session before falling back.
    """
    import torch

    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if torch.cuda.is_available() else ["CPUExecutionProvider"]
    return [p for p in wanted if p in available_providers()]


class OrtRunner:
    """Runs one exported graph; inputs must have the graph's static shape."""

    def __init__(self, path: str | Path, *, name: str = "ort", providers: list[str] | None = None, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"ONNX Runtime is not installed ({exc}): pip install onnxruntime-gpu") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.name = name
        self.session = ort.InferenceSession(str(path), options, providers=providers or default_providers())
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.input_shape = tuple(graph_input.shape)
        self.providers = self.session.get_providers()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if tuple(batch.shape) != self.input_shape:
            raise DeployError(f"{self.name}: input shape {tuple(batch.shape)} does not match the graph's static {self.input_shape}")
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
