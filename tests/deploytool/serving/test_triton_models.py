"""The whole-image model's request handling, without Triton: the tiles go to ONNX Runtime in
process, and the result must be what `deploytool run` writes for the same image."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from deploytool.errors import DeployError, ImageError
from deploytool.runtime import images, inference
from deploytool.runtime.backends.onnxruntime import OrtRunner
from deploytool.runtime.manifest import read_manifest
from deploytool.runtime.restorer import Restorer
from deploytool.serving.triton_models import ort_threads, restore_request
from tests.helpers import export_tiny


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports") / "swinir-s-x2"
    export_tiny("swinir-s-x2", folder, fp16=False, tile=(32, 32), batch=2)
    manifest = read_manifest(folder)
    runner = OrtRunner(folder / "model.onnx", providers=["CPUExecutionProvider"])
    yield folder, manifest, runner
    runner.close()


def samples(height: int, width: int, channels: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top + 1, (height, width, channels), dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("channels, dtype", [(3, np.uint8), (4, np.uint16), (1, np.uint8), (1, np.uint16)])
def test_a_request_returns_what_run_writes(served, tmp_path, channels, dtype):
    folder, manifest, runner = served
    array = samples(37, 45, channels, dtype)
    path = tmp_path / "in.png"
    images.write_samples(path, array[:, :, :3] if channels == 4 else array, alpha=array[:, :, 3] if channels == 4 else None)
    Restorer(runner, manifest).restore_image_file(path, tmp_path / "out.png")
    name = "image_uint8" if dtype == np.uint8 else "image_uint16"
    outputs = restore_request(manifest, runner, {name: images.read_samples(path)}, max_pixels=10_000, overlap=manifest.overlap())
    output = outputs["restored_uint8" if dtype == np.uint8 else "restored_uint16"]
    expected = images.read_samples(tmp_path / "out.png")
    assert output.dtype == dtype and output.shape == (74, 90, channels)
    np.testing.assert_array_equal(output, expected)


def test_fp32_in_fp32_out_matches_the_integer_path(served):
    _, manifest, runner = served
    array = samples(20, 24, 3)
    as_float = array.astype(np.float32) / np.float32(255)
    restored8 = restore_request(manifest, runner, {"image_uint8": array}, max_pixels=10_000, overlap=manifest.overlap())["restored_uint8"]
    restored = restore_request(manifest, runner, {"image_fp32": as_float}, max_pixels=10_000, overlap=manifest.overlap())["restored_fp32"]
    assert restored.dtype == np.float32 and restored.min() >= 0 and restored.max() <= 1
    np.testing.assert_array_equal(images.quantize(restored, 8), restored8)


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"image_uint8": np.zeros((120, 120, 3), np.uint8)}, "120x120 is 14400 pixels, over this model's limit of 10000"),
        ({"image_uint8": np.zeros((8, 8), np.uint8)}, "an image is HWC"),
        ({"image_uint8": np.zeros((8, 8, 5), np.uint8)}, "5 channels"),
        ({"image_uint8": np.zeros((8, 8, 3), np.uint8), "image_uint16": np.zeros((8, 8, 3), np.uint16)}, "one sample type for all views"),
        ({}, "got no input"),
        ({"image_fp32": np.full((8, 8, 3), np.nan, np.float32)}, "must be finite"),
        ({"image_fp32": np.full((8, 8, 3), -0.5, np.float32)}, r"must lie in \[0, 1\]"),
    ],
)
def test_requests_the_model_cannot_take_are_refused_in_one_line(served, tensors, message):
    _, manifest, runner = served
    with pytest.raises(ImageError, match=message):
        restore_request(manifest, runner, tensors, max_pixels=10_000, overlap=manifest.overlap())


def test_a_model_that_returns_non_finite_values_is_refused(served):
    _, manifest, runner = served
    with pytest.raises(DeployError, match="non-finite"):
        restore_request(manifest, lambda batch: np.full_like(runner(batch), np.inf), {"image_uint8": samples(16, 16, 3)}, max_pixels=10_000, overlap=8)


def test_threads_share_the_servers_cores_among_instances():
    config = {"instance_group": [{"count": 2, "kind": "KIND_CPU"}], "parameters": {"intra_op_threads": {"string_value": "0"}}}
    assert ort_threads(config, 8) == 4 and ort_threads(config, 1) == 1
    assert ort_threads(json.loads(json.dumps(config).replace('"0"', '"3"')), 8) == 3


def test_read_samples_is_rgb_order(tmp_path):
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[:, :, 0] = 200  # blue in OpenCV's order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    assert images.read_samples(tmp_path / "blue.png")[0, 0].tolist() == [0, 0, 200]


def test_a_dual_view_model_takes_one_image_per_view(served):
    """Views stacked on channels in the manifest's order, as `run` stacks one file per view."""
    import dataclasses

    from deploytool.runtime.manifest import View

    _, manifest, _ = served
    batch, _, height, width = manifest.input.shape
    views = (View("left", 3, "RGB"), View("right", 3, "RGB"))
    dual = dataclasses.replace(manifest, input=dataclasses.replace(manifest.input, views=views, shape=(batch, 6, height, width)))

    def infer(tiles: np.ndarray) -> np.ndarray:  # left minus half of right, upscaled: depends on both views, in order
        mixed = tiles[:, :3] - 0.5 * tiles[:, 3:]
        return mixed.repeat(dual.scale, axis=2).repeat(dual.scale, axis=3)

    left, right = samples(20, 22, 3, seed=1), samples(20, 22, 3, seed=2)
    output = restore_request(dual, infer, {"left_uint8": left, "right_uint8": right}, max_pixels=10_000, overlap=8)["restored_uint8"]
    stacked = np.concatenate([left, right], axis=2).astype(np.float32) / np.float32(255)
    expected = images.quantize(inference.restore_array(infer, dual, stacked, overlap=8), 8)
    np.testing.assert_array_equal(output, expected)
    with pytest.raises(ImageError, match="right_uint8 missing"):
        restore_request(dual, infer, {"left_uint8": left}, max_pixels=10_000, overlap=8)
    with pytest.raises(ImageError, match="differ in size"):
        restore_request(dual, infer, {"left_uint8": left, "right_uint8": right[:10]}, max_pixels=10_000, overlap=8)
