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
from typing import Any

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends.base import BF16, Backend, OpenRequest, TritonRuntime, register
from deploytool.runtime.backends.openvino import DEFAULT_DEVICE, INSTALL, NOT_INSTALLED, OpenVinoRunner, cache_dir, check_device, require_openvino
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


def _probe(facts: dict[str, Any]) -> dict[str, Any]:
    """doctor's fact: {device: its OPTIMIZATION_CAPABILITIES} for every device OpenVINO sees."""
    if not facts.get("openvino"):
        return {"openvino_capabilities": {}}
    core = require_openvino().Core()
    return {"openvino_capabilities": {device: device_capabilities(core, device) for device in core.available_devices}}


def capable(capabilities: dict[str, list[str]]) -> list[str]:
    """The devices of {device: OPTIMIZATION_CAPABILITIES} that can run the BF16 plan."""
    return [device for device, offered in capabilities.items() if bf16_refusal(device, offered) is None]


def _report(facts: dict[str, Any]) -> list[str]:
    if not facts.get("openvino"):
        return []
    return [f"{'OpenVINO BF16':<12} {', '.join(capable(facts.get('openvino_capabilities') or {})) or 'no device'}"]


def bf16_devices() -> list[str]:
    """The devices OpenVINO sees here that can run the BF16 plan."""
    return capable(_probe({"openvino": True})["openvino_capabilities"])


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


def _check(facts: dict[str, Any]) -> str | None:
    capabilities = facts.get("openvino_capabilities") or {}
    return None if capable(capabilities) else bf16_refusal(DEFAULT_DEVICE, capabilities.get(DEFAULT_DEVICE, []))


def _doctor_note(facts: dict[str, Any]) -> str:
    if not facts.get("openvino"):
        return f"no {OPENVINO_BF16} backend ({NOT_INSTALLED})"
    refusal = _check(facts)
    if refusal:
        return f"no {OPENVINO_BF16} backend: {refusal}"
    return f"{OPENVINO_BF16}: the BF16 plan on {', '.join(capable(facts.get('openvino_capabilities') or {}))}"


def _open(request: OpenRequest) -> OpenVinoRunner:
    return open_bf16_runner(request.export_dir, request.manifest, device=request.device or DEFAULT_DEVICE)


def _bf16_plan(export_dir: Path, manifest: Manifest, fp32: bool) -> Path:
    if BF16_FILE not in manifest.files:
        raise DeployError(f"{export_dir} has no {BF16_FILE}: export it with --precision fp16,bf16 to serve the BF16 plan")
    return manifest.check_file(export_dir, BF16_FILE)


# Triton's OpenVINO backend cannot serve the plan: of the CPU properties it sets only
# INFERENCE_NUM_THREADS, COMPILATION_NUM_THREADS, HINT_BF16 (YES: bf16 inference precision),
# NUM_STREAMS and PERFORMANCE_HINT, so on a BF16 CPU OpenVINO's default, bf16 inference precision,
# would lower the plan's FP32 islands to BF16. A Python-backend model runs this backend instead.
TRITON_OPENVINO_BF16 = TritonRuntime(
    OPENVINO_BF16,
    "OpenVINO on the BF16 plan in a Python model (CPU with BF16)",
    {"backend": "python"},
    BF16_FILE,
    _bf16_plan,
    on_cpu=True,
    python_model="BackendTileModel",
    fp32_refusal=f"--fp32 chooses model.onnx for --runtime onnx; the {OPENVINO_BF16} runtime serves the BF16 plan ({BF16_FILE})",
    note="the server's CPU needs BF16 arithmetic (AVX-512 BF16 or AMX), as this one has, and the environment of its Python models deploytool[serve,openvino]",
    opens=OPENVINO_BF16,
    check=lambda: check_bf16_device(DEFAULT_DEVICE),
)

register(
    Backend(
        OPENVINO_BF16,
        BF16,
        "OpenVINO on the BF16 plan (model_bf16.onnx), its FP32 islands in FP32, on devices with BF16 arithmetic",
        _open,
        file=BF16_FILE,
        requires=("openvino",),
        install=INSTALL,
        check=_check,
        takes_device=True,
        verify_by_default=False,  # an optional extra, and a CPU feature: `verify` runs it when asked by name
        device_help="an OpenVINO device with BF16 arithmetic  [default: CPU]",
        doctor_note=_doctor_note,
        triton=(TRITON_OPENVINO_BF16,),
        probe=_probe,
        report=_report,
    )
)
