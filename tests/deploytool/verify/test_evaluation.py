"""PSNR/SSIM on Y (BasicSR convention) and the eval command on a generated test set."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deploytool.cli import cli
from deploytool.runtime import images
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.verify import evaluation

SET5 = Path(__file__).resolve().parents[4] / "shared" / "testsets" / "Set5"


def test_y_channel_matches_bt601():
    white, black = np.full((1, 1, 3), 255, np.uint8), np.zeros((1, 1, 3), np.uint8)
    assert evaluation.y_channel(white)[0, 0] == pytest.approx(235.0)
    assert evaluation.y_channel(black)[0, 0] == pytest.approx(16.0)
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert evaluation.y_channel(red)[0, 0] == pytest.approx(16 + 65.481)


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (40, 40))
    assert evaluation.ssim(a, a) == pytest.approx(1.0)
    assert evaluation.ssim(a, 255 - a) < 0


def test_bicubic_keeps_flat_images_flat_and_scales():
    lr = np.full((5, 7, 3), 0.25, np.float32)
    up = evaluation.bicubic_upscale(lr, 3)
    assert up.shape == (15, 21, 3) and np.allclose(up, 0.25, atol=1e-6)


def make_dataset(root: Path, scale: int) -> Path:
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / f"X{scale}").mkdir(parents=True)
    for index in range(2):
        hr = synthetic_batch((1, 3, 34, 42), seed=index)[0].transpose(1, 2, 0)  # not a multiple of the scale
        images.write_image(root / "HR" / f"img{index}.png", hr)
        lr = hr[: 34 // scale * scale : scale, : 42 // scale * scale : scale]
        images.write_image(root / "LR_bicubic" / f"X{scale}" / f"img{index}x{scale}.png", lr)
    return root


def test_eval_command_scores_every_method(tmp_path, tiny_exports):
    out = tiny_exports.copy("swinir-m-x2", tmp_path / "m")
    dataset = make_dataset(tmp_path / "set", 2)
    result = CliRunner().invoke(cli, ["eval", str(out), "--dataset", str(dataset), "--scale", "2", "--methods", "reference,ort,ort-fp16,bicubic", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["summary"]) == {"reference", "ort", "ort-fp16", "bicubic"}
    assert all(v["images"] == 2 and 5 < v["psnr"] < 100 for v in report["summary"].values())
    wrong = CliRunner().invoke(cli, ["eval", str(out), "--dataset", str(dataset), "--scale", "3"])
    assert wrong.exit_code == 2 and "does not match the export's scale" in wrong.stderr


def test_eval_calls_the_original_original_and_takes_reference_with_a_note(tmp_path):
    from tests.helpers import export_tiny

    out = tmp_path / "m"
    export_tiny("swinir-m-x2", out, fp16=False)
    dataset = make_dataset(tmp_path / "set", 2)
    result = CliRunner().invoke(cli, ["eval", str(out), "--dataset", str(dataset), "--scale", "2", "--methods", "original,reference", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["original"] == summary["reference"] and summary["original"]["images"] == 2
    notes = [line for line in result.stderr.splitlines() if "deprecated" in line]
    assert notes == ["note: --methods reference is deprecated; it is called original, as in verify"]
    quiet = CliRunner().invoke(cli, ["eval", str(out), "--dataset", str(dataset), "--scale", "2", "--methods", "original,bicubic"])
    assert quiet.exit_code == 0 and "deprecated" not in quiet.stderr, quiet.output


@pytest.mark.skipif(not SET5.is_dir(), reason="../shared/testsets/Set5 is not present")
def test_bicubic_baseline_on_set5_matches_the_literature():
    """Bicubic x2 on Set5 is 33.66 dB in the SR papers; our pipeline must land close to it."""
    report = evaluation.evaluate("bicubic", 2, SET5, {"bicubic": None}, scale=2)
    assert report["summary"]["bicubic"]["psnr"] == pytest.approx(33.66, abs=0.1)


def test_a_dataset_whose_lr_is_not_its_hr_over_the_scale_is_refused_in_one_line(tmp_path):
    def dataset(name, hr_size, lr_size):
        root = tmp_path / name
        images.write_image(root / "HR" / "a.png", synthetic_batch((1, 3, *hr_size), seed=0)[0].transpose(1, 2, 0))
        images.write_image(root / "LR_bicubic" / "X2" / "ax2.png", synthetic_batch((1, 3, *lr_size), seed=1)[0].transpose(1, 2, 0))
        return root

    bicubic = {evaluation.BICUBIC: None}
    for root, message in (
        (dataset("larger", (64, 64), (40, 40)), "40x40 is not its HR image's 64x64 over x2"),
        (dataset("smaller", (64, 64), (20, 20)), "20x20 is not its HR image's 64x64 over x2"),
        (dataset("tiny", (2, 2), (1, 1)), "1x1 is too small to score at x2"),
    ):
        with pytest.raises(evaluation.DeployError, match=re.escape(message)):
            evaluation.evaluate("esrt-x2", 2, root, bicubic, scale=2)
    with pytest.raises(evaluation.DeployError, match="--methods names no method"):
        evaluation.method_names(" , ", print)
