"""The TensorRT runtime layer: what can be checked without TensorRT, and a skip where it is needed."""

import importlib.util

import pytest

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends.tensorrt import run as tensorrt
from deploytool.runtime.manifest import FP16_FILE, TIMING_CACHE, read_manifest

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_engine_names_carry_gpu_and_tensorrt_version():
    assert tensorrt.engine_filename((9, 0), "10.13.0") == "model.sm90-trt10.13.0.engine"
    assert tensorrt.engine_filename((8, 6), "11.0.1") == "model.sm86-trt11.0.1.engine"


def test_an_engine_for_another_gpu_or_version_is_refused_in_one_line():
    engines = ["model.sm86-trt10.13.0.engine"]
    assert tensorrt.matching_engine(engines, (8, 6), "10.13.0") == "model.sm86-trt10.13.0.engine"
    for target in [((9, 0), "10.13.0"), ((8, 6), "11.0.1")]:
        with pytest.raises(DeployError) as error:
            tensorrt.matching_engine(engines, *target)
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


def _gpu_and_tensorrt() -> bool:
    if not HAS_TENSORRT:
        return False
    import torch

    return torch.cuda.is_available()


needs_gpu_tensorrt = pytest.mark.skipif(
    not _gpu_and_tensorrt(), reason="TensorRT is not installed: pip install deploytool[trt] on a machine with an NVIDIA GPU"
)


@pytest.mark.trt
@needs_gpu_tensorrt
@pytest.mark.parametrize("model_id", ["swinir-s-x2", "hat-s-x2", "ipt-sr-x2"])
def test_tiny_engine_builds_runs_and_matches_the_fp16_graph(tmp_path, model_id):
    import numpy as np

    from deploytool.runtime.backends.onnxruntime import OrtRunner
    from deploytool.runtime.backends.tensorrt import build as engines
    from deploytool.runtime.input_batches import synthetic_batch
    from deploytool.verify import parity
    from tests.helpers import export_tiny

    out = tmp_path / model_id
    manifest = export_tiny(model_id, out, batch=2)
    name, _ = engines.build_engine(out)
    manifest = read_manifest(out)
    assert name in manifest.engines and (out / TIMING_CACHE).is_file()
    batch = synthetic_batch(manifest.input.shape, seed=5)
    expected = OrtRunner(out / FP16_FILE)(batch)
    for cuda_graph in (False, True):
        actual = tensorrt.TrtRunner.for_export(out, manifest, cuda_graph=cuda_graph)(batch)
        assert np.abs(actual - expected).max() < manifest.tolerances["fp16_max_abs"]
    report = parity.verify(out, backends=["ort-fp16", "trt"], synthetic_batches=1)
    assert report["passed"], parity.markdown(report)
    rebuilt, _ = engines.build_engine(out)  # the saved timing cache is read back
    assert rebuilt == name
