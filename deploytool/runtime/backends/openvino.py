"""OpenVINO backend: the exported FP32 graph (`model.onnx`) on an OpenVINO device, CPU by default.

Imported lazily: OpenVINO is an optional extra (`pip install deploytool[openvino]`). Inference
precision is pinned to f32: on CPUs with AVX-512 BF16 or AMX, OpenVINO otherwise runs the graph
in bf16, which is not the FP32 backend's contract (its outputs are judged with FP32 tolerances).

Compiled models are cached in the export folder, under `openvino-cache/<key>/`, where the key
hashes the graph's sha256 (from the manifest), OpenVINO's build, the device and the precision:
a changed graph or another OpenVINO never meets a blob compiled for something else, and the
second `run` on the same export imports the blob instead of compiling again. The C++ runtime
(`deploytool-infer --backend openvino`) computes the same key, so both share the blobs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends.base import FP32, Backend, ClosingRunner, OpenRequest, TritonRuntime, register
from deploytool.runtime.manifest import FP32_FILE, Manifest

OPENVINO = "openvino"
INSTALL = "pip install deploytool[openvino]"
NOT_INSTALLED = f"OpenVINO is not installed: {INSTALL}"
DEFAULT_DEVICE = "CPU"
PRECISION = "f32"
CACHE_FOLDER = "openvino-cache"


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
    """The cache folder's name for one graph, OpenVINO build, device and inference precision."""
    return hashlib.sha256(f"{graph_sha256}\n{build}\n{device}\n{precision}".encode()).hexdigest()[:16]


def cache_dir(export_dir: str | Path, manifest: Manifest, device: str, precision: str = PRECISION, graph: str = FP32_FILE) -> Path:
    """The cache folder for the export's `graph` (a file of its manifest) compiled for `device`."""
    return Path(export_dir) / CACHE_FOLDER / cache_key(manifest.files[graph].sha256, openvino_build(), device, precision)


def available_devices() -> list[str]:
    return list(require_openvino().Core().available_devices)


def check_device(device: str, available: list[str]) -> None:
    """Refuse, in one line listing what OpenVINO sees, a device it does not see.

    A device with an index (`GPU.1`) must be listed as such; a bare family name (`GPU`) is
    accepted when any device of that family is listed (OpenVINO then picks its first).
    """
    if device in available or any(seen.split(".")[0] == device for seen in available):
        return
    raise BackendUnavailable(f"OpenVINO sees no {device} device on this machine; it sees: {', '.join(available) or 'none'}")


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
            # compiled from the path (not a read model), so a cached blob is imported without reading the graph
            self.compiled = core.compile_model(str(graph), device, config)
        except RuntimeError as exc:
            raise DeployError(f"OpenVINO could not compile {graph} for {device}: {str(exc).strip().splitlines()[0]}") from None
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
