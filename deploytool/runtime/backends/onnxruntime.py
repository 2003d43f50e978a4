"""ONNX Runtime backends: the exported FP32 graph (`ort`) or FP16 graph (`ort-fp16`), on CUDA
when present, else CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends.base import FP16, FP32, Backend, ClosingRunner, OpenRequest, TritonRuntime, register
from deploytool.runtime.manifest import FP16_FILE, FP32_FILE, Manifest

ORT, ORT_FP16 = "ort", "ort-fp16"
INSTALL = "pip install onnxruntime-gpu"
# The intra-op threads of a session whose caller names none (`default_threads`). Processes that
# share the cores (test workers, exports side by side) each take their share: at ONNX Runtime's
# default, one thread per core in every process, the threads that spin between ops take the
# cores the other processes compute on.
THREADS_VARIABLE = "DEPLOYTOOL_ORT_THREADS"

# A session on CPU alone has no memory pattern. ONNX Runtime's memory pattern allocates a run's
# planned peak as one block from the second run on, out of the arena that still caches the first
# run's blocks: a session then holds about twice what a run needs, for no speed (`python
# scripts/ort_memory.py`, the default tiles: 0.53-0.63 of the memory without it, hat-x4 at 256 px
# 11.81 -> 6.28 GB, IPT the same, its weights most of it; not slower). Without the arena instead, small graphs ran slower (ESRT at
# 64 px 1.42x, SwinIR-M 1.07x). With a GPU provider the defaults stay: not measured there.
CPU_ONLY = ["CPUExecutionProvider"]


def default_threads() -> int:
    """$DEPLOYTOOL_ORT_THREADS, else 0 (ONNX Runtime's default: one thread per core)."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise DeployError(f"${THREADS_VARIABLE} must be a whole number of threads (0: one per core), not {value!r}")
    return int(value)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def default_providers() -> list[str]:
    """CUDA when a GPU is usable, else CPU.

    TensorRT's provider is left out on purpose (engines are built by `deploytool build`); CUDA is
    only asked for where torch sees a GPU, since a CUDA build of ONNX Runtime on a machine without
    one logs errors for every session before falling back.
    """
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu_usable() else ["CPUExecutionProvider"]
    return [p for p in wanted if p in available_providers()]


def gpu_usable() -> bool:
    """Whether a CUDA GPU is usable: torch's answer where torch is installed (the export extra),
    else the CUDA driver's (a runtime-only install has no torch)."""
    try:
        import torch
    except ModuleNotFoundError:
        return cuda_driver_sees_a_gpu()
    return torch.cuda.is_available()


def cuda_driver_sees_a_gpu() -> bool:
    """cuInit and cuDeviceGetCount of the CUDA driver (libcuda), as torch.cuda.is_available asks."""
    import ctypes

    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def open_session(
    model: str | Path | bytes,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    low_memory: bool = False,
    priority_order: bool = False,
    external: dict | None = None,
):
    """An ONNX Runtime session on a graph file or serialized graph; errors only in its log.
    `threads`: intra-op threads (0: one per core; None: `default_threads()`).

    `external`: {initializer name: numpy array} for the graph's initializers marked external,
    read in place, not copied (the session holds the arrays).

    On CPU alone a session keeps ONNX Runtime's memory arena but not its memory pattern (see
    CPU_ONLY), so a `run` holds about half what it would at ONNX Runtime's defaults.

    `low_memory=True` for the export's own runs: neither ONNX Runtime's memory arena, whose
    cached blocks add up across the several sessions an export opens, nor its memory pattern,
    which allocates each run's planned peak at once (DAT-x4's calibration at 96 px: 3.22 GB peak
    with it, 2.75 GB without, in the same time), nor its constant folding, which stores what the
    export keeps computed (`fold_limit_mb`: position biases gathered per block, the window mask)
    as constants of the session (DAT-x4 at 96 px, when each shifted block's bias was spread over
    the window grid: 1.6 GB held from the session's opening; without it the same outputs bit for
    bit, opened in 0.5 s instead of 1.6 s, a run 3.2 -> 3.4 s). The README's "Design choices,
    measured".
    `priority_order` runs each node as soon as its inputs exist (see precision.measure_ranges).
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(f"ONNX Runtime is not installed ({exc}): pip install onnxruntime-gpu") from None
    providers = providers or default_providers()
    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads() if threads is None else threads
    options.enable_cpu_mem_arena = not low_memory
    options.enable_mem_pattern = not low_memory and providers != CPU_ONLY
    # errors only: ORT warns for every FP16 node it cannot pre-compute on CPU, which is expected
    options.log_severity_level = 3
    if priority_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in (external or {}).values()]
    if values:
        options.add_external_initializers(list(external), values)
    source = model if isinstance(model, bytes) else str(model)
    disabled = ["ConstantFolding"] if low_memory else None
    try:
        session = ort.InferenceSession(source, options, providers=providers, disabled_optimizers=disabled)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's Fail, InvalidProtobuf, ... (no common base but Exception)
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        where = "the graph" if isinstance(model, bytes) else str(model)
        raise DeployError(f"ONNX Runtime could not load {where}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    session.external_values = values  # ONNX Runtime reads them in place for the session's life
    return session


class OrtRunner(ClosingRunner):
    """Runs one exported graph; inputs must have the graph's static shape."""

    def __init__(self, path: str | Path, *, name: str = ORT, providers: list[str] | None = None, threads: int | None = None):
        self.name = name
        self.session = open_session(path, providers=providers, threads=threads)
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.input_shape = tuple(graph_input.shape)
        self.providers = self.session.get_providers()
        self.device = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise DeployError(f"{self.name}: the runner was closed")
        if tuple(batch.shape) != self.input_shape:
            raise DeployError(f"{self.name}: input shape {tuple(batch.shape)} does not match the graph's static {self.input_shape}")
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def close(self) -> None:
        self.session = None


def _opener(name: str, file: str):
    def open_graph(request: OpenRequest) -> OrtRunner:
        return OrtRunner(request.manifest.check_file(request.export_dir, file), name=name)

    return open_graph


def _probe(facts: dict) -> dict:
    return {"ort_providers": available_providers() if facts.get("onnxruntime") else []}


def _report(facts: dict) -> list[str]:
    return [f"{'ORT':<12} providers {', '.join(facts['ort_providers']) or 'none'}"]


def _doctor_note(facts: dict) -> str:
    on_cuda = facts.get("gpus") and "CUDAExecutionProvider" in facts.get("ort_providers", [])
    return f"ONNX Runtime on {'CUDA' if on_cuda else 'CPU'}"


def _graph_for_gpus(export_dir: Path, manifest: Manifest, fp32: bool) -> Path:
    if fp32:
        return manifest.check_file(export_dir, FP32_FILE)
    if not manifest.has_fp16:
        raise DeployError(f"{export_dir} has no {FP16_FILE} (exported with --no-fp16): add --fp32 to serve {FP32_FILE}")
    return manifest.check_file(export_dir, FP16_FILE)


def _fp32_graph(export_dir: Path, manifest: Manifest, fp32: bool) -> Path:
    # on CPUs an FP16 graph brings no speed, and ONNX Runtime's CPU provider lacks FP16 kernels
    # for many ops (it would insert casts around them)
    return manifest.check_file(export_dir, FP32_FILE)


# Triton's ONNX Runtime backend on GPUs (the FP16 graph unless --fp32), and ONNX Runtime inside a
# Python-backend model on CPU servers (deploytool.serving.triton_models.OrtTileModel)
TRITON_ONNX = TritonRuntime(
    "onnx", "Triton's ONNX Runtime backend (GPU)", {"backend": "onnxruntime", "default_model_filename": "model.onnx"}, "model.onnx", _graph_for_gpus
)
TRITON_PYTHON_ORT = TritonRuntime(
    "python-ort", "ONNX Runtime in a Python model (CPU)", {"backend": "python"}, "model.onnx", _fp32_graph, on_cpu=True, python_model="OrtTileModel"
)

register(
    Backend(
        ORT,
        FP32,
        "ONNX Runtime on the exported FP32 graph",
        _opener(ORT, FP32_FILE),
        file=FP32_FILE,
        requires=("onnxruntime",),
        install=INSTALL,
        fp32_graph_reference=True,
        doctor_note=_doctor_note,
        triton=(TRITON_ONNX, TRITON_PYTHON_ORT),
        probe=_probe,
        report=_report,
    )
)
register(
    Backend(
        ORT_FP16,
        FP16,
        "ONNX Runtime on the exported FP16 graph",
        _opener(ORT_FP16, FP16_FILE),
        file=FP16_FILE,
        requires=("onnxruntime",),
        install=INSTALL,
    )
)
