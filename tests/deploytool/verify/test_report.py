"""Tests for deploytool.verify.report: the self-contained HTML parity page, in Python and in a real browser."""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploytool.verify.report import (
    Visual,
    difference_gain,
    render_html,
    worst_crop,
    write_html,
)

BROWSER_TIMEOUT_S = 120


def _scene(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with edges (gradients and discs), HWC float32 in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    planes = []
    for c in range(channels):
        plane = 0.5 + 0.35 * np.sin(x / (9 + 4 * c)) * np.cos(y / (13 + 3 * c))
        for _ in range(4):
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(8, width / 4)
            plane = np.where((y - cy) ** 2 + (x - cx) ** 2 < r * r, 0.15 + 0.7 * rng.uniform(), plane)
        planes.append(plane)
    return np.stack(planes, axis=2).astype(np.float32)


def _with_error(reference: np.ndarray, blob: tuple[int, int], size: int = 10, amount: float = 0.2, seed: int = 0) -> np.ndarray:
    """`reference` plus faint noise everywhere and a strong square error at `blob` (y, x)."""
    rng = np.random.default_rng(seed)
    output = reference + rng.normal(0, 2e-3, reference.shape).astype(np.float32)
    y, x = blob
    output[y : y + size, x : x + size] += amount
    return output


def _report(visuals: list[Visual], *, model_id: str = "swinir-classical-x2", failed: set[str] = frozenset()) -> dict:
    comparisons = []
    for visual in visuals:
        diff = np.abs(visual.original.astype(np.float64) - visual.output)
        finite = bool(np.isfinite(diff).all())
        comparisons.append(
            {
                "inputs": visual.inputs,
                "reference": "original",
                "candidate": visual.candidate,
                "max_abs": float(diff.max()) if finite else math.inf,
                "mean_abs": float(diff.mean()) if finite else math.inf,
                "psnr": 41.23 if finite else -math.inf,
                "limits": "PSNR>=40",
                "passed": visual.candidate not in failed and finite,
            }
        )
    return {
        "model_id": model_id,
        "original": "spandrel SwinIR",
        "weights": "001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth",
        "backends": sorted({v.candidate for v in visuals}),
        "skipped": {"trt": "TensorRT is not installed"},
        "passed": all(c["passed"] for c in comparisons),
        "comparisons": comparisons,
    }


def _sample_visuals() -> list[Visual]:
    rgb = _scene(256, 256, 3)
    gray = _scene(256, 256, 1, seed=1)
    gray_output = _with_error(gray, (40, 180), seed=1)
    gray_output[200:206, 20:30] = np.nan
    return [
        Visual("image baby.png tiled", "ort-fp16", rgb, _with_error(rgb, (150, 70))),
        Visual("synthetic#0 1x1x256x256", "ort", gray, gray_output),
    ]


def _data_images(page: str) -> list[np.ndarray]:
    """Every <img> of the page, decoded; asserts each is an embedded PNG."""
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    decoded = []
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        png = np.frombuffer(base64.b64decode(source.split(",", 1)[1]), dtype=np.uint8)
        image = cv2.imdecode(png, cv2.IMREAD_COLOR)
        assert image is not None
        decoded.append(image)
    return decoded


def test_page_has_verdict_table_and_pictures_per_visual() -> None:
    visuals = _sample_visuals()
    page = render_html(_report(visuals, failed={"ort"}), visuals)

    assert "<h1>Parity: swinir-classical-x2</h1>" in page
    assert "Original: spandrel SwinIR. Weights: 001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth." in page
    assert "FAILED" in page and "1 of 2 comparisons passed" in page
    for column in ("inputs", "original vs", "max abs", "mean abs", "PSNR dB", "limits", "result"):
        assert f">{column}</th>" in page
    assert page.count('<tr class="fail">') == 1 and page.count('<tr class="pass">') == 1
    assert "Skipped <code>trt</code>: TensorRT is not installed" in page
    # per visual: heat map and three crops, all decodable PNGs
    images = _data_images(page)
    assert len(images) == 4 * len(visuals)
    assert page.count('class="heatmap"') == len(visuals)
    assert "difference ×" in page and "linear-gradient" in page
    # the NaN block of the gray output is called out and drawn in magenta
    assert "Non-finite values" in page and "ours (ort): 60 of 65536 pixels" in page
    gray_heat = images[4]
    assert (np.all(gray_heat == (255, 0, 255), axis=2)).sum() == 60


def test_page_is_self_contained() -> None:
    visuals = _sample_visuals()
    page = render_html(_report(visuals), visuals)

    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "http://" not in page and "https://" not in page


def test_report_text_is_escaped() -> None:
    reference = _scene(32, 48, 3)
    visual = Visual("image <b>&amp;.png tiled", "ort<script>", reference, reference + 0.01)
    report = _report([visual], model_id="<script>alert(1)</script>")
    report["skipped"] = {"trt<": "needs <GPU> & drivers"}
    report["comparisons"][0]["limits"] = "max|d|<=1e-3"

    page = render_html(report, [visual])

    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>" not in page and "image &lt;b&gt;&amp;amp;.png tiled" in page
    assert "ort<script>" not in page and "ort&lt;script&gt;" in page
    assert "needs &lt;GPU&gt; &amp; drivers" in page and "max|d|&lt;=1e-3" in page
    assert page.count("<script>") == 1  # only the page's own


def test_worst_crop_contains_planted_blob() -> None:
    rng = np.random.default_rng(3)
    diff = rng.uniform(0, 0.01, (300, 400))
    diff[200:212, 310:322] = 0.5

    y, x = worst_crop(diff, 64)

    assert y <= 200 and 212 <= y + 64 and x <= 310 and 322 <= x + 64
    assert 0 <= y <= 300 - 64 and 0 <= x <= 400 - 64


def test_worst_crop_goes_to_non_finite_values_and_fits_small_images() -> None:
    diff = np.full((100, 120, 3), 0.01)
    diff[5:8, 90:93, 1] = np.nan
    y, x = worst_crop(diff, 64)
    assert y <= 5 and 8 <= y + 64 and x <= 90 and 93 <= x + 64

    assert worst_crop(np.ones((20, 30)), 64) == (0, 0)
    assert worst_crop(np.eye(100)[:, :40], 64) == (0, 0)  # a 64x40 window: rows 0-63 hold 40 ones, like rows 1-64; first wins


def test_crop_shown_is_the_worst_window_of_the_output() -> None:
    reference = _scene(128, 160, 3)
    visual = Visual("image a.png tiled", "ort-fp16", reference, _with_error(reference, (90, 120), size=6, amount=0.3))

    page = render_html(_report([visual]), [visual])
    _, original_crop, ours_crop, difference_crop = _data_images(page)

    y, x = worst_crop(np.abs(visual.original - visual.output).max(axis=2), 64)
    assert f"at x {x}, y {y} of 160×128" in page
    expected = np.rint(np.clip(reference[y : y + 64, x : x + 64], 0, 1) * 255).astype(np.uint8)[:, :, ::-1]
    assert np.array_equal(original_crop, expected)
    assert not np.array_equal(ours_crop, original_crop)
    assert difference_crop.max() >= 230  # amplified to near full scale


@pytest.mark.parametrize("max_diff", [3.71e-3, 0.0123, 0.4, 0.95, 2e-7])
def test_difference_gain_maps_max_near_full_scale(max_diff: float) -> None:
    gain = difference_gain(max_diff)
    assert 0.9 <= gain * max_diff <= 1.0 or (gain == 1.0 and max_diff > 0.5)


@pytest.mark.parametrize("max_diff", [0.0, 1.5, math.nan, math.inf])
def test_difference_gain_is_one_without_a_usable_max(max_diff: float) -> None:
    assert difference_gain(max_diff) == 1.0


def test_large_outputs_make_small_heat_maps() -> None:
    reference = _scene(900, 1500, 3)
    output = _with_error(reference, (500, 1300), size=2, amount=0.5)  # a 2x2 peak survives max pooling
    visual = Visual("image big.png tiled", "ort", reference, output)

    page = render_html(_report([visual]), [visual])
    heat = _data_images(page)[0]

    assert max(heat.shape[:2]) <= 512 and "Downscaled 1/3 to 500×300" in page
    assert heat.max(axis=2).max() >= 200  # the peak is at the top of the colour scale
    assert len(page) < 1_500_000


def test_identical_and_all_nan_outputs_render() -> None:
    reference = _scene(40, 40, 1)
    identical = Visual("synthetic#0 1x1x40x40", "torch", reference, reference.copy())
    broken = Visual("synthetic#1 1x1x40x40", "ort-fp16", reference, np.full_like(reference, np.nan))
    exploded = Visual("synthetic#2 1x1x40x40", "ort", reference, np.where(reference > 0.5, np.inf, -np.inf).astype(np.float32))

    page = render_html(_report([identical, broken, exploded]), [identical, broken, exploded])

    assert "No finite difference" in page and "ours (ort-fp16): 1600 of 1600 pixels" in page
    assert "ours (ort): 1600 of 1600 pixels" in page
    assert len(_data_images(page)) == 12


def test_visual_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        Visual("x", "ort", np.zeros((8, 8, 3), np.float32), np.zeros((16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="HWC with 1 or 3 channels"):
        Visual("x", "ort", np.zeros((8, 8, 4), np.float32), np.zeros((8, 8, 4), np.float32))


def test_write_html_is_atomic(tmp_path: Path) -> None:
    visuals = _sample_visuals()
    report = _report(visuals)
    path = tmp_path / "export" / "parity.html"
    path.parent.mkdir()
    path.write_text("old page")

    write_html(path, report, visuals)

    assert path.read_text(encoding="utf-8") == render_html(report, visuals)
    assert [p.name for p in path.parent.iterdir()] == ["parity.html"]


def test_write_html_failure_keeps_previous_page(tmp_path: Path) -> None:
    path = tmp_path / "parity.html"
    path.write_text("old page")
    visuals = _sample_visuals()

    with pytest.raises(KeyError):
        write_html(path, {"passed": True}, visuals)  # missing model_id: nothing is rendered

    assert path.read_text() == "old page"
    assert [p.name for p in tmp_path.iterdir()] == ["parity.html"]


# --- in a real browser -------------------------------------------------------------------------


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("chromium is not on PATH, but CI must run the HTML-report browser test (scripts/setup.sh installs it)")
        pytest.skip("chromium is not on PATH; install the chromium package to run the HTML-report browser test")
    return path


def _run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result


def _page_file(tmp_path: Path) -> Path:
    visuals = _sample_visuals()
    path = tmp_path / "parity.html"
    write_html(path, _report(visuals, failed={"ort"}), visuals)
    return path


def test_browser_screenshot_is_not_blank(chromium: str, tmp_path: Path) -> None:
    page = _page_file(tmp_path)
    screenshot = tmp_path / "parity.png"

    _run_chromium(chromium, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,2000", "--hide-scrollbars", page.as_uri())

    image = cv2.imread(str(screenshot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (2000, 1280)
    assert float(image.std()) > 20
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text alone gives a few dozen; the heat maps and crops give thousands


def test_browser_loads_every_image(chromium: str, tmp_path: Path) -> None:
    page = _page_file(tmp_path)

    result = _run_chromium(chromium, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", page.as_uri())

    loaded = re.search(r'data-images-loaded="(\d+)"', result.stdout)
    total = re.search(r'data-images-total="(\d+)"', result.stdout)
    assert loaded and total, f"the page's load script did not run: {result.stdout[:500]}"
    assert int(total.group(1)) == 8
    assert int(loaded.group(1)) == int(total.group(1))


def test_browser_counts_a_broken_image_as_not_loaded(chromium: str, tmp_path: Path) -> None:
    # Guards the check above: a corrupt embedded PNG must show up as loaded < total.
    page = _page_file(tmp_path)
    text = page.read_text(encoding="utf-8")
    page.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src="data:image/png;base64,AAAA"', text, count=1), encoding="utf-8")

    result = _run_chromium(chromium, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", page.as_uri())

    assert 'data-images-loaded="7"' in result.stdout and 'data-images-total="8"' in result.stdout
