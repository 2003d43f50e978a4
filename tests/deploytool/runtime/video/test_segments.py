"""`--resume`: segments cut at keyframes, skipped on a rerun with the same export and arguments,
joined into what one uninterrupted run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deploytool.errors import VideoError
from deploytool.runtime.backends import open_runner
from deploytool.runtime.manifest import read_manifest
from deploytool.runtime.video import EncodeOptions, TiledRestorer, restore_video
from deploytool.runtime.video.segments import plan_segments, state_folder
from tests.triton_server import leftovers
from tests.videos import Clip, make_clip, read_back

REPO_ROOT = Path(__file__).resolve().parents[4]


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


def test_resume_after_sigkill_mid_run_gives_the_uninterrupted_output(exported, tmp_path):
    source = tmp_path / "long.mkv"
    make_clip(source, Clip(pts=list(range(30)), gop=3, audio=True))
    arguments = ["run", str(exported), str(source), "--backend", "ort", "--preset", "ultrafast", "--resume", "--segment-frames", "3", "--json"]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    target = tmp_path / "killed.mkv"
    process = subprocess.Popen(
        [sys.executable, "-m", "deploytool", *arguments, "-o", str(target)],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(state_folder(target).glob("segment-*.nut")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()
    process.wait(timeout=30)
    done = len(list(state_folder(target).glob("segment-*.nut")))
    assert not target.exists() and 1 <= done < 10

    other = subprocess.run(
        [sys.executable, "-m", "deploytool", *arguments, "--crf", "30", "-o", str(target)],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 2 and other.stderr.strip().splitlines()[-1].startswith("error: ") and "another key" in other.stderr, other.stderr

    resumed = subprocess.run(
        [sys.executable, "-m", "deploytool", *arguments, "-o", str(target)], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)["videos"][0]
    assert report["segments"] == {"total": 10, "skipped": done} and report["frames"] == 30
    whole = tmp_path / "whole.mkv"
    uninterrupted = subprocess.run(
        [sys.executable, "-m", "deploytool", *arguments, "-o", str(whole)], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    first, second = read_back(whole), read_back(target)
    assert second.times == first.times and len(second.frames) == 30
    assert all(np.array_equal(a, b) for a, b in zip(first.frames, second.frames))
    assert second.packets == first.packets == read_back(source).packets
    assert not state_folder(target).exists() and not leftovers(tmp_path)
