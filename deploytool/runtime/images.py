"""Reading and writing images as float32 HWC arrays in [0, 1], RGB order.

Every failure a user can cause (missing, corrupt or unsupported file, wrong channel count for
the model, a format that cannot hold what is being written) is an `ImageError` with a one-line
message naming the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deploytool.errors import ImageError
from deploytool.runtime import png
from deploytool.runtime.fileio import atomic_path

# Formats cv2 writes with 16-bit samples intact; others silently fall back to 8 bits.
_SIXTEEN_BIT_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"})
# Formats that keep a fourth (alpha) channel when cv2 writes them.
_ALPHA_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".webp"})
_MAX_VALUE = {8: 255.0, 16: 65535.0}
_DTYPE_FOR_DEPTH = {8: np.uint8, 16: np.uint16}


@dataclass
class LoadedImage:
    """An image as read from disk: colour samples, optional alpha, and the source bit depth."""

    pixels: np.ndarray  # float32 HWC in [0, 1], C is 1 (gray) or 3 (RGB)
    alpha: np.ndarray | None  # float32 HW in [0, 1]
    bit_depth: int  # 8 or 16
    path: Path

    @property
    def mode(self) -> str:
        """One of "gray", "rgb", "gray+alpha", "rgba"."""
        base = "gray" if self.pixels.shape[2] == 1 else "rgb"
        if self.alpha is None:
            return base
        return "rgba" if base == "rgb" else "gray+alpha"


# OpenCV's utils::logging level SILENT (its enum's 0)
_CV2_LOG_SILENT = 0


def _cv2_log_level_functions() -> tuple[Callable[[], int], Callable[[int], None]]:
    """OpenCV's (getLogLevel, setLogLevel): `cv2.utils.logging` from 4.12 (and 5.x), the
    top-level `cv2.getLogLevel`/`cv2.setLogLevel` of 4.x before it."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:
        return logging.getLogLevel, logging.setLogLevel
    return cv2.getLogLevel, cv2.setLogLevel


@contextlib.contextmanager
def _quiet_cv2() -> Iterator[None]:
    # cv2 logs its own warnings to stderr for bad files; we report those failures ourselves
    # as one line, so its extra output would only clutter the CLI.
    get_level, set_level = _cv2_log_level_functions()
    level = get_level()
    set_level(_CV2_LOG_SILENT)
    try:
        yield
    finally:
        set_level(level)


def check_readable(path: str | os.PathLike) -> None:
    """Refuse a file that is not there or whose signature no image decoder knows, reading its first
    bytes only: a command checks every input so before writing its first output. A file that passes
    may still be corrupt further in (`read_image` says so)."""
    with _quiet_cv2():
        _check_readable(Path(path))


_UNREADABLE = "not a readable image (unknown format or corrupt file)"


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path}: permission denied")
    if not cv2.haveImageReader(str(path)):
        raise ImageError(f"{path}: {_UNREADABLE}")


def _imread(path: Path) -> np.ndarray:
    with _quiet_cv2():
        _check_readable(path)
        try:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            raw = None
    if raw is None:
        raise ImageError(f"{path}: {_UNREADABLE}")
    return raw


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read an 8- or 16-bit gray, gray+alpha, RGB or RGBA image."""
    return from_samples(read_samples(path), path)


def from_samples(raw: np.ndarray, path: str | os.PathLike) -> LoadedImage:
    """An image from integer samples (HW or HWC; gray, gray+alpha, RGB or RGBA order).

    `read_image` and the Triton server both build their float pixels here, so an image sent as
    samples is the same image a local run reads from the file.
    """
    path = Path(path)
    if raw.dtype == np.uint8:
        bit_depth = 8
    elif raw.dtype == np.uint16:
        bit_depth = 16
    else:
        raise ImageError(f"{path}: unsupported sample type {raw.dtype} ({raw.dtype.itemsize * 8}-bit); only 8-bit and 16-bit integer images are supported")
    if raw.size == 0:
        raise ImageError(f"{path}: image has zero size {raw.shape}")
    if raw.ndim == 2:
        raw = raw[:, :, None]
    channels = raw.shape[2] if raw.ndim == 3 else -1
    if channels not in (1, 2, 3, 4):
        raise ImageError(f"{path}: unsupported channel count {channels} (expected 1, 2, 3 or 4)")

    data = raw.astype(np.float32) / np.float32(_MAX_VALUE[bit_depth])
    alpha = None
    if channels in (2, 4):
        alpha = np.ascontiguousarray(data[:, :, -1])
        data = data[:, :, :-1]
    return LoadedImage(np.ascontiguousarray(data), alpha, bit_depth, path)


def read_samples(path: str | os.PathLike) -> np.ndarray:
    """The integer samples of an image file as stored (uint8, uint16, ...), HWC in RGB[A] order."""
    raw = _imread(Path(path))
    if raw.ndim == 2:
        return raw[:, :, None]
    if raw.ndim == 3 and raw.shape[2] in (3, 4):
        order = [2, 1, 0, 3][: raw.shape[2]]  # BGR[A] -> RGB[A]
        return np.ascontiguousarray(raw[:, :, order])
    return raw


def quantize(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float samples -> 8- or 16-bit integers: clipped to [0, 1], rounded to the nearest level."""
    scaled = np.clip(values.astype(np.float32, copy=False), 0.0, 1.0) * np.float32(_MAX_VALUE[bit_depth])
    return np.rint(scaled).astype(_DTYPE_FOR_DEPTH[bit_depth])


