"""TensorRT: running an engine (`run`) and building one from an export's ONNX graph (`build`).

The `trt` backend runs the engine `deploytool build` made for this GPU and TensorRT version
(from the FP16 graph); both submodules import TensorRT only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends.base import FP16, Backend, OpenRequest, Runner, TritonRuntime, register
from deploytool.runtime.manifest import Manifest

TRT = "trt"
INSTALL = "pip install deploytool[trt] on a machine with an NVIDIA GPU"


def build_status(facts: dict[str, Any]) -> str:
    """doctor's `build` line: 'yes: ...' when this machine can build (and so run) engines, else 'no: why'."""
    from deploytool.runtime.backends.tensorrt.build import OLDEST_SUPPORTED, bf16_refusal, parse_version
    from deploytool.runtime.backends.tensorrt.run import NOT_INSTALLED

    gpu = facts["gpus"][0] if facts.get("gpus") else None
    if not facts.get("tensorrt"):
        return f"no: {NOT_INSTALLED}"
    if not gpu:
        return "no: TensorRT is installed but torch sees no CUDA GPU"
    if parse_version(facts["tensorrt"])[:2] < OLDEST_SUPPORTED:
        return f"no: TensorRT {facts['tensorrt']} is too old (10 or 11 needed)"
    sm = f"sm{gpu['compute_capability'][0]}{gpu['compute_capability'][1]}"
    refusal = bf16_refusal(tuple(gpu["compute_capability"]), gpu["name"])
    bf16 = "and model_bf16.onnx (--precision bf16)" if refusal is None else f"(no BF16 engines: {refusal})"
    return f"yes: strongly typed engines from model_fp16.onnx {bf16} for {gpu['name']} ({sm})"


def _check(facts: dict[str, Any]) -> str | None:
    status = build_status(facts)
    return None if status.startswith("yes") else status.removeprefix("no: ")


def _open(request: OpenRequest) -> Runner:
    from deploytool.runtime.backends.tensorrt.run import TrtRunner

    return TrtRunner.for_export(request.export_dir, request.manifest, cuda_graph=request.cuda_graph)


def served_engine(export_dir: Path, manifest: Manifest, fp32: bool = False) -> Path:
    """The engine a Triton server runs: `deploytool build`'s for this GPU and TensorRT, or the only target built."""
    return manifest.check_file(export_dir, _engine_for_server(export_dir, manifest))


def _engine_for_server(export_dir: Path, manifest: Manifest) -> str:
    from deploytool.runtime.backends.tensorrt.run import current_target, matching_engine

    build = f"deploytool build {export_dir}"
    if not manifest.engines:
        raise DeployError(f"{export_dir} has no TensorRT engine: run `{build}` on a machine with the server's GPU and TensorRT, or use --runtime onnx")
    try:
        capability, version = current_target()
    except BackendUnavailable:
        if len(manifest.engines) == 1:
            return next(iter(manifest.engines))
        raise DeployError(
            f"{export_dir} has engines for several GPUs ({', '.join(sorted(manifest.engines))}) and this machine has no TensorRT GPU to choose: "
            f"write the repository on the server's machine, or run `{build}` there"
        ) from None
    try:
        return matching_engine(manifest.engines, capability, version)
    except DeployError as exc:
        raise DeployError(f"{exc} (`{build}`)") from None


TRITON_PLAN = TritonRuntime(
    TRT,
    "a TensorRT engine",
    {"platform": "tensorrt_plan", "default_model_filename": "model.plan"},
    "model.plan",
    served_engine,
    fp32_refusal="--fp32 chooses model.onnx for --runtime onnx; a TensorRT engine's precision is the one `deploytool build` gave it",
)

register(
    Backend(
        TRT,
        FP16,
        "a TensorRT engine built from the FP16 graph for this GPU and TensorRT version",
        _open,
        requires=("tensorrt",),
        install=INSTALL,
        check=_check,
        machine_specific=True,  # an engine for another GPU is reported, not fatal
        takes_cuda_graph=True,
        triton=(TRITON_PLAN,),
    )
)
