"""A video through a model: decode, restore and encode in three stages joined by bounded queues.

The decode thread demuxes the source, decodes and converts frames to float RGB, and passes the
packets of copied streams along; the calling thread runs the model (`FrameRestorer`); the encode
thread encodes restored frames and muxes them with the copied packets. Memory is bounded by the
queues, whatever the video's length. The output is written under a temporary name and renamed at
the end; any failure or interruption stops every stage within about a second and leaves nothing.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deploytool.errors import VideoError
from deploytool.runtime import inference, tiling
from deploytool.runtime.fileio import atomic_path
from deploytool.runtime.video import frames as framing
from deploytool.runtime.video.output import EncodeOptions, OutputPlan, plan_output
from deploytool.runtime.video.probe import VideoInfo, probe

QUEUE_FRAMES = 8  # frames waiting between two stages
POLL_SECONDS = 0.1  # how often a waiting stage looks whether the run was stopped
# container and stream metadata FFmpeg writes itself (and would contradict when copied)
_OWN_METADATA = {"encoder", "major_brand", "minor_version", "compatible_brands", "duration", "_statistics_tags", "number_of_frames", "bps"}


class FrameRestorer(Protocol):
    """What restores frames: tiles on a local runner, or a Triton server."""

    name: str
    busy_seconds: float  # time spent running the model so far
    scale: int

    def restore(self, frames: Iterable[framing.Frame], depth: int) -> Iterator[tuple[framing.Frame, np.ndarray]]:
        """Each frame with its restored RGB, in order: float32 (rounded to `depth` bits by the
        encode stage, off the model's thread) or `depth`-bit integer samples."""
        ...


class TiledRestorer:
    """Frames through an export's runner, tiled as `deploytool run` tiles an image; the batches
    are filled with tiles of consecutive frames."""

    def __init__(self, runner: inference.Runner, manifest: inference.Manifest, *, overlap: int):
        views = manifest.views
        if len(views) != 1:
            raise VideoError(f"{manifest.model_id} takes {len(views)} views of one scene ({', '.join(v.name for v in views)}); a video has one")
        if views[0].channels != 3:
            raise VideoError(f"{manifest.model_id} takes {views[0].channels}-channel (grayscale) images; video frames are colour")
        self.runner, self.manifest, self.overlap = runner, manifest, overlap
        self.name = getattr(runner, "name", "model")
        self.scale = manifest.scale
        self.busy_seconds = 0.0
        self.tiles = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.runner(batch)
        finally:
            self.busy_seconds += time.perf_counter() - started

    def restore(self, frames: Iterable[framing.Frame], depth: int) -> Iterator[tuple[framing.Frame, np.ndarray]]:
        order: deque[framing.Frame] = deque()

        def cut() -> Iterator[tiling.TiledImage]:
            for frame in frames:
                order.append(frame)
                yield inference.tiled_array(self.manifest, frame.pixels, overlap=self.overlap)

        def counted(n: int) -> None:
            self.tiles += n

        for tiled in tiling.run_tiled_stream(cut(), self.infer, batch=self.manifest.tiling.batch, on_batch=counted):
            frame = order.popleft()
            height, width = frame.pixels.shape[:2]
            restored = inference.restored_array(self.manifest, tiled, height, width)
            yield frame, restored


class Stopped(Exception):
    """The run was stopped (a failure in another stage, or an interruption)."""


@dataclass
class _Run:
    stop: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.failure is None and not isinstance(exc, Stopped):
                self.failure = exc
        self.stop.set()

    def put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise Stopped
            try:
                q.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue) -> Any:
        while True:
            if self.stop.is_set():
                raise Stopped
            try:
                return q.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue


_END = object()


@dataclass
class _Packet:
    packet: Any
    stream_index: int  # in the source (the packet's own stream goes with the decoder's container)


@dataclass
class Decoded:
    frames: int = 0
    errors: int = 0
    packets: int = 0


def _decode(run: _Run, path: Path, info: VideoInfo, copied: dict[int, Any], out: queue.Queue, decoded: Decoded, packet_range: tuple[int, int] | None) -> None:
    """The decode stage: frames (and copied packets, in demux order) into `out`, then _END."""
    import av

    try:
        with av.open(str(path)) as container:
            video = container.streams[info.index]
            video.thread_type = "AUTO"
            wanted = [video, *(s for s in container.streams if s.index in copied and s.type != "attachment")]
            try:
                _demux(run, container.demux(wanted), video, info, out, decoded, packet_range)
            except av.FFmpegError:
                decoded.errors += 1  # the demuxer gave up: a damaged or truncated tail
            try:
                _emit(run, video.decode(None), info, out, decoded)
            except av.FFmpegError:
                decoded.errors += 1
        run.put(out, _END)
    except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
        run.fail(exc)