def _check_writable(path: Path, bit_depth: int, has_alpha: bool) -> None:
    suffix = path.suffix.lower()
    if bit_depth not in _MAX_VALUE:
        raise ImageError(f"{path}: bit depth must be 8 or 16, not {bit_depth}")
    if not suffix:
        raise ImageError(f"{path}: no file extension, so no image format to write")
    if not cv2.haveImageWriter(f"x{suffix}"):
        raise ImageError(f"{path}: OpenCV cannot write {suffix} images")
    if bit_depth == 16 and suffix not in _SIXTEEN_BIT_SUFFIXES:
        raise ImageError(f"{path}: {suffix} cannot hold 16-bit samples; use one of {', '.join(sorted(_SIXTEEN_BIT_SUFFIXES))} or write 8-bit")
    if has_alpha and suffix not in _ALPHA_SUFFIXES:
        raise ImageError(f"{path}: {suffix} cannot hold an alpha channel; use one of {', '.join(sorted(_ALPHA_SUFFIXES))}")


def write_image(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
) -> None:
    """Write float pixels (HWC or HW, 1 or 3 channels, RGB) in [0, 1] atomically.

    Values are clipped to [0, 1] and rounded to the nearest 8- or 16-bit level.
    """
    path = Path(path)
    _check_writable(path, bit_depth, alpha is not None)

    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"pixels must be a non-empty HW or HWC array with 1 or 3 channels, got {pixels.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[:, :, 0]
        if alpha.shape != pixels.shape[:2]:
            raise ValueError(f"alpha shape {alpha.shape} does not match pixels {pixels.shape[:2]}")
    # NaN/inf would become arbitrary integers; an overflowing (e.g. FP16) model is the usual cause.
    bad = int(np.count_nonzero(~np.isfinite(pixels)))
    if alpha is not None:
        bad += int(np.count_nonzero(~np.isfinite(alpha)))
    if bad:
        raise ImageError(f"{path}: refusing to write {bad} non-finite (NaN/inf) sample(s)")

    write_samples(path, quantize(pixels, bit_depth), alpha=None if alpha is None else quantize(alpha, bit_depth))


def write_samples(path: str | os.PathLike, out: np.ndarray, *, alpha: np.ndarray | None = None) -> None:
    """Write integer samples (HWC, 1 or 3 channels, RGB; HW alpha) atomically, as `write_image` does."""
    path = Path(path)
    suffix = path.suffix.lower()
    if out.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"samples must be uint8 or uint16, got {out.dtype}")
    bit_depth = 16 if out.dtype == np.uint16 else 8
    _check_writable(path, bit_depth, alpha is not None)
    if alpha is not None:
        if out.shape[2] == 1:
            # cv2 writes no 2-channel images: gray+alpha is stored as RGBA with equal colour channels.
            out = np.repeat(out, 3, axis=2)
        out = np.concatenate([out, alpha[:, :, None]], axis=2)

    if suffix == ".png":
        _write_png(path, out)
        return
    if out.shape[2] >= 3:
        out = np.concatenate([out[:, :, 2::-1], out[:, :, 3:]], axis=2)  # RGB(A) -> BGR(A)
    if out.shape[2] == 1:
        out = out[:, :, 0]
    out = np.ascontiguousarray(out)

    with atomic_path(path) as tmp:
        with _quiet_cv2():
            try:
                ok = cv2.imwrite(str(tmp), out)
                reason = ""
            except cv2.error as exc:
                ok = False
                reason = ": " + " ".join(str(exc).split())
        if not ok:
            channels = out.shape[2] if out.ndim == 3 else 1
            raise ImageError(f"{path}: OpenCV could not write a {channels}-channel {bit_depth}-bit image as {suffix}{reason}")


