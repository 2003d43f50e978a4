"""Tests for deploytool.runtime.images: reading, writing, and fitting images to models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from deploytool.errors import ImageError
from deploytool.runtime.images import (
    LoadedImage,
    fit_channels,
    read_image,
    resize_alpha,
    restore_channels,
    write_image,
)


def _levels(shape: tuple[int, ...], bit_depth: int, seed: int = 0) -> np.ndarray:
    """Random float pixels that sit exactly on the integer levels of `bit_depth`."""
    top = 255 if bit_depth == 8 else 65535
    rng = np.random.default_rng(seed)
    return (rng.integers(0, top + 1, size=shape) / top).astype(np.float32)


def _assert_one_line_naming(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("mode", ["gray", "rgb", "rgba"])
def test_png_round_trip(tmp_path: Path, bit_depth: int, mode: str) -> None:
    channels = 1 if mode == "gray" else 3
    pixels = _levels((13, 17, channels), bit_depth)
    alpha = _levels((13, 17), bit_depth, seed=1) if mode == "rgba" else None
    path = tmp_path / f"img_{mode}_{bit_depth}.png"

    write_image(path, pixels, alpha=alpha, bit_depth=bit_depth)
    loaded = read_image(path)

    assert loaded.mode == mode
    assert loaded.bit_depth == bit_depth
    assert loaded.path == path
    assert loaded.pixels.dtype == np.float32 and loaded.pixels.shape == pixels.shape
    top = 255 if bit_depth == 8 else 65535
    # Integer levels must survive exactly, in particular all 16 bits.
    np.testing.assert_array_equal(np.rint(loaded.pixels * top), np.rint(pixels * top))
    if alpha is None:
        assert loaded.alpha is None
    else:
        assert loaded.alpha is not None and loaded.alpha.dtype == np.float32
        np.testing.assert_array_equal(np.rint(loaded.alpha * top), np.rint(alpha * top))


def test_sixteen_bit_values_exact_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.array([[0, 1, 257, 32768, 65534, 65535]], dtype=np.uint16)
    write_image(path, (values / 65535.0).astype(np.float32), bit_depth=16)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, values)


def test_gray_alpha_mode(tmp_path: Path) -> None:
    path = tmp_path / "ga.png"
    raw = np.zeros((4, 5, 2), dtype=np.uint8)
    raw[..., 0], raw[..., 1] = 100, 200
    # cv2 cannot write 2-channel images, but LoadedImage must describe one (cv2 may read one from TIFF).
    image = LoadedImage(raw[..., :1].astype(np.float32) / 255, raw[..., 1].astype(np.float32) / 255, 8, path)
    assert image.mode == "gray+alpha"
    write_image(path, image.pixels, alpha=image.alpha)
    back = read_image(path)
    np.testing.assert_allclose(back.pixels, 100 / 255, atol=1e-7)
    np.testing.assert_allclose(back.alpha, 200 / 255, atol=1e-7)


def test_rgb_order(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    red = np.zeros((3, 4, 3), dtype=np.float32)
    red[..., 0] = 1.0
    write_image(path, red)

    loaded = read_image(path)
    assert np.all(loaded.pixels[..., 0] == 1.0)
    assert np.all(loaded.pixels[..., 1:] == 0.0)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert np.all(raw[..., 2] == 255) and np.all(raw[..., :2] == 0)  # BGR on disk


def test_rgba_order(tmp_path: Path) -> None:
    path = tmp_path / "blue_alpha.png"
    blue = np.zeros((2, 2, 3), dtype=np.float32)
    blue[..., 2] = 1.0
    write_image(path, blue, alpha=np.full((2, 2), 0.5, dtype=np.float32))
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (2, 2, 4)
    assert np.all(raw[..., 0] == 255) and np.all(raw[..., 1:3] == 0) and np.all(raw[..., 3] == 128)
    assert np.all(read_image(path).pixels[..., 2] == 1.0)


def test_reads_jpeg_and_bmp(tmp_path: Path) -> None:
    gray = np.full((8, 8), 128, dtype=np.uint8)
    for name in ("a.jpg", "a.bmp"):
        assert cv2.imwrite(str(tmp_path / name), gray)
        loaded = read_image(tmp_path / name)
        assert loaded.bit_depth == 8 and loaded.pixels.shape[:2] == (8, 8)
        np.testing.assert_allclose(loaded.pixels, 128 / 255, atol=2 / 255)


def test_write_clips_and_rounds(tmp_path: Path) -> None:
    path = tmp_path / "clip.png"
    write_image(path, np.array([[-0.5, 0.0, 0.5, 1.0, 7.0, 0.2 / 255, 0.6 / 255]], dtype=np.float32))
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(raw, [[0, 0, 128, 255, 255, 0, 1]])


def test_write_refuses_nan(tmp_path: Path) -> None:
    path = tmp_path / "nan.png"
    with pytest.raises(ImageError) as error:
        write_image(path, np.full((2, 2, 3), np.nan, dtype=np.float32))
    _assert_one_line_naming(error, path)
    assert not path.exists()


@pytest.mark.parametrize(
    "name, content",
    [
        ("corrupt.png", np.random.default_rng(3).bytes(512)),
        ("truncated.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),
        ("empty.png", b""),
        ("notes.png", b"this is not an image\nbut some text\n"),
        ("notes.txt", b"plain text"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as error:
        read_image(path)
    _assert_one_line_naming(error, path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="no such file") as error:
        read_image(path)
    _assert_one_line_naming(error, path)


def test_a_file_this_user_cannot_read_is_said_so(tmp_path: Path, monkeypatch) -> None:
    """Not "unknown format": the decoder cannot open it (os.access stands in for the permission
    bits, which the root user these tests may run as does not heed)."""
    import os

    from deploytool.runtime.images import check_readable

    path = tmp_path / "locked.png"
    assert cv2.imwrite(str(path), np.zeros((4, 5, 3), np.uint8))
    check_readable(path)
    monkeypatch.setattr(os, "access", lambda name, mode: False)
    with pytest.raises(ImageError, match="permission denied") as error:
        check_readable(path)
    _assert_one_line_naming(error, path)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as error:
        read_image(tmp_path)
    _assert_one_line_naming(error, tmp_path)


def test_float_tiff_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tiff"
    assert cv2.imwrite(str(path), np.full((4, 4, 3), 0.5, dtype=np.float32))
    with pytest.raises(ImageError, match="float32") as error:
        read_image(path)
    _assert_one_line_naming(error, path)


def test_sixteen_bit_jpeg_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jpg"
    with pytest.raises(ImageError, match="16-bit") as error:
        write_image(path, np.zeros((4, 4, 3), dtype=np.float32), bit_depth=16)
    _assert_one_line_naming(error, path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_extension_refused(tmp_path: Path) -> None:
    for name in ("out.xyz", "out"):
        path = tmp_path / name
        with pytest.raises(ImageError) as error:
            write_image(path, np.zeros((4, 4, 3), dtype=np.float32))
        _assert_one_line_naming(error, path)
    assert list(tmp_path.iterdir()) == []


def test_alpha_to_jpeg_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="alpha"):
        write_image(tmp_path / "a.jpg", np.zeros((4, 4, 3), np.float32), alpha=np.ones((4, 4), np.float32))


def test_atomic_write_leaves_no_part_files(tmp_path: Path) -> None:
    for name, depth in (("a.png", 8), ("b.png", 16), ("c.jpg", 8), ("d.tiff", 16)):
        write_image(tmp_path / name, _levels((5, 6, 3), 8), bit_depth=depth)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.png", "b.png", "c.jpg", "d.tiff"]


def test_failed_write_keeps_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.ppm"
    write_image(path, _levels((5, 6, 3), 8))
    before = path.read_bytes()
    # cv2 cannot write a 1-channel .ppm: imwrite fails after the temp file is created.
    with pytest.raises(ImageError) as error:
        write_image(path, np.zeros((5, 6, 1), dtype=np.float32))
    _assert_one_line_naming(error, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.ppm"]


def test_failed_write_via_exception_keeps_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keep.tiff"
    write_image(path, _levels((5, 6, 3), 8))
    before = path.read_bytes()

    def broken_imwrite(name: str, data: np.ndarray) -> bool:
        Path(name).write_bytes(b"half")
        raise cv2.error("disk on fire")

    monkeypatch.setattr(cv2, "imwrite", broken_imwrite)
    with pytest.raises(ImageError, match="disk on fire"):
        write_image(path, np.zeros((5, 6, 3), dtype=np.float32))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tiff"]


def test_fit_channels_gray_to_rgb_model() -> None:
    gray = _levels((4, 5, 1), 8)
    fitted = fit_channels(gray, 3, model_id="swinir-x4", path="in.png")
    assert fitted.shape == (4, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(fitted[..., channel], gray[..., 0])
    rgb = _levels((4, 5, 3), 8)
    assert fit_channels(rgb, 3, model_id="swinir-x4", path="in.png") is rgb


def test_fit_channels_rgb_to_gray_model_refused() -> None:
    with pytest.raises(ImageError) as error:
        fit_channels(_levels((4, 5, 3), 8), 1, model_id="dncnn-gray", path=Path("photo.png"))
    assert str(error.value) == ("dncnn-gray takes 1-channel (grayscale) images; photo.png is RGB: convert it to grayscale first")


def test_restore_channels(tmp_path: Path) -> None:
    gray_like = LoadedImage(np.zeros((2, 2, 1), np.float32), None, 8, tmp_path / "g.png")
    rgb_like = LoadedImage(np.zeros((2, 2, 3), np.float32), None, 8, tmp_path / "c.png")
    out = np.stack([np.full((2, 2), v, np.float32) for v in (0.1, 0.2, 0.6)], axis=2)
    restored = restore_channels(out, gray_like)
    assert restored.shape == (2, 2, 1) and restored.dtype == np.float32
    np.testing.assert_allclose(restored, 0.3, atol=1e-6)
    assert restore_channels(out, rgb_like) is out


def test_resize_alpha() -> None:
    alpha = np.zeros((4, 6), dtype=np.float32)
    alpha[:, 3:] = 1.0
    resized = resize_alpha(alpha, 4)
    assert resized.shape == (16, 24) and resized.dtype == np.float32
    assert resized.min() >= 0.0 and resized.max() <= 1.0  # bicubic overshoot clipped
    assert np.all(resized[:, :4] == 0.0) and np.all(resized[:, -4:] == 1.0)
    same = resize_alpha(alpha, 1)
    np.testing.assert_array_equal(same, alpha)
    assert same is not alpha


def test_reading_works_with_the_log_level_api_of_opencv_before_4_12(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV 4.8-4.11 (what pip pairs with numpy 1.x) has cv2.getLogLevel/setLogLevel and no cv2.utils.logging."""
    calls = []
    monkeypatch.delattr(cv2.utils, "logging", raising=False)
    monkeypatch.setattr(cv2, "getLogLevel", lambda: 3, raising=False)
    monkeypatch.setattr(cv2, "setLogLevel", calls.append, raising=False)
    assert cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 5, 3), np.uint8))
    assert read_image(tmp_path / "a.png").pixels.shape == (4, 5, 3)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(tmp_path / "bad.png")
    assert calls == [0, 3, 0, 3]  # silent while reading, then as it was


def test_reading_works_with_the_serve_environment_s_real_opencv(tmp_path: Path) -> None:
    """.venv-serve holds numpy 1.x and OpenCV < 4.12, the pair the Triton models run with."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    python = root / ".venv-serve" / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no {python} (scripts/setup.sh makes it)")
    assert cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 5, 3), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    script = (
        "import sys, cv2; from deploytool.runtime.images import read_image; from deploytool.errors import ImageError\n"
        "print(cv2.__version__, read_image(sys.argv[1]).pixels.shape)\n"
        "try:\n    read_image(sys.argv[2])\nexcept ImageError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [str(python), "-c", script, str(tmp_path / "a.png"), str(tmp_path / "bad.png")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "(4, 5, 3)" in done.stdout and "not a readable image" in done.stdout, done.stdout