def _demux(run: _Run, packets, video, info: VideoInfo, out: queue.Queue, decoded: Decoded, packet_range: tuple[int, int] | None) -> None:
    """The video packets (those of `packet_range` only, when given) decoded into `out`, the other
    streams' packets passed on as they come."""
    import av

    index = 0
    for packet in packets:
        if run.stop.is_set():
            raise Stopped
        if packet.stream.index != video.index:
            if packet.dts is not None:
                run.put(out, _Packet(packet, packet.stream.index))
            continue
        if packet.size == 0:
            continue
        position, index = index, index + 1
        if packet_range is not None:
            if position < packet_range[0]:
                continue
            if position >= packet_range[1]:
                break
        decoded.packets += 1
        try:
            frames = video.decode(packet)
        except av.FFmpegError:
            decoded.errors += 1
            continue
        _emit(run, frames, info, out, decoded)


def _emit(run: _Run, frames, info: VideoInfo, out: queue.Queue, decoded: Decoded) -> None:
    for frame in frames:
        run.put(out, framing.to_rgb(frame, info, decoded.frames))
        decoded.frames += 1


def _copy_metadata(source: dict, target: dict) -> None:
    for key, value in source.items():
        if key.lower() not in _OWN_METADATA and not key.upper().startswith("DURATION"):
            target[key] = value


def open_output(
    path: Path,
    plan: OutputPlan,
    info: VideoInfo,
    *,
    format: str | None = None,
    source_container=None,
    copied: Iterable = (),
    segmented: bool = False,
    video_template=None,
):
    """The output container with its video stream (an encoder, or a copy of `video_template`'s
    packets) and the copied streams added; nothing is written before the first packet."""
    import av

    try:
        output = av.open(str(path), "w", format=format or plan.format)
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{path}: cannot write the output ({getattr(exc, 'strerror', None) or exc})") from None
    if video_template is not None:
        stream = output.add_stream_from_template(video_template)
        stream.time_base = info.time_base
    else:
        rate = info.average_rate or (1 / info.time_base)
        stream = output.add_stream(plan.codec, rate=Fraction(rate).limit_denominator(1 << 30))
        context = stream.codec_context
        context.width, context.height, context.pix_fmt = plan.width, plan.height, plan.pix_fmt
        context.time_base = info.time_base
        stream.time_base = info.time_base
        context.color_primaries, context.color_trc = info.colour.primaries, info.colour.transfer
        context.colorspace, context.color_range = plan.matrix_tag, plan.range_tag
        if info.sample_aspect_ratio:
            context.sample_aspect_ratio = info.sample_aspect_ratio
        if segmented:
            # segments are joined packet for packet: no frame may be decoded before one it follows
            context.max_b_frames = 0
        stream.options = dict(plan.options)
    if info.rotation:
        stream.set_display_rotation(info.rotation)
    mapping = {}
    if source_container is not None:
        _copy_metadata(source_container.metadata, output.metadata)
        _copy_metadata(source_container.streams[info.index].metadata, stream.metadata)
        for source in copied:
            if source.type == "attachment":
                output.add_attachment(source.name, source.mimetype, bytes(source.data))
                continue
            target = output.add_stream_from_template(source)
            _copy_metadata(source.metadata, target.metadata)
            with contextlib.suppress(AttributeError, ValueError, TypeError):
                target.disposition = source.disposition
            mapping[source.index] = target
        with contextlib.suppress(AttributeError, av.FFmpegError, ValueError):
            chapters = source_container.chapters()
            if chapters:
                output.set_chapters(chapters)
    return output, stream, mapping


def _encode(run: _Run, output, stream, plan: OutputPlan, info: VideoInfo, mapping: dict, incoming: queue.Queue, on_frame: Callable[[], None]) -> None:
    """The encode stage: restored frames encoded and muxed with the copied packets, until _END."""
    try:
        matrix_tag, range_tag = plan.matrix_tag, plan.range_tag
        while True:
            item = run.get(incoming)
            if item is _END:
                break
            if isinstance(item, _Packet):
                packet = item.packet
                packet.stream = mapping[item.stream_index]
                output.mux(packet)
                continue
            index, pts, restored = item
            samples = framing.quantized(restored, plan.depth, where=f"{info.path}: frame {index}") if restored.dtype.kind == "f" else restored
            frame = framing.encoder_frame(samples, pix_fmt=plan.pix_fmt, matrix=plan.matrix, color_range=range_tag)
            frame.pts, frame.time_base = pts, info.time_base
            frame.color_primaries, frame.color_trc = info.colour.primaries, info.colour.transfer
            frame.colorspace, frame.color_range = matrix_tag, range_tag
            output.mux(stream.encode(frame))
            on_frame()
        output.mux(stream.encode(None))
    except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
        run.fail(exc)


@dataclass
class StageResult:
    frames: int
    decoded: Decoded
    seconds: float
    busy_seconds: float


