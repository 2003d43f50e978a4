"""The backend registry: descriptors by name, one-line refusals, availability with the reason, and
every caller (parity's tolerances, `verify`'s defaults, run's --device, Triton) reading descriptors."""

from __future__ import annotations

import numpy as np
import pytest

from deploytool.errors import DeployError
from deploytool.runtime import backends
from deploytool.runtime.backends import base
from deploytool.verify import parity

NO_MACHINE = {"torch": None, "onnxruntime": None, "openvino": None, "tensorrt": None, "gpus": [], "ort_providers": []}
NO_EXPORT = None  # the manifest: no backend opened here reads a file of the export
TOLERANCES = {"def_max_abs": 1e-5, "onnx_max_abs": 1e-4, "fp16_max_abs": 0.05, "fp16_psnr_min": 40.0, "bf16_max_abs": 0.1, "bf16_psnr_min": 35.0}


class EchoRunner(backends.ClosingRunner):
    """Returns its input doubled; remembers whether it was closed."""

    def __init__(self, request: backends.OpenRequest):
        self.name, self.device, self.input_shape = "echo", request.device or "cpu", None
        self.closed = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return batch * 2

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def echo(monkeypatch):
    """A BF16 backend registered for one test (the registry is restored after it)."""
    backend = base.Backend("echo-bf16", backends.BF16, "doubles its input", EchoRunner, requires=("numpy",), install="pip install numpy")
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return backends.register(backend)


def test_the_registry_holds_every_backend_in_one_order_and_the_original_runs_only_in_parity():
    assert backends.names() == ("original", "torch", "ort", "ort-fp16", "openvino", "openvino-bf16", "trt")
    assert backends.runtime_names() == ("torch", "ort", "ort-fp16", "openvino", "openvino-bf16", "trt")
    assert backends.original().name == "original" and backends.get("original").is_original
    assert backends.verify_default_names() == ("original", "torch", "ort", "ort-fp16", "trt")  # OpenVINO is an optional extra, asked for by name


def test_descriptors_say_precision_file_and_checkpoint():
    described = {name: (b.precision, b.file, b.needs_checkpoint) for name in backends.names() for b in [backends.get(name)]}
    assert described == {
        "original": ("fp32", None, True),
        "torch": ("fp32", None, True),
        "ort": ("fp32", "model.onnx", False),
        "ort-fp16": ("fp16", "model_fp16.onnx", False),
        "openvino": ("fp32", "model.onnx", False),
        "openvino-bf16": ("bf16", "model_bf16.onnx", False),
        "trt": ("fp16", None, False),
    }


def test_an_unknown_name_is_refused_in_one_line_listing_the_known_ones():
    with pytest.raises(DeployError) as caught:
        backends.get("onnx-fp8")
    assert str(caught.value) == "unknown backend 'onnx-fp8'; choose from torch, ort, ort-fp16, openvino, openvino-bf16, trt"


def test_a_name_is_registered_once(echo):
    with pytest.raises(ValueError, match="registered twice"):
        backends.register(echo)


def test_a_precision_outside_the_classes_is_refused():
    with pytest.raises(ValueError, match="not one of fp32, fp16, bf16"):
        base.Backend("int8", "int8", "", EchoRunner)


def test_availability_names_the_reason_and_the_extra():
    reasons = {name: backends.get(name).unavailable_reason(NO_MACHINE) for name in backends.names()}
    assert reasons["openvino"] == "openvino not installed: pip install deploytool[openvino]"
    assert reasons["ort"] == "onnxruntime not installed: pip install onnxruntime-gpu"
    assert "deploytool[trt]" in reasons["trt"] and "deploytool[export]" in reasons["torch"]
    assert backends.available(NO_MACHINE) == ()
    gpu_less = {**NO_MACHINE, "onnxruntime": "1.20", "tensorrt": "10.13.0"}
    assert backends.available(gpu_less) == ("ort", "ort-fp16")
    assert backends.get("trt").unavailable_reason(gpu_less) == "TensorRT is installed but torch sees no CUDA GPU"


def test_a_registered_backend_is_opened_parsed_and_judged_by_its_descriptor(echo, tmp_path):
    assert "echo-bf16" in backends.runtime_names() and backends.parse_backends("ort, echo-bf16") == ["ort", "echo-bf16"]
    with backends.open_runner(tmp_path, NO_EXPORT, "echo-bf16") as runner:
        assert runner.run(np.ones((1, 3, 2, 2), np.float32)).max() == 2
    assert runner.closed
    # its precision class picks its tolerances, as fp16 picks the FP16 ones for ort-fp16
    assert parity.pair_limits("echo-bf16", TOLERANCES, tiled=False) == (0.1, 35.0)
    assert parity.pair_limits("ort-fp16", TOLERANCES, tiled=False) == (0.05, 40.0)
    assert parity.pair_limits("torch", TOLERANCES, tiled=False) == (1e-5, None)


def test_device_is_refused_for_backends_that_take_none(echo, tmp_path):
    with pytest.raises(DeployError) as caught:
        backends.open_runner(tmp_path, NO_EXPORT, "echo-bf16", device="GPU")
    assert str(caught.value) == "--device applies to the openvino and openvino-bf16 backends, not echo-bf16"


def test_checkpoint_backends_are_opened_by_the_build_layer(tmp_path):
    with pytest.raises(DeployError, match="open it with deploytool.build.runners"):
        backends.open_runner(tmp_path, NO_EXPORT, "torch")


def test_triton_runtimes_come_from_the_backends_the_default_first():
    assert [runtime.name for runtime in backends.triton_runtimes()] == ["trt", "onnx", "python-ort", "openvino", "openvino-bf16"]
    assert [runtime.name for runtime in backends.triton_runtimes() if runtime.on_cpu] == ["python-ort", "openvino", "openvino-bf16"]
    # a Python model that runs a registered backend names it; that backend serves it
    assert [(runtime.name, runtime.opens) for runtime in backends.triton_runtimes() if runtime.opens] == [("openvino-bf16", "openvino-bf16")]
    assert backends.get("openvino-bf16").triton == (backends.triton_runtime("openvino-bf16"),)
    with pytest.raises(DeployError, match="^unknown Triton runtime 'ort'; choose from trt, onnx, python-ort, openvino, openvino-bf16$"):
        backends.triton_runtime("ort")
