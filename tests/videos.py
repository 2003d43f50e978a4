"""Small videos made with PyAV for the video tests, and what the tests read back from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass
class Clip:
    """What to write: every option a test varies."""

    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    size: tuple[int, int] = (64, 48)  # width, height
    pts: list[int] = field(default_factory=lambda: list(range(8)))
    time_base: Fraction = Fraction(1, 12)
    rate: Fraction = Fraction(12)
    audio: bool = False
    subtitles: str | None = None  # "mov_text" or "subrip"
    sample_aspect_ratio: Fraction | None = None
    rotation: int = 0
    colour: tuple[int, int, int, int] | None = None  # primaries, transfer, matrix, range
    options: dict = field(default_factory=dict)
    container_options: dict = field(default_factory=dict)  # e.g. MP4's movflags=faststart
    title: str | None = None  # container metadata
    chapters: list[str] = field(default_factory=list)  # titles of chapters one frame long each
    attachment: bytes | None = None  # a font file, as Matroska subtitles carry them
    deep: bool = False  # 16-bit RGB source pictures (smooth ramps: more than 256 levels)
    seed: int = 0
    gop: int | None = None


def pictures(clip: Clip) -> list[np.ndarray]:
    """The RGB pictures the clip encodes: noise over gradients, different in every frame."""
    width, height = clip.size
    rng = np.random.default_rng(clip.seed)
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float64)[None, :, None] * np.linspace(0.3, 1.0, height)[:, None, None]
    out = []
    for index in range(len(clip.pts)):
        base = np.concatenate([ramp, np.roll(ramp, index * 3, axis=1), 1.0 - ramp], axis=2)
        noisy = np.clip(base * 0.8 + 0.1 + rng.normal(0, 0.04, base.shape), 0, 1)
        out.append((noisy * 65535).round().astype(np.uint16) if clip.deep else (noisy * 255).round().astype(np.uint8))
    return out


def make_clip(path: Path, clip: Clip) -> list[np.ndarray]:
    """Write `clip` to `path`; returns the RGB pictures it was made from."""
    import av

    frames = pictures(clip)
    with av.open(str(path), "w", options=clip.container_options) as out:
        video = _add_video_stream(out, clip)
        _add_container_extras(out, clip)
        audio = out.add_stream("aac", rate=16000) if clip.audio else None
        if audio is not None:
            audio.layout = "mono"
        if clip.subtitles:
            _write_subtitles(out, clip.subtitles)
        _write_pictures(out, video, frames, clip)
        if audio is not None:
            _write_audio(out, audio)
    return frames


def _add_video_stream(out, clip: Clip):
    video = out.add_stream(clip.codec, rate=clip.rate)
    video.width, video.height, video.pix_fmt = *clip.size, clip.pix_fmt
    video.codec_context.time_base = clip.time_base
    video.time_base = clip.time_base
    options = {"x265-params": "log-level=error"} if clip.codec == "libx265" else {}
    if clip.codec in ("libx264", "libx265"):
        options["preset"] = "ultrafast"
    video.options = {**options, **clip.options}
    if clip.gop:
        video.codec_context.gop_size = clip.gop
    if clip.colour:
        context = video.codec_context
        context.color_primaries, context.color_trc, context.colorspace, context.color_range = clip.colour
    if clip.sample_aspect_ratio:
        video.codec_context.sample_aspect_ratio = clip.sample_aspect_ratio
    if clip.rotation:
        video.set_display_rotation(clip.rotation)
    return video


def _add_container_extras(out, clip: Clip) -> None:
    """The title, the attachment and the chapters `clip` asks for."""
    if clip.title:
        out.metadata["title"] = clip.title
    if clip.attachment is not None:
        out.add_attachment("font.ttf", "application/x-truetype-font", clip.attachment)
    if clip.chapters:
        tick = clip.time_base
        out.set_chapters([{"id": n + 1, "start": n, "end": n + 1, "time_base": tick, "metadata": {"title": title}} for n, title in enumerate(clip.chapters)])


def _write_subtitles(out, codec: str) -> None:
    import av

    subtitles = out.add_mux_stream(codec)
    subtitles.time_base = Fraction(1, 1000)
    for number, text in enumerate([b"hello", b"bye"]):
        payload = len(text).to_bytes(2, "big") + text if codec == "mov_text" else text
        packet = av.Packet(payload)
        packet.pts = packet.dts = number * 300
        packet.duration, packet.time_base, packet.stream = 200, subtitles.time_base, subtitles
        out.mux(packet)


def _write_pictures(out, video, frames: list[np.ndarray], clip: Clip) -> None:
    import av

    for picture, pts in zip(frames, clip.pts):
        frame = av.VideoFrame.from_ndarray(picture, format="rgb48le" if clip.deep else "rgb24")
        if clip.colour:
            matrix = {1: "ITU709", 9: "BT2020", 5: "ITU601", 6: "SMPTE170M"}.get(clip.colour[2])
            if matrix and not av.VideoFormat(clip.pix_fmt).is_rgb:
                frame = frame.reformat(format=clip.pix_fmt, dst_colorspace=matrix, dst_color_range="JPEG" if clip.colour[3] == 2 else "MPEG")
        frame.pts = pts
        out.mux(video.encode(frame))
    out.mux(video.encode(None))


def _write_audio(out, audio) -> None:
    import av

    rng = np.random.default_rng(1)
    for number in range(8):
        samples = av.AudioFrame.from_ndarray(rng.uniform(-0.2, 0.2, (1, 1024)).astype(np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 16000, number * 1024
        out.mux(audio.encode(samples))
    out.mux(audio.encode(None))


@dataclass
class ReadBack:
    frames: list[np.ndarray]  # decoded pictures, in the stream's own format as numpy (rgb24/rgb48le/gbrp*)
    times: list[Fraction]  # every frame's timestamp in seconds
    pix_fmt: str
    colour: tuple[int, int, int, int]
    sample_aspect_ratio: Fraction | None
    rotation: int
    size: tuple[int, int]
    packets: dict[str, list[tuple[bytes, Fraction]]]  # by stream type (not video): bytes and time
    average_rate: Fraction | None
    metadata: dict = field(default_factory=dict)  # the container's
    chapters: list[tuple[Fraction, Fraction, str]] = field(default_factory=list)  # start, end (s), title
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)  # name, mimetype, data


def read_back(path: Path, *, as_format: str | None = None) -> ReadBack:
    """Everything the tests compare, decoded from `path`."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        first = None
        for frame in container.decode(stream):
            first = first or frame
            frames.append(frame.reformat(format=as_format).to_ndarray() if as_format else frame.to_ndarray())
            times.append(Fraction(frame.pts) * frame.time_base)
        colour = (first.color_primaries, first.color_trc, first.colorspace, first.color_range)
        result = ReadBack(
            frames, times, first.format.name, colour, stream.sample_aspect_ratio, int(first.rotation or 0), (first.width, first.height), {}, stream.average_rate
        )
        result.metadata = dict(container.metadata)
        result.chapters = [(c["start"] * c["time_base"], c["end"] * c["time_base"], c["metadata"].get("title")) for c in container.chapters()]
        result.attachments = [(s.name, s.mimetype, bytes(s.data)) for s in container.streams if s.type == "attachment"]
    with av.open(str(path)) as container:
        for packet in container.demux([s for s in container.streams if s.type not in ("video", "attachment")]):
            if packet.size:
                result.packets.setdefault(packet.stream.type, []).append((bytes(packet), Fraction(packet.pts) * packet.time_base))
    return result


def make_audio_only(path: Path) -> None:
    """An AAC file with no video stream."""
    import av

    with av.open(str(path), "w") as out:
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for number in range(4):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 16000, number * 1024
            out.mux(audio.encode(samples))
        out.mux(audio.encode(None))


def make_audio_with_cover(path: Path) -> None:
    """An MP4 of AAC audio and a cover picture (a one-packet PNG stream marked attached_pic)."""
    import av

    from deploytool.runtime import png

    with av.open(str(path), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        cover = out.add_stream("png", rate=1)
        cover.width = cover.height = 8
        cover.pix_fmt = "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        cover.time_base = Fraction(1, 90000)
        packet = av.Packet(png.encode(np.zeros((8, 8, 3), np.uint8)))
        packet.pts = packet.dts = 0
        packet.stream, packet.time_base = cover, cover.time_base
        out.mux(packet)
        for number in range(4):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 16000, number * 1024
            out.mux(audio.encode(samples))
        out.mux(audio.encode(None))
