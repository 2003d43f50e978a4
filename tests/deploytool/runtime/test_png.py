"""The deterministic PNG encoder shared with the C++ runtime, and the bicubic alpha resize."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploytool.errors import DeployError
from deploytool.runtime import png
from deploytool.runtime.images import resize_alpha, write_image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_encode_decodes_to_the_same_samples(tmp_path: Path, dtype: type, channels: int) -> None:
    top = np.iinfo(dtype).max
    samples = np.random.default_rng(channels).integers(0, top, size=(7, 11, channels), endpoint=True).astype(dtype)
    path = tmp_path / "x.png"
    path.write_bytes(png.encode(samples))
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == dtype
    if channels == 1:
        np.testing.assert_array_equal(raw, samples[:, :, 0])
    elif channels == 2:
        # cv2 reads gray+alpha as BGRA with equal colour channels
        np.testing.assert_array_equal(raw[:, :, 0], samples[:, :, 0])
        np.testing.assert_array_equal(raw[:, :, 3], samples[:, :, 1])
    else:
        np.testing.assert_array_equal(raw[:, :, 2::-1], samples[:, :, :3])
        if channels == 4:
            np.testing.assert_array_equal(raw[:, :, 3], samples[:, :, 3])


def test_encode_is_deterministic_and_refuses_other_types() -> None:
    samples = np.arange(60, dtype=np.uint8).reshape(5, 4, 3)
    assert png.encode(samples) == png.encode(samples.copy())
    with pytest.raises(ValueError, match="uint8 or uint16"):
        png.encode(samples.astype(np.float32))
    with pytest.raises(ValueError, match="1-4 channels"):
        png.encode(np.zeros((2, 2, 5), np.uint8))


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_resize_alpha_is_opencv_bicubic(scale: int) -> None:
    alpha = np.random.default_rng(scale).random((13, 9), dtype=np.float32)
    ours = resize_alpha(alpha, scale)
    theirs = np.clip(cv2.resize(alpha, (9 * scale, 13 * scale), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=0)


def test_write_image_png_into_an_unwritable_place_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "out.png"
    with pytest.raises(DeployError) as error:  # as every output's writer (fileio.atomic_path) refuses it
        write_image(target, np.zeros((3, 4, 3), np.float32))
    assert str(error.value).startswith(f"cannot create the output folder {blocker}: ") and "\n" not in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_write_image_png_bytes_are_the_encoders(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).random((9, 7, 3), dtype=np.float32)
    write_image(tmp_path / "x.png", pixels, alpha=pixels[:, :, 0], bit_depth=16)
    samples = np.rint(np.clip(np.concatenate([pixels, pixels[:, :, :1]], axis=2), 0, 1) * np.float32(65535)).astype(np.uint16)
    assert (tmp_path / "x.png").read_bytes() == png.encode(samples)


def test_the_compressed_stream_is_cut_into_idat_chunks(tmp_path: Path) -> None:
    samples = np.random.default_rng(5).integers(0, 255, size=(19, 23, 3), endpoint=True).astype(np.uint8)
    whole, cut = png.encode(samples), png.encode(samples, max_idat_bytes=50)

    def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
        found, at = [], 8
        while at < len(data):
            (length,) = struct.unpack(">I", data[at : at + 4])
            found.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
            at += 12 + length
        return found

    (_, stream), pieces = chunks(whole)[1], chunks(cut)[1:-1]
    assert [kind for kind, _ in chunks(whole)] == [b"IHDR", b"IDAT", b"IEND"]
    assert len(pieces) == -(-len(stream) // 50) >= 3 and all(kind == b"IDAT" for kind, _ in pieces)
    assert [len(data) for _, data in pieces[:-1]] == [50] * (len(pieces) - 1) and b"".join(data for _, data in pieces) == stream
    (tmp_path / "cut.png").write_bytes(cut)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "cut.png"), cv2.IMREAD_UNCHANGED)[..., ::-1], samples)
    with pytest.raises(ValueError, match="max_idat_bytes"):
        png.encode(samples, max_idat_bytes=0)
    with pytest.raises(ValueError, match="max_idat_bytes"):
        png.encode(samples, max_idat_bytes=2**31)
