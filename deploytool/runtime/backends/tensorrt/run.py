"""TensorRT backend (runtime side), against the documented TensorRT 10.x/11.x Python API.

Imported lazily: TensorRT and CUDA are only needed when an engine is run. Engines are tied to
one GPU architecture and one TensorRT version; their file names say which, and an engine made
for anything else is refused with one line instead of failing deep inside TensorRT.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends.base import ClosingRunner
from deploytool.runtime.backends.tensorrt import INSTALL, TRT
from deploytool.runtime.manifest import Manifest

NOT_INSTALLED = f"TensorRT is not installed: {INSTALL}"


def require_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(NOT_INSTALLED) from None
    return tensorrt


# an engine's name starts with the stem of the graph it was built from: the FP16 graph (`model`) or the BF16 one
ENGINE_STEMS = {"fp16": "model", "bf16": "model_bf16"}


def engine_filename(compute_capability: tuple[int, int], trt_version: str, precision: str = "fp16") -> str:
    """`model.sm90-trt10.13.0.engine` (from the FP16 graph; `model_bf16.sm90-...` from the BF16
    one): the GPU architecture and TensorRT version it was built for."""
    major, minor = compute_capability
    return f"{ENGINE_STEMS[precision]}.sm{major}{minor}-trt{trt_version}.engine"


def current_target() -> tuple[tuple[int, int], str]:
    """(compute capability, TensorRT version) of this machine."""
    trt = require_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT engines need a CUDA GPU, and torch sees none on this machine")
    return torch.cuda.get_device_capability(), trt.__version__


def matching_engine(engines: Iterable[str], compute_capability: tuple[int, int], trt_version: str) -> str:
    """The engine file (of an export's `engines`) that fits the given GPU and TensorRT, or a one-line refusal."""
    wanted = engine_filename(compute_capability, trt_version)
    engines = set(engines)
    if wanted in engines:
        return wanted
    built = ", ".join(sorted(engines)) or "none"
    raise DeployError(
        f"no engine for this GPU (sm{compute_capability[0]}{compute_capability[1]}) and TensorRT {trt_version} "
        f"in this export (engines: {built}); run `deploytool build` here"
    )


class TrtRunner(ClosingRunner):
    """Runs a deserialized engine with `execute_async_v3` on its own CUDA stream.

    Input and output live in PyTorch CUDA tensors (no other CUDA binding is needed). With
    `cuda_graph=True` the engine's launch is captured once into a CUDA graph and replayed for
    every batch of tiles: the input is copied into the captured buffer, which removes the
    per-launch CPU overhead that dominates small tiles.
    """

    def __init__(self, path: str | Path, *, name: str = TRT, cuda_graph: bool = False):
        trt = require_tensorrt()
        import torch

        self.name = name
        self.device = f"cuda ({torch.cuda.get_device_name()})"
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
        self.input = torch.empty(self.input_shape, dtype=torch.float32, device="cuda")
        self.output = torch.empty(tuple(self.engine.get_tensor_shape(self.output_name)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, self.input.data_ptr())
        self.context.set_tensor_address(self.output_name, self.output.data_ptr())
        self.graph = self._capture() if cuda_graph else None

    def _capture(self):
        torch = self._torch
        self._launch()  # the first launch allocates; capture only a steady-state one
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._launch()
        return graph

    def _launch(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise DeployError("TensorRT failed to run the engine")

    @classmethod
    def for_export(cls, export_dir: str | Path, manifest: Manifest, *, cuda_graph: bool = False) -> TrtRunner:
        capability, version = current_target()
        return cls(manifest.check_file(export_dir, matching_engine(manifest.engines, capability, version)), cuda_graph=cuda_graph)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        if self.context is None:
            raise DeployError(f"{self.name}: the runner was closed")
        if tuple(batch.shape) != self.input_shape:
            raise DeployError(f"trt: input shape {tuple(batch.shape)} does not match the engine's {self.input_shape}")
        with torch.cuda.stream(self.stream):
            self.input.copy_(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)), non_blocking=False)
            if self.graph is not None:
                self.graph.replay()
            else:
                self._launch()
            result = self.output.cpu()
        self.stream.synchronize()
        return result.numpy()

    def close(self) -> None:
        """Release the CUDA graph, buffers, context and engine (in that order: each uses the next)."""
        if self.context is None:
            return
        self.stream.synchronize()
        self.graph = None
        self.input = self.output = None
        self.context = None
        self.engine = None
        self._torch.cuda.empty_cache()
