"""OpenVINO BF16 backend (`openvino-bf16`): the export's BF16 plan (`model_bf16.onnx`) on an
OpenVINO device with BF16 arithmetic (CPUs with AVX-512 BF16 or AMX), CPU by default.

The plan is honoured by compiling `model_bf16.onnx` with f32 inference precision: OpenVINO's CPU
plugin then runs every node in the type the graph gives it, the bfloat16 nodes on its BF16
kernels and the float32 nodes (the plan's FP32 islands) in FP32. With bf16 inference precision
it would lower the islands to BF16 as well, and OpenVINO's per-node "keep in FP32" marking
(`DisablePrecisionConversion`) is neither in its Python API nor in the wheel's C++ headers.

Devices are asked, not guessed: a device runs the plan when OpenVINO lists `BF16` in its
`OPTIMIZATION_CAPABILITIES`; elsewhere the backend is refused in one line with the reason
(OpenVINO would otherwise emulate BF16 slowly). Compiled models are cached like the FP32
backend's, keyed by the BF16 graph's sha256, so a second `run` imports the blob.
"""

from __future__ import annotations

from pathlib import Path

from deploytool.errors import BackendUnavailable
from deploytool.runtime.backends.openvino import DEFAULT_DEVICE, OpenVinoRunner, cache_dir, check_device, require_openvino
from deploytool.runtime.manifest import BF16_FILE, Manifest

OPENVINO_BF16 = "openvino-bf16"
BF16_CAPABILITY = "BF16"


def bf16_refusal(device: str, capabilities: list[str]) -> str | None:
    """Why `device`, whose OPTIMIZATION_CAPABILITIES are `capabilities`, cannot run the BF16 plan (None: it can)."""
    if BF16_CAPABILITY in capabilities:
        return None
    return (
        f"{OPENVINO_BF16} needs BF16 arithmetic (on a CPU: AVX-512 BF16 or AMX); OpenVINO's {device} offers "
        f"{', '.join(capabilities) or 'no optimization capabilities'}, without BF16"
    )


def device_capabilities(core, device: str) -> list[str]:
    return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]


def bf16_devices() -> list[str]:
    """The devices OpenVINO sees here that can run the BF16 plan."""
    core = require_openvino().Core()
    return [device for device in core.available_devices if bf16_refusal(device, device_capabilities(core, device)) is None]


def check_bf16_device(device: str) -> None:
    """Refuse, in one line, a device OpenVINO does not see or one without BF16 arithmetic."""
    core = require_openvino().Core()
    check_device(device, list(core.available_devices))
    refusal = bf16_refusal(device, device_capabilities(core, device))
    if refusal:
        raise BackendUnavailable(refusal)


def open_bf16_runner(export_dir: str | Path, manifest: Manifest, *, device: str = DEFAULT_DEVICE) -> OpenVinoRunner:
    """A runner of the export's BF16 plan on `device` (refused where it has no BF16)."""
    graph = manifest.check_file(export_dir, BF16_FILE)
    check_bf16_device(device)
    return OpenVinoRunner(graph, name=OPENVINO_BF16, device=device, cache=cache_dir(export_dir, manifest, device, graph=BF16_FILE))