def run_stages(
    path: Path,
    info: VideoInfo,
    restorer: FrameRestorer,
    output,
    stream,
    plan: OutputPlan,
    mapping: dict,
    *,
    packet_range: tuple[int, int] | None = None,
    on_frame: Callable[[], None] = lambda: None,
) -> StageResult:
    """Decode -> restore (in this thread) -> encode, until the source (or its packet range) ends."""
    run = _Run()
    decoded_queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
    restored_queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
    decoded = Decoded()
    done = [0]

    def counted() -> None:
        done[0] += 1
        on_frame()

    decoder = threading.Thread(target=_decode, args=(run, path, info, mapping, decoded_queue, decoded, packet_range), name="video-decode", daemon=True)
    encoder = threading.Thread(target=_encode, args=(run, output, stream, plan, info, mapping, restored_queue, counted), name="video-encode", daemon=True)
    busy_before = restorer.busy_seconds
    started = time.perf_counter()
    decoder.start()
    encoder.start()
    try:
        for frame, samples in restorer.restore(_decoded_frames(run, decoded_queue, restored_queue), plan.depth):
            run.put(restored_queue, (frame.index, frame.pts, samples))
        run.put(restored_queue, _END)
        while encoder.is_alive():
            encoder.join(POLL_SECONDS)
            if run.stop.is_set():
                break
    except BaseException as exc:
        run.fail(exc)
    finally:
        _join(run, encoder, decoder)
    if run.failure is not None:
        raise run.failure
    return StageResult(done[0], decoded, time.perf_counter() - started, restorer.busy_seconds - busy_before)


def _decoded_frames(run: _Run, decoded_queue: queue.Queue, restored_queue: queue.Queue) -> Iterator[framing.Frame]:
    """The frames of the decode stage, until _END; copied packets go straight on to the encoder."""
    while True:
        item = run.get(decoded_queue)
        if item is _END:
            return
        if isinstance(item, _Packet):
            run.put(restored_queue, item)
            continue
        yield item


def _join(run: _Run, encoder: threading.Thread, decoder: threading.Thread) -> None:
    """Both stage threads ended: after a failure the encoder is stopped at once, else it drains."""
    if run.failure is not None:
        run.stop.set()
    encoder.join()
    run.stop.set()
    decoder.join()


def _lost(info: VideoInfo, decoded: Decoded, frames: int) -> None:
    expected = info.expected_frames
    if decoded.errors or frames < expected:
        lost = max(expected - frames, decoded.errors)
        raise VideoError(f"{info.path}: truncated or damaged: {frames} frames decoded, {lost} lost; nothing was written")


def restore_video(
    source: Path,
    destination: Path,
    restorer: FrameRestorer,
    options: EncodeOptions | None = None,
    *,
    resume_key: dict | None = None,
    segment_frames: int = 0,
    on_start: Callable[[int], None] = lambda total: None,
    on_frame: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Restore every frame of `source` into `destination`, copying its other streams; returns a
    summary. With `resume_key` (the export's fingerprint and the arguments), the video is encoded
    in segments cut at keyframes that a rerun with the same key skips, then joined."""
    import av

    options = options or EncodeOptions()
    source, destination = Path(source), Path(destination)
    info = probe(source)
    check_writable(destination)
    plan = plan_output(info, options, destination, scale=restorer.scale)
    on_start(info.expected_frames)
    started = time.perf_counter()
    if resume_key is not None:
        from deploytool.runtime.video import segments

        result, segment_report = segments.restore_segmented(info, plan, restorer, destination, resume_key, segment_frames=segment_frames, on_frame=on_frame)
    else:
        segment_report = None
        with av.open(str(source)) as container, atomic_path(destination) as tmp:
            copied = [container.streams[s.index] for s in plan.copied]
            output, stream, mapping = open_output(tmp, plan, info, source_container=container, copied=copied)
            try:
                result = run_stages(source, info, restorer, output, stream, plan, mapping, on_frame=on_frame)
                _lost(info, result.decoded, result.frames)
            finally:
                with contextlib.suppress(av.FFmpegError, OSError):
                    output.close()
    seconds = time.perf_counter() - started
    summary = {
        "input": str(source),
        "output": str(destination),
        "model": restorer.name,
        "frames": result.frames,
        "seconds": round(seconds, 3),
        "fps": round(result.frames / seconds, 3) if seconds > 0 else None,
        "model_busy_share": round(result.busy_seconds / result.seconds, 4) if result.seconds > 0 else None,
        "size": [info.width, info.height],
        "output_size": [plan.width, plan.height],
        "source": {"codec": info.codec, "pix_fmt": info.pix_fmt, "bit_depth": info.bit_depth},
        "encoded": plan.describe(),
        "streams_copied": [{"index": s.index, "type": s.type, "codec": s.codec} for s in plan.copied],
    }
    if segment_report is not None:
        summary["segments"] = segment_report
    return summary


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does, so a terminated run
    cleans up (no partial output) instead of dying where it stands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_writable(destination: Path) -> None:
    """One line, before any work, when `destination` cannot be written."""
    if destination.is_dir():
        raise VideoError(f"{destination}: is a folder; name the output file")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=destination.parent):
            pass
    except OSError as exc:
        raise VideoError(f"{destination}: cannot write there ({exc.strerror or exc})") from None
