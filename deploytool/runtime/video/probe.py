"""What a file holds: a video (its stream, frames, keyframes, colour and geometry), or not.

A file is a video because FFmpeg's demuxers find a video stream in it that is not a single still
image, whatever its name; everything a user can get wrong here is one `VideoError` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from deploytool.errors import VideoError

# FFmpeg's still-image demuxers: a PNG or JPEG opens as a one-frame "video" through them.
_IMAGE_DEMUXERS = ("image2",)
_IMAGE_DEMUXER_SUFFIX = "_pipe"
COPIED_TYPES = ("audio", "subtitle", "attachment", "data")
ATTACHMENT = "attachment"


@dataclass(frozen=True)
class Colour:
    """AVColor* tags as FFmpeg numbers them (2 / 0: unspecified)."""

    primaries: int
    transfer: int
    matrix: int
    range: int


@dataclass(frozen=True)
class StreamInfo:
    index: int
    type: str
    codec: str
    language: str | None


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    index: int  # of the video stream restored, in the container
    container: str
    codec: str
    width: int
    height: int
    pix_fmt: str
    bit_depth: int  # bits per sample of the decoded frames
    rgb: bool  # frames hold RGB (no YUV matrix applies)
    time_base: Fraction
    average_rate: Fraction | None
    packets: int  # video packets demuxed: the frames expected
    declared_frames: int  # the container's own frame count (0 where it keeps none)
    keyframes: tuple[int, ...]  # indexes of the keyframe packets, in decode order
    sample_aspect_ratio: Fraction | None
    rotation: int  # degrees counter-clockwise, from the display matrix
    colour: Colour
    others: tuple[StreamInfo, ...]

    @property
    def expected_frames(self) -> int:
        return max(self.packets, self.declared_frames)


def _open(path: Path):
    import av

    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty")
    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a readable video ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def is_video(path: str | os.PathLike) -> bool:
    """True when FFmpeg finds a moving-picture stream in the file (not a still image)."""
    import av

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError):
        return False
    with container:
        name = container.format.name
        if name in _IMAGE_DEMUXERS or name.endswith(_IMAGE_DEMUXER_SUFFIX):
            return False
        return moving_picture(container) is not None


def moving_picture(container):
    """The first video stream that is not a cover picture (an audio file's attached art), or None."""
    import av

    still = av.stream.Disposition.attached_pic
    return next((s for s in container.streams.video if not (s.disposition & still)), None)


def check_video(path: str | os.PathLike) -> None:
    """Refuse a file FFmpeg cannot open, or whose video stream is missing or not decodable here,
    from its header alone (`probe` demuxes the whole file): a command checks every input so
    before writing its first output."""
    path = Path(path)
    with _open(path) as container:
        _decodable_video(container, path)


def _decodable_video(container, path: Path):
    """The container's moving picture, with a codec this FFmpeg decodes; else one line of why not."""
    stream = moving_picture(container)
    if stream is None:
        kinds = sorted({s.type for s in container.streams} - {"video"}) + (["a cover picture"] if container.streams.video else [])
        held = f"only {', '.join(kinds)}" if kinds else "no streams"
        raise VideoError(f"{path}: no video stream ({held})")
    if stream.codec_context is None or not stream.codec_context.codec:
        raise VideoError(f"{path}: this FFmpeg cannot decode its video codec")
    return stream


def probe(path: str | os.PathLike) -> VideoInfo:
    """Everything the pipeline needs to know before decoding; one line for what is not a video."""

    path = Path(path)
    container = _open(path)
    with container:
        stream = _decodable_video(container, path)
        codec = stream.codec_context.name
        others = tuple(StreamInfo(s.index, s.type, _codec_name(s), s.language) for s in container.streams if s.index != stream.index and s.type in COPIED_TYPES)
        first = _first_frame(container, stream, path)
        try:
            pix = first.format
            depth = max(component.bits for component in pix.components)
        except Exception as exc:  # noqa: BLE001 - any failure describing the format is the same answer
            raise VideoError(f"{path}: unsupported pixel format ({_reason(exc)})") from None
        if len(pix.components) < 3 or pix.has_palette or pix.is_bayer:
            raise VideoError(f"{path}: unsupported pixel format {pix.name} (colour video needs 3 components)")
        if first.colorspace == 10:
            raise VideoError(f"{path}: constant-luminance BT.2020 is not supported")
        colour = Colour(first.color_primaries, first.color_trc, first.colorspace, first.color_range)
        container_name = container.format.name
        time_base, average_rate, aspect = stream.time_base, stream.average_rate, stream.sample_aspect_ratio
        index = stream.index
    packets, keyframes, declared = _scan(path, index)
    return VideoInfo(
        path=path,
        index=index,
        container=container_name,
        codec=codec,
        width=first.width,
        height=first.height,
        pix_fmt=pix.name,
        bit_depth=depth,
        rgb=pix.is_rgb,
        time_base=time_base,
        average_rate=average_rate,
        packets=packets,
        declared_frames=declared,
        keyframes=keyframes,
        sample_aspect_ratio=aspect,
        rotation=int(round(first.rotation or 0)),
        colour=colour,
        others=others,
    )


def _codec_name(stream) -> str:
    if stream.type == "attachment":
        return ATTACHMENT  # a file in the header (fonts for subtitles), not a coded stream
    context = getattr(stream, "codec_context", None)
    return context.name if context is not None else "none"


def _first_frame(container, stream, path: Path):
    import av

    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: no frame could be decoded ({_reason(exc)})") from None
    raise VideoError(f"{path}: the video stream holds no frame that can be decoded")


def _scan(path: Path, index: int) -> tuple[int, tuple[int, ...], int]:
    """(video packets, keyframe packet indexes, the container's frame count), reading packets
    without decoding them; a damaged tail ends the count where the damage starts."""
    import av

    container = _open(path)
    with container:
        stream = container.streams[index]
        declared = int(stream.frames or 0)
        count, keyframes = 0, []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.is_keyframe:
                    keyframes.append(count)
                count += 1
        except av.FFmpegError:
            pass
    return count, tuple(keyframes), declared
