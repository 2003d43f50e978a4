"""TensorRT backend (runtime side), against the documented TensorRT 10.x/11.x Python API.

Imported lazily: TensorRT and CUDA are only needed when an engine is run. Engines are tied to
one GPU architecture and one TensorRT version; their file names say which, and an engine made
for anything else is refused with one line instead of failing deep inside TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploytool.errors import BackendUnavailable, DeployError

NOT_INSTALLED = "TensorRT is not installed: pip install deploytool[trt] on a machine with an NVIDIA GPU"


def require_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(NOT_INSTALLED) from None
    return tensorrt


def engine_filename(compute_capability: tuple[int, int], trt_version: str) -> str:
    """`model.sm90-trt10.13.0.engine`: the GPU architecture and TensorRT version it was built for."""
    major, minor = compute_capability
    return f"model.sm{major}{minor}-trt{trt_version}.engine"


def current_target() -> tuple[tuple[int, int], str]:
    """(compute capability, TensorRT version) of this machine."""
    trt = require_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT engines need a CUDA GPU, and torch sees none on this machine")
    return torch.cuda.get_device_capability(), trt.__version__


def matching_engine(manifest: dict[str, Any], compute_capability: tuple[int, int], trt_version: str) -> str:
    """The engine file of this export that fits the given GPU and TensorRT, or a one-line refusal."""
    wanted = engine_filename(compute_capability, trt_version)
    engines = manifest.get("engines", {})
    if wanted in engines:
        return wanted
    built = ", ".join(sorted(engines)) or "none"
    raise DeployError(
        f"no engine for this GPU (sm{compute_capability[0]}{compute_capability[1]}) and TensorRT {trt_version} "
        f"in this export (engines: {built}); run `deploytool build` here"
    )


class TrtRunner:
    """Runs a deserialized engine with `execute_async_v3`, tensors held as PyTorch CUDA tensors."""

    def __init__(self, path: str | Path, *, name: str = "trt"):
        trt = require_tensorrt()
        import torch

        self.name = name
        self._torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise DeployError(f"TensorRT could not load {path}: built for another GPU or TensorRT version?")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.output = torch.empty(tuple(self.engine.get_tensor_shape(self.output_name)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.output_name, self.output.data_ptr())

    @classmethod
    def for_export(cls, export_dir: str | Path, manifest: dict[str, Any]) -> "TrtRunner":
        from deploytool.export import check_file

        capability, version = current_target()
        return cls(check_file(export_dir, manifest, matching_engine(manifest, capability, version)))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        if tuple(batch.shape) != self.input_shape:
            raise DeployError(f"trt: input shape {tuple(batch.shape)} does not match the engine's {self.input_shape}")
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to("cuda", non_blocking=True)
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise DeployError("TensorRT failed to run the engine")
            result = self.output.cpu()
        self.stream.synchronize()
        return result.numpy()