def _write_png(path: Path, samples: np.ndarray) -> None:
    # PNG goes through deploytool.runtime.png, not cv2: the same bytes as the C++ runtime writes.
    data = png.encode(samples)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise ImageError(f"{path}: cannot write the PNG file: {exc.strerror or exc}") from None


def fit_channels(pixels: np.ndarray, channels: int, *, model_id: str, path: str | os.PathLike) -> np.ndarray:
    """Return HWC `pixels` with exactly `channels` channels for the model `model_id`.

    Gray images are replicated for RGB models; RGB images are refused by gray models rather
    than converted silently, since the right conversion is the user's call.
    """
    have = pixels.shape[2]
    if have == channels:
        return pixels
    if channels == 3 and have == 1:
        return np.repeat(pixels, 3, axis=2)
    if channels == 1 and have == 3:
        raise ImageError(f"{model_id} takes 1-channel (grayscale) images; {path} is RGB: convert it to grayscale first")
    raise ImageError(f"{model_id} takes {channels}-channel images; {path} has {have} channels")


def restore_channels(pixels: np.ndarray, like: LoadedImage) -> np.ndarray:
    """Return HWC `pixels` with the channel count of the image `like` (3 -> 1 by averaging)."""
    want = like.pixels.shape[2]
    have = pixels.shape[2]
    if have == want:
        return pixels
    if want == 1 and have == 3:
        return pixels.mean(axis=2, keepdims=True, dtype=np.float32)
    if want == 3 and have == 1:
        return np.repeat(pixels, 3, axis=2)
    raise ValueError(f"cannot turn {have}-channel pixels into {want} channels")


# OpenCV's bicubic kernel (a = -0.75), the one cv2.resize(INTER_CUBIC) uses
_CUBIC_A = -0.75


def cubic_weights(scale: int) -> list[tuple[float, float, float, float]]:
    """The four source weights of each of the `scale` output phases of an integer upscale.

    Output pixel x samples the source at (x + 0.5) / scale - 0.5 (pixel centres aligned); the
    weights are computed in double precision in this exact order (the C++ runtime mirrors it),
    then rounded to float32.
    """
    weights = []
    a = _CUBIC_A
    for phase in range(scale):
        position = (phase + 0.5) / scale - 0.5
        t = position - np.floor(position)
        w0 = ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a
        w1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
        w2 = ((a + 2.0) * (1.0 - t) - (a + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0
        w3 = 1.0 - w0 - w1 - w2
        weights.append((float(w0), float(w1), float(w2), float(w3)))
    return weights


def _cubic_axis(values: np.ndarray, scale: int, axis: int) -> np.ndarray:
    """Upscale float32 `values` along `axis` by `scale`, replicating the border samples."""
    size = values.shape[axis]
    out_index = np.arange(size * scale)
    # floor((x + 0.5) / scale - 0.5) for every output x, in integers
    first = np.floor_divide(2 * out_index + 1 - scale, 2 * scale)
    table = np.asarray(cubic_weights(scale), dtype=np.float32)[out_index % scale]
    total = None
    for k in range(4):
        source = np.clip(first - 1 + k, 0, size - 1)
        shape = [1, 1]
        shape[axis] = -1
        term = np.take(values, source, axis=axis) * table[:, k].reshape(shape)
        total = term if total is None else total + term
    return total


def resize_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Upscale an HW alpha channel by an integer `scale` (bicubic), clipped to [0, 1].

    OpenCV's bicubic (kernel, centre alignment, replicated border) with the arithmetic spelled
    out: rows first, then columns, each a float32 sum of four weighted samples in order. cv2.resize
    computes the same up to float rounding in its SIMD paths; this is reproducible exactly by the
    C++ runtime, so both write the same alpha bytes.
    """
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    alpha = np.asarray(alpha, dtype=np.float32)
    if scale == 1:
        return alpha.copy()
    resized = _cubic_axis(_cubic_axis(alpha, int(scale), axis=1), int(scale), axis=0)
    return np.clip(resized, 0.0, 1.0, out=resized)
