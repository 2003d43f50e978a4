"""`deploytool client` on a video: frames restored by a real Triton server (python-ort tiles)
come back, losslessly encoded, equal to local `deploytool run --backend ort --lossless`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.triton_server import export_for_serving, invoke, leftovers, running_server, serve_environment_or_skip
from tests.videos import Clip, make_clip, read_back

pytestmark = pytest.mark.timeout(300)


def test_client_video_frames_equal_local_lossless_run(tmp_path):
    serve_environment_or_skip()
    export = export_for_serving("swinir-s-x2", tmp_path / "swinir-s-x2")
    repo = tmp_path / "models"
    written = invoke("triton", export, "--repo", repo, "--runtime", "python-ort")
    assert written.exit_code == 0, written.output
    source = tmp_path / "clip.mkv"
    make_clip(source, Clip(codec="ffv1", pix_fmt="bgr0", size=(40, 30), pts=[0, 1, 2], audio=True))

    local = invoke("run", export, source, "-o", tmp_path / "local.mkv", "--backend", "ort", "--lossless")
    assert local.exit_code == 0, local.output
    with running_server(repo) as triton:
        served = invoke("client", triton.url, "swinir-s-x2", source, "-o", tmp_path / "served.mkv", "--lossless", "--json")
    assert served.exit_code == 0, served.output
    summary = json.loads(served.stdout)["videos"][0]
    assert summary["frames"] == 3 and [s["type"] for s in summary["streams_copied"]] == ["audio"]
    expected, actual = read_back(tmp_path / "local.mkv", as_format="rgb24"), read_back(tmp_path / "served.mkv", as_format="rgb24")
    assert len(actual.frames) == 3 and actual.times == expected.times
    assert all(np.array_equal(a, b) for a, b in zip(expected.frames, actual.frames))
    assert actual.packets == expected.packets
    assert not leftovers(tmp_path)


def test_an_unreachable_server_is_one_line_for_a_video_and_writes_nothing(tmp_path):
    from deploytool.serving.server import free_port
    from tests.triton_server import assert_one_line_error

    source = tmp_path / "clip.mkv"
    make_clip(source, Clip(pts=[0, 1]))
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(invoke("client", url, "swinir-s-x2", source, "-o", tmp_path / "out.mkv"), "cannot reach a Triton server at", url)
    assert not (tmp_path / "out.mkv").exists() and not leftovers(tmp_path)
