"""Decoded frames to float RGB with the stream's own colour matrix and range, and restored RGB
samples back to frames for the encoder.

RGB sources keep their integer samples and become floats exactly as `deploytool run` reads an
image of that depth (8- and 16-bit: `images.from_samples`), so a lossless RGB frame and the same
frame saved as a PNG go into the model as the same numbers. YUV sources go through swscale
straight to 32-bit float RGB, never through 8 bits, so 10- and 12-bit sources keep their levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploytool.errors import VideoError
from deploytool.runtime import images
from deploytool.runtime.video.probe import Colour, VideoInfo

# AVColorSpace -> swscale's name for the same YUV matrix. Untagged (2) and unknown matrices
# decode as BT.601, FFmpeg's convention for untagged video (swscale's SWS_CS_DEFAULT).
_SWS_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "SMPTE170M", 7: "SMPTE240M", 9: "BT2020"}
DEFAULT_MATRIX = "ITU601"
MATRIX_NAMES = {1: "BT.709", 4: "FCC", 5: "BT.601", 6: "BT.601", 7: "SMPTE 240M", 9: "BT.2020"}
RANGE_LIMITED, RANGE_FULL = 1, 2
# AVColorSpace for RGB: lossless output stores RGB, no matrix
MATRIX_RGB = 0
UNSPECIFIED = 2


@dataclass
class Frame:
    """One decoded frame: float RGB for the model, and its integer samples where the source has them."""

    index: int
    pts: int | None
    pixels: np.ndarray  # float32 HWC RGB in [0, 1]
    samples: np.ndarray | None  # uint8/uint16 HWC RGB exactly as stored (RGB sources of 8 or 16 bits)


def working_depth(info: VideoInfo) -> int:
    """The sample depth restored frames are rounded to: 8 for 8-bit sources, else 16 (as `run`
    writes images of those depths)."""
    return 8 if info.bit_depth <= 8 else 16


def source_range(info: VideoInfo) -> int:
    """The stream's range; untagged YUV is limited, untagged RGB (and yuvj formats) full."""
    if info.colour.range in (RANGE_LIMITED, RANGE_FULL):
        return info.colour.range
    return RANGE_FULL if info.rgb or info.pix_fmt.startswith("yuvj") else RANGE_LIMITED


def sws_matrix(colour: Colour) -> str:
    return _SWS_MATRIX.get(colour.matrix, DEFAULT_MATRIX)


def _range_name(value: int) -> str:
    return "JPEG" if value == RANGE_FULL else "MPEG"


def to_rgb(frame, info: VideoInfo, index: int) -> Frame:
    """A decoded `av.VideoFrame` as a `Frame`."""
    if frame.width != info.width or frame.height != info.height:
        raise VideoError(
            f"{info.path}: frame {index} is {frame.width}x{frame.height}, the stream began at {info.width}x{info.height}; size changes are not supported"
        )
    if info.rgb:
        depth = info.bit_depth
        if depth <= 8:
            samples = frame.reformat(format="rgb24").to_ndarray()
        elif depth == 16:
            samples = frame.reformat(format="gbrp16le").to_ndarray()
        else:
            native = frame.reformat(format=f"gbrp{depth}le").to_ndarray()
            pixels = native.astype(np.float32) / np.float32((1 << depth) - 1)
            return Frame(index, frame.pts, pixels, None)
        return Frame(index, frame.pts, images.from_samples(samples, info.path).pixels, samples)
    converted = frame.reformat(
        format="gbrpf32le",
        src_colorspace=sws_matrix(Colour(frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range)),
        src_color_range=_range_name(frame.color_range if frame.color_range in (RANGE_LIMITED, RANGE_FULL) else source_range(info)),
        interpolation="BICUBIC",
    )
    pixels = np.clip(converted.to_ndarray(), 0.0, 1.0)
    return Frame(index, frame.pts, np.ascontiguousarray(pixels, dtype=np.float32), None)


def samples_for_model(frame: Frame, depth: int) -> np.ndarray:
    """Integer samples of a frame at `depth` bits, for a model that takes samples (a Triton server)."""
    if frame.samples is not None and frame.samples.dtype == (np.uint8 if depth == 8 else np.uint16):
        return frame.samples
    return images.quantize(frame.pixels, depth)


def quantized(restored: np.ndarray, depth: int, *, where: str) -> np.ndarray:
    """Restored float RGB rounded to `depth`-bit samples, as `run` writes an image."""
    bad = int(np.count_nonzero(~np.isfinite(restored)))
    if bad:
        raise VideoError(f"{where}: refusing to write {bad} non-finite (NaN/inf) sample(s)")
    return images.quantize(restored, depth)


def encoder_frame(samples: np.ndarray, *, pix_fmt: str, matrix: str | None, color_range: int):
    """Restored integer RGB samples as an `av.VideoFrame` in the encoder's pixel format."""
    import av

    source = av.VideoFrame.from_ndarray(np.ascontiguousarray(samples), format="rgb24" if samples.dtype == np.uint8 else "gbrp16le")
    if matrix is None:  # RGB output
        return source if source.format.name == pix_fmt else source.reformat(format=pix_fmt)
    return source.reformat(format=pix_fmt, dst_colorspace=matrix, dst_color_range=_range_name(color_range), interpolation="BICUBIC")
