"""The TensorRT runtime layer: what can be checked without TensorRT, and a skip where it is needed."""

import importlib.util

import pytest

from deploytool.backends import tensorrt
from deploytool.errors import BackendUnavailable, DeployError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_engine_names_carry_gpu_and_tensorrt_version():
    assert tensorrt.engine_filename((9, 0), "10.13.0") == "model.sm90-trt10.13.0.engine"
    assert tensorrt.engine_filename((8, 6), "11.0.1") == "model.sm86-trt11.0.1.engine"


def test_an_engine_for_another_gpu_or_version_is_refused_in_one_line():
    manifest = {"engines": {"model.sm86-trt10.13.0.engine": {}}}
    assert tensorrt.matching_engine(manifest, (8, 6), "10.13.0") == "model.sm86-trt10.13.0.engine"
    for target in [((9, 0), "10.13.0"), ((8, 6), "11.0.1")]:
        with pytest.raises(DeployError) as error:
            tensorrt.matching_engine(manifest, *target)
        message = str(error.value)
        assert "\n" not in message and "model.sm86-trt10.13.0.engine" in message and "deploytool build" in message


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_said_plainly():
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed: pip install deploytool\\[trt\\] on a machine with an NVIDIA GPU"):
        tensorrt.require_tensorrt()


@pytest.mark.trt
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed: pip install deploytool[trt] on a machine with an NVIDIA GPU")
def test_current_target_reports_this_gpu():
    capability, version = tensorrt.current_target()
    assert len(capability) == 2 and version
