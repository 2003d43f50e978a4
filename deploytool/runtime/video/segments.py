"""`--resume`: a video encoded in segments cut at the source's keyframes, joined at the end.

Finished segments live beside the output in `.<name>.resume/`, with a state file holding the
export's fingerprint, the arguments and the source's identity; a rerun with the same ones skips
the segments already there, and any other rerun refuses in one line. The join copies the
segments' packets and the source's other streams into the output without re-encoding.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import shutil
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from deploytool.errors import VideoError
from deploytool.runtime.fileio import atomic_path, write_text_atomic
from deploytool.runtime.video.output import OutputPlan
from deploytool.runtime.video.probe import VideoInfo

STATE_FILE = "state.json"
STATE_VERSION = 1
# NUT keeps any stream time base and the encoder's headers, so segments join with the source's
# timestamps exactly, into whatever container the output is.
SEGMENT_FORMAT, SEGMENT_SUFFIX = "nut", ".nut"
DEFAULT_SEGMENT_FRAMES = 600


def state_folder(destination: Path) -> Path:
    return destination.parent / f".{destination.name}.resume"


def plan_segments(keyframes: tuple[int, ...], packets: int, segment_frames: int) -> list[tuple[int, int]]:
    """[start, end) packet ranges, each starting at a keyframe and at least `segment_frames` long
    (but the last), covering every packet."""
    if packets <= 0:
        return []
    starts = [0]
    for key in keyframes:
        if key - starts[-1] >= max(1, segment_frames):
            starts.append(key)
    return [(start, end) for start, end in zip(starts, [*starts[1:], packets])]


def _source_identity(info: VideoInfo) -> dict[str, Any]:
    stat = info.path.stat()
    return {"path": str(info.path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _open_state(folder: Path, state: dict[str, Any]) -> None:
    path = folder / STATE_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous != state:
            differs = [key for key in state if not isinstance(previous, dict) or previous.get(key) != state[key]]
            raise VideoError(
                f"{folder} holds a run with another {', '.join(differs) or 'state'}; rerun with the same export and arguments, or delete it to start over"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(state, indent=2, sort_keys=True))


def restore_segmented(
    info: VideoInfo,
    plan: OutputPlan,
    restorer,
    destination: Path,
    key: dict[str, Any],
    *,
    segment_frames: int = 0,
    on_frame: Callable[[], None] = lambda: None,
):
    """Encode the missing segments, join all into `destination`, remove the state folder."""
    import av

    from deploytool.runtime.video import pipeline

    folder = state_folder(destination)
    segments = plan_segments(info.keyframes, info.packets, segment_frames or DEFAULT_SEGMENT_FRAMES)
    state = {"version": STATE_VERSION, "key": key, "source": _source_identity(info), "output": plan.describe(), "segments": [list(s) for s in segments]}
    _open_state(folder, state)
    frames = skipped = 0
    busy = seconds = 0.0
    files = []
    for number, (start, end) in enumerate(segments):
        path = folder / f"segment-{number:05d}{SEGMENT_SUFFIX}"
        files.append(path)
        if path.is_file():
            skipped += 1
            frames += end - start
            for _ in range(end - start):
                on_frame()
            continue
        with atomic_path(path) as tmp:
            output, stream, _ = pipeline.open_output(tmp, plan, info, format=SEGMENT_FORMAT, segmented=True)
            try:
                result = pipeline.run_stages(info.path, info, restorer, output, stream, plan, {}, packet_range=(start, end), on_frame=on_frame)
            finally:
                with contextlib.suppress(av.FFmpegError, OSError):
                    output.close()
            if result.decoded.errors or result.frames != end - start:
                raise VideoError(
                    f"{info.path}: packets {start}-{end - 1} gave {result.frames} frames, not {end - start}: the source is damaged or its keyframes "
                    "do not start closed groups of pictures; run without --resume"
                )
        frames += result.frames
        busy += result.busy_seconds
        seconds += result.seconds
    if frames < info.expected_frames:
        raise VideoError(f"{info.path}: truncated or damaged: {frames} frames decoded, {info.expected_frames - frames} lost; nothing was written")
    _join(info, plan, files, destination)
    shutil.rmtree(folder, ignore_errors=True)
    report = {"total": len(segments), "skipped": skipped}
    return pipeline.StageResult(frames, pipeline.Decoded(frames=frames), seconds, busy), report


def _packets(path: Path, index: int | None = None) -> Iterator:
    import av

    with av.open(str(path)) as container:
        streams = [container.streams.video[0]] if index is None else [s for s in container.streams if s.index == index]
        for packet in container.demux(streams):
            if packet.dts is not None:
                yield packet


def _timed(packets: Iterator, tag: int, target) -> Iterator[tuple[Fraction, int, Any, Any]]:
    for order, packet in enumerate(packets):
        yield Fraction(packet.dts) * packet.time_base, tag * (1 << 40) + order, target, packet


def _join(info: VideoInfo, plan: OutputPlan, files: list[Path], destination: Path) -> None:
    """The segments' video packets and the source's copied streams, interleaved by time."""
    import av

    from deploytool.runtime.video import pipeline

    with av.open(str(files[0])) as first, av.open(str(info.path)) as source, atomic_path(destination) as tmp:
        copied = [source.streams[s.index] for s in plan.copied]
        output, stream, mapping = pipeline.open_output(tmp, plan, info, source_container=source, copied=copied, video_template=first.streams.video[0])
        try:
            video = (packet for path in files for packet in _packets(path))
            sources = [_timed(video, 0, stream), *(_timed(_packets(info.path, s.index), 1 + n, mapping[s.index]) for n, s in enumerate(plan.copied))]
            for _, _, target, packet in heapq.merge(*sources, key=lambda item: (item[0], item[1])):
                packet.stream = target
                output.mux(packet)
        finally:
            with contextlib.suppress(av.FFmpegError, OSError):
                output.close()
