"""`--resume`: segments cut at keyframes, skipped on a rerun with the same export and arguments,
joined into what one uninterrupted run writes."""

from __future__ import annotations

import pytest

from deploytool.backends import open_runner
from deploytool.errors import VideoError
from deploytool.manifest import read_manifest
from deploytool.video import EncodeOptions, TiledRestorer, restore_video
from deploytool.video.segments import plan_segments, state_folder
from tests.helpers import export_tiny
from tests.videos import Clip, make_clip, read_back


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("segments-export") / "swinir"
    export_tiny("swinir-s-x2", out, fp16=False, tile=(32, 32), batch=4)
    return out


class InterruptedAfter:
    """A restorer that stops the run (as Ctrl-C does) after `frames` restored frames."""

    def __init__(self, restorer, frames: int):
        self.restorer, self.left = restorer, frames
        self.name, self.scale = restorer.name, restorer.scale

    @property
    def busy_seconds(self) -> float:
        return self.restorer.busy_seconds

    def restore(self, frames, depth):
        for item in self.restorer.restore(frames, depth):
            if self.left == 0:
                raise KeyboardInterrupt
            self.left -= 1
            yield item


def test_segments_start_at_keyframes_and_cover_every_packet():
    assert plan_segments((0, 3, 6, 9), 12, 3) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert plan_segments((0, 3, 6, 9), 12, 5) == [(0, 6), (6, 12)]
    assert plan_segments((0,), 7, 600) == [(0, 7)]


def test_resume_after_an_interruption_gives_the_uninterrupted_output(exported, tmp_path):
    source = tmp_path / "clip.mp4"
    make_clip(source, Clip(pts=list(range(12)), gop=3, audio=True))
    manifest = read_manifest(exported)
    options = EncodeOptions(preset="ultrafast")
    key = {"export": manifest.fingerprint(), "overlap": 8, **options.arguments()}
    with open_runner(exported, manifest, "ort") as runner:
        restorer = TiledRestorer(runner, manifest, overlap=8)
        whole = restore_video(source, tmp_path / "whole.mp4", restorer, options, resume_key=key, segment_frames=3)
        assert whole["segments"] == {"total": 4, "skipped": 0}

        target = tmp_path / "resumed.mp4"
        with pytest.raises(KeyboardInterrupt):
            restore_video(source, target, InterruptedAfter(restorer, 7), options, resume_key=key, segment_frames=3)
        assert not target.exists() and len(list(state_folder(target).glob("segment-*.nut"))) == 2

        with pytest.raises(VideoError, match="another key"):
            restore_video(source, target, restorer, EncodeOptions(preset="ultrafast", crf=30), resume_key={**key, "crf": 30}, segment_frames=3)

        resumed = restore_video(source, target, restorer, options, resume_key=key, segment_frames=3)
    assert resumed["segments"] == {"total": 4, "skipped": 2} and resumed["frames"] == 12
    assert not state_folder(target).exists()
    first, second = read_back(tmp_path / "whole.mp4"), read_back(target)
    assert second.times == first.times == read_back(source).times
    assert all((a == b).all() for a, b in zip(first.frames, second.frames)) and len(second.frames) == 12
    assert second.packets["audio"] == first.packets["audio"] == read_back(source).packets["audio"]
