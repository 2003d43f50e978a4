"""Decoded frames to float RGB with the stream's own matrix and range, never through 8 bits."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from deploytool.runtime.video import frames as framing
from deploytool.runtime.video.probe import Colour, VideoInfo

# Kr, Kb of each matrix (ITU-R BT.601, BT.709, BT.2020 non-constant luminance)
WEIGHTS = {5: (0.299, 0.114), 1: (0.2126, 0.0722), 9: (0.2627, 0.0593)}


def info_for(pix_fmt: str, depth: int, matrix: int, colour_range: int, size: tuple[int, int] = (8, 8)) -> VideoInfo:
    return VideoInfo(
        Path("x"),
        0,
        "matroska",
        "ffv1",
        *size,
        pix_fmt,
        depth,
        False,
        Fraction(1, 25),
        Fraction(25),
        1,
        1,
        (0,),
        None,
        0,
        Colour(2, 2, matrix, colour_range),
        (),
    )


def yuv_frame(planes: np.ndarray, pix_fmt: str):
    """An `av.VideoFrame` holding three full-size planes (PyAV builds no 10-bit YUV from numpy)."""
    import av

    _, height, width = planes.shape
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane, values in zip(frame.planes, planes):
        rows = np.zeros((height, plane.line_size // values.itemsize), values.dtype)
        rows[:, :width] = values
        plane.update(rows.tobytes())
    return frame


def reference_rgb(y, u, v, *, depth: int, matrix: int, full: bool) -> np.ndarray:
    kr, kb = WEIGHTS[matrix]
    top = (1 << depth) - 1
    unit = 1 << (depth - 8)
    if full:
        luma, cb, cr = y / top, (u - 128 * unit) / top, (v - 128 * unit) / top
    else:
        luma, cb, cr = (y - 16 * unit) / (219 * unit), (u - 128 * unit) / (224 * unit), (v - 128 * unit) / (224 * unit)
    r = luma + 2 * (1 - kr) * cr
    b = luma + 2 * (1 - kb) * cb
    g = (luma - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 1)


@pytest.mark.parametrize("matrix", [5, 1, 9], ids=["bt601", "bt709", "bt2020"])
@pytest.mark.parametrize("colour_range", [1, 2], ids=["limited", "full"])
@pytest.mark.parametrize("depth", [8, 10])
def test_yuv_frames_use_their_own_matrix_and_range(matrix, colour_range, depth):

    rng = np.random.default_rng(matrix + depth)
    pix_fmt = "yuv444p" if depth == 8 else "yuv444p10le"
    low, high = (0, (1 << depth) - 1) if colour_range == 2 else (16 << (depth - 8), 235 << (depth - 8))
    planes = rng.integers(low, high + 1, (3, 8, 8)).astype(np.uint8 if depth == 8 else np.uint16)
    planes[1:] = np.clip(planes[1:], low, high)
    frame = yuv_frame(planes, pix_fmt)
    frame.colorspace, frame.color_range = matrix, colour_range
    converted = framing.to_rgb(frame, info_for(pix_fmt, depth, matrix, colour_range), 0)
    expected = reference_rgb(*planes.astype(np.float64), depth=depth, matrix=matrix, full=colour_range == 2)
    assert converted.pixels.dtype == np.float32 and converted.samples is None
    # swscale converts in fixed point: within about one 8-bit level of the exact matrix (another
    # matrix or range is off by tens of levels)
    assert np.abs(converted.pixels - expected).max() < 5e-3


def test_ten_bit_frames_keep_more_than_256_levels():

    ramp = np.linspace(64, 940, 64 * 8).reshape(8, 64).astype(np.uint16)
    planes = np.stack([ramp, np.full_like(ramp, 512), np.full_like(ramp, 512)])
    frame = yuv_frame(planes, "yuv444p10le")
    frame.colorspace, frame.color_range = 1, 1
    pixels = framing.to_rgb(frame, info_for("yuv444p10le", 10, 1, 1, size=(64, 8)), 0).pixels
    assert len(np.unique(pixels[..., 1])) > 256


def test_untagged_yuv_decodes_as_bt601_limited_like_ffmpeg():

    planes = np.stack([np.full((8, 8), 120), np.full((8, 8), 90), np.full((8, 8), 200)]).astype(np.uint8)
    frame = yuv_frame(planes, "yuv444p")
    pixels = framing.to_rgb(frame, info_for("yuv444p", 8, 2, 0), 0).pixels
    assert np.abs(pixels[0, 0] - reference_rgb(120.0, 90.0, 200.0, depth=8, matrix=5, full=False)).max() < 5e-3
    assert np.abs(pixels[0, 0] - reference_rgb(120.0, 90.0, 200.0, depth=8, matrix=1, full=False)).max() > 2e-2


def test_restored_frames_of_deep_sources_reach_the_encoder_with_more_than_256_levels():
    from deploytool.runtime.video.output import EncodeOptions, plan_output

    plan = plan_output(info_for("yuv420p10le", 10, 9, 1, size=(64, 8)), EncodeOptions(), Path("out.mkv"), scale=2)
    assert (plan.codec, plan.pix_fmt, plan.depth) == ("libx265", "yuv420p10le", 16)
    ramp = np.repeat(np.linspace(0.1, 0.9, 128 * 16, dtype=np.float32).reshape(16, 128, 1), 3, axis=2)
    samples = framing.quantized(ramp, plan.depth, where="test")
    frame = framing.encoder_frame(samples, pix_fmt=plan.pix_fmt, matrix=plan.matrix, color_range=plan.range_tag)
    luma = np.frombuffer(bytes(frame.planes[0]), np.uint16).reshape(16, -1)[:, :128]
    assert len(np.unique(luma)) > 256
