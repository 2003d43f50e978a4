"""`deploytool run` on videos: frames, timestamps, tags and other streams kept; lossless frames
equal to `run` on the same frames as images; bad input in one line, nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from deploytool.runtime import images
from tests.triton_server import assert_one_line_error, invoke, leftovers
from tests.videos import Clip, make_audio_only, make_audio_with_cover, make_clip, read_back

REPO_ROOT = Path(__file__).resolve().parents[4]


def run_video(exported, source, target, *extra):
    fast = () if "--lossless" in extra else ("--preset", "ultrafast")
    result = invoke("run", exported, source, "-o", target, "--backend", "ort", *fast, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["videos"][0]


def test_h264_with_audio_and_subtitles_keeps_every_frame_timestamp_and_packet(exported, tmp_path):
    source = tmp_path / "clip.mp4"
    make_clip(source, Clip(audio=True, subtitles="mov_text", pts=list(range(10))))
    summary = run_video(exported, source, tmp_path / "out" / "clip_x2.mp4")
    before, after = read_back(source), read_back(tmp_path / "out" / "clip_x2.mp4")
    assert summary["frames"] == 10 and len(after.frames) == 10
    assert after.times == before.times
    assert after.size == (128, 96) and after.pix_fmt == "yuv420p"
    assert after.packets["audio"] == before.packets["audio"] and len(before.packets["audio"]) > 5
    # MP4's muxer ends each cue with an empty sample of its own, so a copy holds its new ones too
    cues_before, cues_after = ([packet for packet in rb.packets["subtitle"] if packet[0] != b"\x00\x00"] for rb in (before, after))
    assert cues_after == cues_before and len(cues_before) == 2
    assert {s["type"] for s in summary["streams_copied"]} == {"audio", "subtitle"}
    assert 0 < summary["model_busy_share"] <= 1 and summary["fps"] > 0
    assert after.average_rate == before.average_rate

    dropped = run_video(exported, source, tmp_path / "quiet.mp4", "--no-audio")
    assert [s["type"] for s in dropped["streams_copied"]] == ["subtitle"]
    assert "audio" not in read_back(tmp_path / "quiet.mp4").packets


def test_matroska_metadata_chapters_and_attachments_are_copied(exported, tmp_path):
    source = tmp_path / "film.mkv"
    make_clip(source, Clip(title="A film", chapters=["Opening", "Middle"], attachment=b"font bytes", subtitles="subrip", pts=list(range(4))))
    summary = run_video(exported, source, tmp_path / "film_x2.mkv")
    before, after = read_back(source), read_back(tmp_path / "film_x2.mkv")
    assert after.metadata["title"] == "A film"
    assert after.chapters == before.chapters and [c[2] for c in after.chapters] == ["Opening", "Middle"]
    assert after.attachments == before.attachments == [("font.ttf", "application/x-truetype-font", b"font bytes")]
    assert after.packets["subtitle"] == before.packets["subtitle"] and len(before.packets["subtitle"]) == 2
    assert sorted(s["type"] for s in summary["streams_copied"]) == ["attachment", "subtitle"]
    refused = invoke("run", exported, source, "-o", tmp_path / "film_x2.mp4", "--backend", "ort")
    assert_one_line_error(refused, "stream 1 (subtitle, ", "(attachment, attachment)", "use .mkv")
    assert not (tmp_path / "film_x2.mp4").exists()


def test_ten_bit_hevc_keeps_its_tags_and_more_than_256_levels(exported, tmp_path):
    source = tmp_path / "hdr.mkv"
    pq = (9, 16, 9, 1)  # BT.2020 primaries, PQ transfer, BT.2020 matrix, limited range
    make_clip(source, Clip(codec="libx265", pix_fmt="yuv420p10le", colour=pq, deep=True, pts=list(range(6))))
    summary = run_video(exported, source, tmp_path / "hdr_x2.mkv", "--crf", "4")
    after = read_back(tmp_path / "hdr_x2.mkv", as_format="gbrp16le")
    assert summary["encoded"]["codec"] == "libx265" and after.pix_fmt == "yuv420p10le"
    assert after.colour == pq and len(after.frames) == 6
    assert len(np.unique(after.frames[0][..., 1])) > 256


def test_variable_frame_rate_stays_variable(exported, tmp_path):
    source = tmp_path / "vfr.mkv"
    pts = [0, 1, 3, 4, 9, 10, 17, 18]
    make_clip(source, Clip(pts=pts, time_base=Fraction(1, 1000) * 40, rate=Fraction(25)))
    run_video(exported, source, tmp_path / "vfr_x2.mkv")
    before, after = read_back(source), read_back(tmp_path / "vfr_x2.mkv")
    assert after.times == before.times == [Fraction(p * 40, 1000) for p in pts]


def test_odd_size_with_a_non_square_sample_aspect_ratio_and_rotation(exported, tmp_path):
    source = tmp_path / "odd.mp4"
    make_clip(source, Clip(size=(63, 47), pix_fmt="yuv444p", sample_aspect_ratio=Fraction(4, 3), rotation=90))
    run_video(exported, source, tmp_path / "odd_x2.mp4")
    before, after = read_back(source), read_back(tmp_path / "odd_x2.mp4")
    assert before.sample_aspect_ratio == after.sample_aspect_ratio == Fraction(4, 3)
    assert before.rotation == after.rotation == 90
    assert after.size == (126, 94)


@pytest.mark.parametrize("deep", [False, True], ids=["8-bit", "16-bit"])
def test_lossless_frames_equal_run_on_the_same_frames_as_images(exported, tmp_path, deep):
    source = tmp_path / "rgb.mkv"
    pictures = make_clip(source, Clip(codec="ffv1", pix_fmt="gbrp16le" if deep else "bgr0", deep=deep, pts=list(range(5))))
    run_video(exported, source, tmp_path / "rgb_x2.mkv", "--lossless")
    after = read_back(tmp_path / "rgb_x2.mkv", as_format="gbrp16le" if deep else "rgb24")
    assert after.pix_fmt == ("gbrp16le" if deep else "bgr0")
    folder = tmp_path / "frames"
    for number, picture in enumerate(pictures):
        images.write_samples(folder / f"{number}.png", picture)
    result = invoke("run", exported, folder, "-o", tmp_path / "frames_x2", "--backend", "ort")
    assert result.exit_code == 0, result.output
    assert len(after.frames) == len(pictures)
    for number, frame in enumerate(after.frames):
        expected = images.read_samples(tmp_path / "frames_x2" / f"{number}.png")
        assert frame.dtype == expected.dtype and np.array_equal(frame, expected), number


def test_folders_mix_images_and_videos_whatever_their_names(exported, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    make_clip(folder / "clip.mkv", Clip(pts=list(range(3))))
    (folder / "clip.mkv").rename(folder / "holiday.clip")
    images.write_samples(folder / "photo.png", np.full((20, 24, 3), 90, np.uint8))
    (folder / "notes.txt").write_text("neither")
    result = invoke("run", exported, folder, "-o", tmp_path / "out", "--backend", "ort", "--preset", "ultrafast", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [Path(i["output"]).name for i in report["images"]] == ["photo.png"]
    assert [Path(v["output"]).name for v in report["videos"]] == ["holiday.clip"]
    assert len(read_back(tmp_path / "out" / "holiday.clip").frames) == 3


def test_bad_input_is_one_line_and_writes_nothing(exported, tmp_path):
    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    assert_one_line_error(invoke("run", exported, corrupt, "-o", out / "a.mp4", "--backend", "ort"), "corrupt.mp4")

    audio_only = tmp_path / "audio.m4a"
    make_audio_only(audio_only)
    assert_one_line_error(invoke("run", exported, audio_only, "-o", out / "b.mp4", "--backend", "ort"), "no video stream", "audio")
    covered = tmp_path / "song.mp4"
    make_audio_with_cover(covered)
    assert_one_line_error(invoke("run", exported, covered, "-o", out / "b.mp4", "--backend", "ort"), "no video stream (only audio, a cover picture)")

    gray = tmp_path / "gray.mkv"
    make_clip(gray, Clip(codec="ffv1", pix_fmt="gray", pts=[0, 1]))
    assert_one_line_error(invoke("run", exported, gray, "-o", out / "c.mkv", "--backend", "ort"), "unsupported pixel format gray")

    whole = tmp_path / "whole.mp4"
    make_clip(whole, Clip(pts=list(range(12)), container_options={"movflags": "faststart"}))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    line = assert_one_line_error(invoke("run", exported, truncated, "-o", out / "d.mp4", "--backend", "ort"), "truncated or damaged", "lost")
    assert "12 frames" not in line

    subrip = tmp_path / "subs.mkv"
    make_clip(subrip, Clip(subtitles="subrip", pts=[0, 1]))
    assert_one_line_error(invoke("run", exported, subrip, "-o", out / "e.mp4", "--backend", "ort"), "mp4 cannot hold stream 1 (subtitle, ", "use .mkv")
    assert_one_line_error(invoke("run", exported, subrip, "-o", out / "f.mp4", "--backend", "ort", "--lossless"), "Matroska")

    # encoder options out of the encoder's range, and a name no video container has: refused before the work
    assert_one_line_error(invoke("run", exported, whole, "-o", out / "h.mp4", "--backend", "ort", "--crf", "-5"), "--crf -5: libx264 takes 0 to 51")
    assert_one_line_error(
        invoke("run", exported, whole, "-o", out / "h.mp4", "--backend", "ort", "--preset", "bogus"), "--preset bogus: libx264 takes ultrafast"
    )
    assert_one_line_error(invoke("run", exported, whole, "-o", out / "h.png", "--backend", "ort"), "no video container is known for the name .png")
    assert_one_line_error(
        invoke("run", exported, whole, "-o", out / "h.mp4", "--backend", "ort", "--segment-frames", "10"), "--segment-frames applies with --resume"
    )

    # a folder that cannot be made (its parent is a file) stands for any unwritable place, also for root
    assert_one_line_error(invoke("run", exported, whole, "-o", corrupt / "g.mp4", "--backend", "ort"), "cannot write there")
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    assert not leftovers(tmp_path)


def test_gray_and_dual_view_models_refuse_video(tmp_path):
    from deploytool.errors import VideoError
    from deploytool.runtime.video import TiledRestorer
    from tests.standin import registry_tiling_configs, write_standin_export

    configs = {c.model_id: c for c in registry_tiling_configs()}
    gray = next(c for c in configs.values() if c.channels == 1)
    dual = next(c for c in configs.values() if len(c.views) > 1)
    with pytest.raises(VideoError, match="grayscale"):
        TiledRestorer(object(), write_standin_export(gray, tmp_path / "gray"), overlap=0)
    with pytest.raises(VideoError, match="views"):
        TiledRestorer(object(), write_standin_export(dual, tmp_path / "dual"), overlap=0)


def test_sigterm_stops_soon_with_one_line_and_no_output(exported, tmp_path):
    source = tmp_path / "long.mkv"
    make_clip(source, Clip(pts=list(range(200)), size=(96, 64)))
    target = tmp_path / "out" / "long_x2.mkv"
    command = [sys.executable, "-m", "deploytool", "run", str(exported), str(source), "-o", str(target), "--backend", "ort", "--preset", "ultrafast"]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not leftovers(tmp_path) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 3
    assert process.returncode != 0
    assert stderr.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in stderr
    assert not target.exists() and not leftovers(tmp_path)


def test_the_video_modules_import_neither_torch_nor_onnx():
    code = "import sys, deploytool.runtime.video, deploytool.runtime.video.segments; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
