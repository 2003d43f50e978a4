"""The Python API: `deploytool.open` and its `Restorer`, against what `deploytool run` writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deploytool
from deploytool.errors import DeployError, ImageError
from deploytool.runtime import images
from deploytool.runtime.manifest import read_manifest
from deploytool.runtime.restorer import Restorer
from tests.helpers import cli_runner, export_tiny, write_test_png
from tests.videos import Clip, make_clip, read_back

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("restorer") / "swinir"
    export_tiny("swinir-s-x2", out, fp16=False, tile=(32, 32), batch=2)
    return out


def run_cli(exported: Path, source: Path, output: Path, *options: str) -> np.ndarray:
    from deploytool.cli import cli

    result = cli_runner().invoke(cli, ["run", str(exported), str(source), "-o", str(output), "--backend", "ort", *options])
    assert result.exit_code == 0, result.output
    return images.read_samples(output)


def with_alpha(samples: np.ndarray) -> np.ndarray:
    rows = np.linspace(0, np.iinfo(samples.dtype).max, samples.shape[0]).astype(samples.dtype)
    return np.concatenate([samples, np.broadcast_to(rows[:, None, None], (*samples.shape[:2], 1))], axis=2)


@pytest.mark.parametrize("channels, alpha", [(3, False), (3, True), (1, False), (1, True)])
def test_restore_gives_the_samples_run_writes(exported, tmp_path, channels, alpha):
    samples = images.read_samples(write_test_png(tmp_path / "plain.png", channels))
    if alpha:
        samples = with_alpha(samples)
    source = tmp_path / "in.png"
    images.write_samples(source, samples[:, :, :channels], alpha=samples[:, :, -1] if alpha else None)
    written = run_cli(exported, source, tmp_path / "out.png")
    with deploytool.open(exported, "ort") as restorer:
        restored = restorer.restore(images.read_samples(source))
    assert restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, written)


def test_sixteen_bit_and_float_arrays(exported, tmp_path):
    samples = (images.read_samples(write_test_png(tmp_path / "in.png", 3)).astype(np.uint16) * 257)[:, :, :3]
    images.write_samples(tmp_path / "deep.png", samples)
    written = run_cli(exported, tmp_path / "deep.png", tmp_path / "out.png")
    with deploytool.open(exported, "ort") as restorer:
        deep = restorer.restore(samples)
        floats = restorer.restore(samples.astype(np.float32) / np.float32(65535))
    assert deep.dtype == np.uint16
    np.testing.assert_array_equal(deep, written)
    assert floats.dtype == np.float32 and floats.shape == (samples.shape[0] * 2, samples.shape[1] * 2, 3)
    assert floats.min() >= 0 and floats.max() <= 1
    # the same pixels as the 16-bit samples, returned unquantized
    np.testing.assert_array_equal(images.quantize(floats, 16), deep)


def test_restore_file_writes_what_run_writes_and_reports_it(exported, tmp_path):
    source = write_test_png(tmp_path / "in.png", 3)
    written = run_cli(exported, source, tmp_path / "run.png", "--overlap", "8")
    with deploytool.open(exported, "ort", overlap=8) as restorer:
        report = restorer.restore_file(source, tmp_path / "api.png")
    assert (tmp_path / "api.png").read_bytes() == (tmp_path / "run.png").read_bytes()
    assert report["output_size"] == [written.shape[1], written.shape[0]] and report["tiles"] > 1


def test_restore_file_takes_videos_through_the_video_package(exported, tmp_path):
    source = tmp_path / "clip.mp4"
    make_clip(source, Clip(pts=list(range(3))))
    with deploytool.open(exported, "ort") as restorer:
        summary = restorer.restore_file(source, tmp_path / "clip_x2.mp4")
    after = read_back(tmp_path / "clip_x2.mp4")
    assert summary["frames"] == 3 and len(after.frames) == 3 and after.size == (128, 96)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ([np.zeros((8, 8, 3), np.uint8)] * 2, "takes 1 image(s) (image); 2 given"),
        ([np.zeros((8, 8), np.uint8)], "image: an image is HWC"),
        ([np.zeros((8, 8, 5), np.uint8)], "image: 5 channels"),
        ([np.full((8, 8, 3), 2.0, np.float32)], "image: FP32 samples must lie in [0, 1]"),
        ([np.zeros((8, 8, 3), np.int32)], "unsupported sample type int32"),
    ],
)
def test_restore_refuses_what_is_not_an_image_in_one_line(exported, arrays, message):
    with deploytool.open(exported, "ort") as restorer, pytest.raises(ImageError) as caught:
        restorer.restore(*arrays)
    assert message in str(caught.value) and "\n" not in str(caught.value)


class CountingRunner:
    """A runner that returns NaN (a model that overflowed) and counts its closes."""

    name, device = "nan", "cpu"

    def __init__(self, manifest):
        self.input_shape, self.scale, self.closed = tuple(manifest.input.shape), manifest.scale, 0

    def __call__(self, batch):
        n, c, h, w = batch.shape
        return np.full((n, c, h * self.scale, w * self.scale), np.nan, np.float32)

    def close(self):
        self.closed += 1


def test_a_restorer_closes_its_backend_and_refuses_non_finite_results(exported):
    runner = CountingRunner(read_manifest(exported))
    with Restorer(runner, read_manifest(exported)) as restorer, pytest.raises(DeployError, match="non-finite"):
        restorer.restore(np.zeros((8, 8, 3), np.uint8))
    assert runner.closed == 1


def test_open_refuses_an_unknown_backend_in_one_line(exported):
    with pytest.raises(DeployError, match="unknown backend 'nope'"):
        deploytool.open(exported, "nope")


def test_importing_deploytool_imports_nothing_heavy():
    code = "import sys, deploytool; print(sorted(m for m in ('numpy', 'cv2', 'torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_type_hints_are_shipped():
    assert (Path(deploytool.__file__).parent / "py.typed").is_file()
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["deploytool"]
