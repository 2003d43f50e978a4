"""What is written: the encoder and its settings, and which of the source's other streams the
output container can hold (checked before any work, so a refusal writes nothing)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from deploytool.errors import VideoError
from deploytool.runtime.video import frames as framing
from deploytool.runtime.video.probe import ATTACHMENT, StreamInfo, VideoInfo

LOSSLESS_CODEC = "ffv1"
LOSSLESS_CONTAINER = "matroska"
# Containers suggested, in order, when the chosen one cannot hold a stream
SUGGESTED = ((".mkv", "matroska"), (".mov", "mov"), (".mp4", "mp4"), (".nut", "nut"))
DEFAULT_CRF = 18
# the CRF each encoder takes (FFmpeg's option ranges), and the presets of those that take one
_CRF_RANGES = {"libx264": (0, 51), "libx265": (0, 51), "libsvtav1": (1, 63), "libvpx-vp9": (0, 63), "libaom-av1": (0, 63)}
_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
_PRESETS = {"libx264": _X26X_PRESETS, "libx265": _X26X_PRESETS, "libsvtav1": tuple(str(level) for level in range(-1, 14))}
_QUIET = {"libx265": {"x265-params": "log-level=error"}, "libsvtav1": {"svtav1-params": "log-level=1"}}


@dataclass(frozen=True)
class EncodeOptions:
    """What the user chose; None: the default for the source."""

    codec: str | None = None
    crf: int | None = None
    pix_fmt: str | None = None
    preset: str | None = None
    lossless: bool = False
    audio: bool = True

    def arguments(self) -> dict:
        return {"codec": self.codec, "crf": self.crf, "pix_fmt": self.pix_fmt, "preset": self.preset, "lossless": self.lossless, "audio": self.audio}


@dataclass(frozen=True)
class OutputPlan:
    format: str  # FFmpeg muxer name
    codec: str
    pix_fmt: str
    options: dict[str, str]
    depth: int  # bits of the restored RGB samples handed to the encoder
    matrix: str | None  # swscale matrix for YUV output; None: RGB output
    matrix_tag: int
    range_tag: int
    width: int
    height: int
    copied: tuple[StreamInfo, ...] = field(default=())

    def describe(self) -> dict:
        return {"container": self.format, "codec": self.codec, "pix_fmt": self.pix_fmt, **({"options": self.options} if self.options else {})}


def muxer_for(destination: Path, source: Path, source_container: str) -> str:
    """The muxer the output's name asks for; the source's own container where the name gives no
    extension or keeps the source's (a video in a folder keeps its name, whatever it is). A name
    no muxer writes (`clip_x4.png`) is refused."""
    import av

    names = {"mkv": "matroska", "mka": "matroska", "m4v": "mp4", "ts": "mpegts", "m2ts": "mpegts"}
    suffix = destination.suffix.lower().lstrip(".")
    candidates = [names.get(suffix, suffix)] if suffix else []
    if not suffix or destination.suffix.lower() == source.suffix.lower():
        candidates.append(source_container.split(",")[0])
    for name in candidates:
        with contextlib.suppress(av.FFmpegError, ValueError):
            return av.format.ContainerFormat(name, "w").name
    raise VideoError(f"{destination}: no video container is known for the name {destination.suffix or '(no extension)'}; use e.g. .mkv or .mp4")


def supported_codecs(muxer: str) -> set[str]:
    import av

    with av.open(io.BytesIO(), "w", format=muxer) as probe:
        return set(probe.supported_codecs)


def plan_output(info: VideoInfo, options: EncodeOptions, destination: Path, *, scale: int) -> OutputPlan:
    """The encoder, its settings and the streams copied, or one line saying what cannot be done."""
    muxer = muxer_for(destination, info.path, info.container)
    deep = info.bit_depth > 8
    codec, pix_fmt = _codec_and_pix_fmt(options, muxer, destination, deep=deep)
    target = _checked_pixel_format(codec, pix_fmt)
    width, height = info.width * scale, info.height * scale
    if _subsampled_odd(target, width, height):
        raise VideoError(f"{codec} {pix_fmt} needs an even size, and the output is {width}x{height}; use e.g. --pix-fmt yuv444p")
    settings = _encoder_settings(codec, options)
    matrix, matrix_tag, range_tag = _colour_tags(target, info)
    depth = 8 if max(c.bits for c in target.components) <= 8 and not deep else 16
    copied = tuple(s for s in info.others if options.audio or s.type != "audio")
    check_container(muxer, destination, codec, copied)
    return OutputPlan(muxer, codec, pix_fmt, settings, depth, matrix, matrix_tag, range_tag, width, height, copied)


def _codec_and_pix_fmt(options: EncodeOptions, muxer: str, destination: Path, *, deep: bool) -> tuple[str, str]:
    if options.lossless:
        if options.codec not in (None, LOSSLESS_CODEC) or options.crf is not None or options.preset is not None:
            raise VideoError("--lossless writes FFV1: it takes no --codec, --crf or --preset")
        if muxer != LOSSLESS_CONTAINER:
            raise VideoError(f"{destination}: --lossless writes FFV1 in Matroska; name the output .mkv")
        return LOSSLESS_CODEC, options.pix_fmt or ("gbrp16le" if deep else "bgr0")
    return options.codec or ("libx265" if deep else "libx264"), options.pix_fmt or ("yuv420p10le" if deep else "yuv420p")


def _checked_pixel_format(codec: str, pix_fmt: str):
    """The av.VideoFormat of `pix_fmt`, once `codec` is known to be a video encoder that takes it."""
    import av

    try:
        encoder = av.codec.Codec(codec, "w")
    except (av.FFmpegError, ValueError):
        raise VideoError(f"--codec {codec}: this FFmpeg has no such encoder") from None
    if encoder.type != "video":
        raise VideoError(f"--codec {codec} is not a video encoder")
    formats = [f.name for f in encoder.video_formats or ()]
    if formats and pix_fmt not in formats:
        raise VideoError(f"--pix-fmt {pix_fmt}: {codec} takes {', '.join(formats[:12])}{' ...' if len(formats) > 12 else ''}")
    try:
        return av.VideoFormat(pix_fmt)
    except (av.FFmpegError, ValueError):
        raise VideoError(f"--pix-fmt {pix_fmt}: not a pixel format this FFmpeg knows") from None


def _encoder_settings(codec: str, options: EncodeOptions) -> dict[str, str]:
    settings = dict(_QUIET.get(codec, {}))
    if options.crf is not None and codec not in _CRF_RANGES:
        raise VideoError(f"--crf: {codec} takes no CRF (those that do: {', '.join(sorted(_CRF_RANGES))})")
    if codec in _CRF_RANGES:
        low, high = _CRF_RANGES[codec]
        if options.crf is not None and not low <= options.crf <= high:
            raise VideoError(f"--crf {options.crf}: {codec} takes {low} to {high}")
        settings["crf"] = str(DEFAULT_CRF if options.crf is None else options.crf)
        if codec == "libvpx-vp9":
            settings["b"] = "0"
    if options.preset is not None:
        if codec not in _PRESETS:
            raise VideoError(f"--preset: {codec} takes no preset")
        if options.preset not in _PRESETS[codec]:
            raise VideoError(f"--preset {options.preset}: {codec} takes {', '.join(_PRESETS[codec])}")
        settings["preset"] = options.preset
    return settings


def _colour_tags(target, info: VideoInfo) -> tuple[str | None, int, int]:
    """The colour matrix to convert with (None: RGB out) and the matrix and range to tag."""
    if target.is_rgb:
        return None, framing.MATRIX_RGB, framing.RANGE_FULL
    if info.rgb:
        return "ITU709", 1, framing.RANGE_LIMITED
    return framing.sws_matrix(info.colour), info.colour.matrix, framing.source_range(info)


def _subsampled_odd(target, width: int, height: int) -> bool:
    # chroma at half resolution needs even luma sizes (x264/x265 refuse odd ones)
    return bool((target.chroma_width(width) != width and width % 2) or (target.chroma_height(height) != height and height % 2))


def _holds(muxer: str, codecs: set[str], stream: StreamInfo) -> bool:
    if stream.codec == ATTACHMENT:
        return muxer == LOSSLESS_CONTAINER  # of the containers FFmpeg writes, Matroska alone keeps attachments
    return stream.codec in codecs


def check_container(muxer: str, destination: Path, codec: str, copied: tuple[StreamInfo, ...]) -> None:
    held = supported_codecs(muxer)
    refused = [s for s in copied if not _holds(muxer, held, s)]
    video_refused = codec not in held
    if not refused and not video_refused:
        return
    names = ([f"the {codec} video"] if video_refused else []) + [f"stream {s.index} ({s.type}, {s.codec})" for s in refused]

    def holds_all(name: str) -> bool:
        codecs = supported_codecs(name)
        return codec in codecs and all(_holds(name, codecs, s) for s in copied)

    suggestion = next((suffix for suffix, name in SUGGESTED if name != muxer and holds_all(name)), None)
    advice = f"use {suggestion}" if suggestion else "no container tried holds them all"
    no_audio = " or --no-audio" if refused and all(s.type == "audio" for s in refused) else ""
    raise VideoError(f"{destination}: {muxer} cannot hold {', '.join(names)}; {advice}{no_audio}; nothing was written")
