"""Whole images through the tiler against the original on the whole image."""

import numpy as np
import pytest

from deploytool.build.networks import arch_for, build_original, export_weights
from deploytool.runtime import inference
from deploytool.runtime.backends import open_runner
from deploytool.runtime.backends.torch import TorchRunner
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import read_manifest
from deploytool.verify import parity
from tests.helpers import export_tiny


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("inference") / "m"
    export_tiny("swinir-m-x2", out, fp16=False, tile=(32, 32))
    return out


def test_window_aligned_pads_to_the_grid_and_rounds_overlap():
    assert inference.window_aligned(np.zeros((37, 30, 3), np.float32), 8).shape == (40, 32, 3)
    assert inference.aligned_overlap(12, 8, (64, 64)) == 16
    assert inference.aligned_overlap(16, 8, (16, 16)) == 8  # kept below the tile
    assert inference.aligned_overlap(16, 7, (14, 14)) == 7
    assert inference.aligned_overlap(5, 8, (8, 8)) == 0


@pytest.mark.parametrize("size", [(29, 37), (70, 45), (32, 32), (9, 100)])
def test_tiled_matches_the_original_on_the_whole_image(exported, size):
    manifest = read_manifest(exported)
    entry, _, state_dict = export_weights(manifest)
    original = TorchRunner(build_original(entry, arch_for(entry, state_dict), state_dict))
    pixels = synthetic_batch((1, 3, *size), seed=5)[0].transpose(1, 2, 0)
    whole = original(pixels.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
    tiled = inference.restore_array(open_runner(exported, manifest, "ort"), manifest, pixels, overlap=8)
    assert tiled.shape == whole.shape == (size[0] * 2, size[1] * 2, 3)
    _, _, psnr = parity.metrics(whole, tiled)
    assert psnr > 40, psnr
    if max(size) <= 32:  # one tile, same padding as the original: identical up to float error
        np.testing.assert_allclose(tiled, whole, atol=1e-4)
