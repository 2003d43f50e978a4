"""Against a real Triton server (the nvidia-pytriton wheel's tritonserver, on 127.0.0.1): the
repository `deploytool triton --runtime python-ort` writes, served by deploytool's launcher, and
`deploytool client` results compared with local `deploytool run --backend ort` byte for byte.

Byte equality is expected, not just closeness: the server runs the same tiler, the same float
conversion (`images.from_samples`) and the same quantization (`images.quantize`) on the same ONNX
graph with ONNX Runtime's CPU provider, whose kernels split work across threads by output blocks
(no reduction is split), so the thread count of a server instance does not change any sum.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploytool.serving import server
from deploytool.serving.client import restore_remote
from tests.triton_server import (
    REPO_ROOT,
    TEST_MAX_PIXELS,
    TESTSETS,
    assert_one_line_error,
    export_for_serving,
    invoke,
    leftovers,
    running_server,
    serve_environment_or_skip,
    variant_images,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    serve_environment_or_skip()
    if not (TESTSETS / "Set5").is_dir() or not (TESTSETS / "Set14").is_dir():
        pytest.skip(f"the test images are not at {TESTSETS} (../shared/testsets beside the repository)")
    base = tmp_path_factory.mktemp("serving-exports")
    return {model_id: export_for_serving(model_id, base / model_id) for model_id in ("esrt-x2", "swinir-s-x2")}


@pytest.fixture(scope="module")
def repo(exports, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("triton") / "models"
    result = invoke("triton", *exports.values(), "--repo", folder, "--runtime", "python-ort", "--max-pixels", str(TEST_MAX_PIXELS))
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def triton(repo):
    with running_server(repo) as running:
        yield running


def local_run(export_dir: Path, inputs: list[Path], out: Path) -> Path:
    result = invoke("run", export_dir, *inputs, "-o", out, "--backend", "ort")
    assert result.exit_code == 0, result.output
    return out


def assert_same_files(expected_dir: Path, actual_dir: Path, names: list[str]) -> None:
    for name in names:
        expected, actual = expected_dir / name, actual_dir / name
        assert actual.is_file(), f"{actual} missing"
        if expected.read_bytes() != actual.read_bytes():
            a, b = cv2.imread(str(expected), cv2.IMREAD_UNCHANGED), cv2.imread(str(actual), cv2.IMREAD_UNCHANGED)
            diff = int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max()) if a.shape == b.shape else f"shapes {a.shape} vs {b.shape}"
            pytest.fail(f"{name}: server output differs from `deploytool run` (max |diff| {diff})")


@pytest.mark.parametrize(
    "model_id, sets",
    [
        # ESRT at its real size is the slow one on CPU: Set5 plus two Set14 images (bridge is gray)
        # keeps the module short; the tiny SwinIR takes both sets whole
        ("esrt-x2", {"Set5": None, "Set14": ["bridgex2.png", "facex2.png"]}),
        ("swinir-s-x2", {"Set5": None, "Set14": None}),
    ],
)
def test_set5_and_set14_through_the_server_equal_local_run(triton, exports, model_id, sets, tmp_path):
    inputs = []
    for name, chosen in sets.items():
        folder = TESTSETS / name / "LR_bicubic" / "X2"
        inputs += sorted(folder.iterdir()) if chosen is None else [folder / c for c in chosen]
    local = local_run(exports[model_id], inputs, tmp_path / "local")
    result = invoke("client", triton.url, model_id, *inputs, "-o", tmp_path / "served", "--concurrency", 4, "--json")
    assert result.exit_code == 0, result.output
    assert_same_files(local, tmp_path / "served", [p.name for p in inputs])
    assert not leftovers(tmp_path / "served")


def test_16_bit_alpha_and_gray_inputs_come_back_as_run_writes_them(triton, exports, tmp_path):
    variants = variant_images(TESTSETS / "Set5" / "LR_bicubic" / "X2" / "butterflyx2.png", tmp_path / "inputs")
    local = local_run(exports["esrt-x2"], variants, tmp_path / "local")
    result = invoke("client", triton.url, "esrt-x2", *variants, "-o", tmp_path / "served")
    assert result.exit_code == 0, result.output
    assert_same_files(local, tmp_path / "served", [p.name for p in variants])
    # the formats kept: 16-bit stays 16-bit, alpha stays, gray stays gray
    assert cv2.imread(str(tmp_path / "served" / "rgb16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert cv2.imread(str(tmp_path / "served" / "rgba16.png"), cv2.IMREAD_UNCHANGED).shape[2] == 4
    assert cv2.imread(str(tmp_path / "served" / "gray8.png"), cv2.IMREAD_UNCHANGED).ndim == 2


def test_eight_concurrent_clients_lose_nothing(triton, exports, tmp_path):
    """8 clients x 5 distinct images at once: every result present and equal to the local run."""
    rng = np.random.default_rng(1)
    source = cv2.imread(str(TESTSETS / "Set14" / "LR_bicubic" / "X2" / "lennax2.png"), cv2.IMREAD_COLOR)
    folders = []
    for client in range(8):
        folder = tmp_path / f"in{client}"
        folder.mkdir()
        for index in range(5):
            top, left = rng.integers(0, source.shape[0] - 48), rng.integers(0, source.shape[1] - 56)
            cv2.imwrite(str(folder / f"c{client}_{index}.png"), source[top : top + 40 + index, left : left + 48 + client])
        folders.append(folder)
    everything = sorted(p for folder in folders for p in folder.iterdir())
    local = local_run(exports["swinir-s-x2"], everything, tmp_path / "local")

    reports, errors = {}, []

    def one_client(index: int) -> None:
        try:
            reports[index] = restore_remote(triton.url, "swinir-s-x2", [folders[index]], tmp_path / f"out{index}", concurrency=1)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads), "a client did not finish in 240 s"
    assert not errors, errors
    assert sum(len(report.images) for report in reports.values()) == 40
    assert all(not report.failures for report in reports.values())
    for index, folder in enumerate(folders):
        assert_same_files(local, tmp_path / f"out{index}", sorted(p.name for p in folder.iterdir()))


def test_a_corrupt_and_an_over_limit_image_fail_alone(triton, exports, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = ["babyx2.png", "birdx2.png", "headx2.png"]
    for name in good:
        (inputs / name).write_bytes((TESTSETS / "Set5" / "LR_bicubic" / "X2" / name).read_bytes())
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    side = int(TEST_MAX_PIXELS**0.5) + 20
    cv2.imwrite(str(inputs / "huge.png"), np.full((side, side, 3), 128, np.uint8))
    result = invoke("client", triton.url, "swinir-s-x2", inputs, "-o", tmp_path / "served", "--concurrency", 3)
    line = assert_one_line_error(result, "2 of 5 image(s) failed")
    assert "corrupt.png" in result.stderr and "not a readable image" in result.stderr, result.stderr
    assert "huge.png" in result.stderr and f"over this model's limit of {TEST_MAX_PIXELS}" in result.stderr, result.stderr
    assert "Traceback" not in result.output, line
    local = local_run(exports["swinir-s-x2"], [inputs / name for name in good], tmp_path / "local")
    assert_same_files(local, tmp_path / "served", good)
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == good


def test_a_request_the_model_cannot_take_is_refused_with_the_servers_reason(triton):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(triton.url.removeprefix("http://"))
    try:
        tensor = httpclient.InferInput("image_uint8", [4, 4, 5], "UINT8")
        tensor.set_data_from_numpy(np.zeros((4, 4, 5), np.uint8))
        with pytest.raises(InferenceServerException, match="5 channels; send 1 .gray., 2 .gray.alpha., 3 .RGB. or 4 .RGBA."):
            client.infer("swinir-s-x2", [tensor])
        # FP32 samples out of [0, 1] are refused, not clipped
        tensor = httpclient.InferInput("image_fp32", [8, 8, 3], "FP32")
        tensor.set_data_from_numpy(np.full((8, 8, 3), 2.0, np.float32))
        with pytest.raises(InferenceServerException, match=r"FP32 samples must lie in \[0, 1\]"):
            client.infer("swinir-s-x2", [tensor])
        # the server still answers afterwards, FP32 in, FP32 out
        tensor = httpclient.InferInput("image_fp32", [16, 16, 3], "FP32")
        tensor.set_data_from_numpy(np.full((16, 16, 3), 0.4, np.float32))
        restored = client.infer("swinir-s-x2", [tensor], outputs=[httpclient.InferRequestedOutput("restored_fp32")]).as_numpy("restored_fp32")
        assert restored.shape == (32, 32, 3) and restored.dtype == np.float32
    finally:
        client.close()


def test_unreachable_server_and_unknown_model_are_one_line(triton, tmp_path):
    image = TESTSETS / "Set5" / "LR_bicubic" / "X2" / "birdx2.png"
    nobody = f"http://127.0.0.1:{server.free_port()}"
    assert_one_line_error(invoke("client", nobody, "esrt-x2", image, "-o", tmp_path / "a"), "cannot reach a Triton server at", nobody)
    assert_one_line_error(invoke("client", triton.url, "no-such-model", image, "-o", tmp_path / "b"), "model no-such-model is not ready", "esrt-x2")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_server_killed_mid_run_ends_the_client_in_one_line_without_partial_files(repo, tmp_path):
    inputs = sorted((TESTSETS / "Set14" / "LR_bicubic" / "X2").iterdir())
    out = tmp_path / "served"
    with running_server(repo) as doomed:
        client = subprocess.Popen(
            [sys.executable, "-m", "deploytool", "client", doomed.url, "esrt-x2", *map(str, inputs), "-o", str(out), "--concurrency", "2"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # kill once the client is mid-run: a first result written (bounded wait)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and client.poll() is None and not any(out.glob("*.png")):
                time.sleep(0.1)
            assert client.poll() is None, f"the client ended before the server was killed: {client.communicate()}"
            os.killpg(doomed.process.pid, signal.SIGKILL)
            _, stderr = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    assert client.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: lost the Triton server at") and "Traceback" not in stderr, stderr
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < len(inputs)
    assert not leftovers(out)
    assert all(cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None for path in written)


def test_deploytool_serve_waits_for_the_models_and_stops_on_ctrl_c(repo):
    """Started with SIGINT ignored, as a background job of a non-interactive shell (CI) starts it:
    Ctrl-C (SIGINT) still stops it."""
    port = server.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "deploytool", "serve", str(repo), "--http-port", str(port)],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert process.stderr.readline().startswith("starting tritonserver on")
        line = process.stderr.readline()  # printed once the models are ready
        assert line.startswith(f"serving 4 model(s) at http://127.0.0.1:{port}"), line
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.terminate()  # serve stops its tritonserver on SIGTERM too; SIGKILL would leave it running
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, rest
    assert "stopping tritonserver" in rest and "Traceback" not in rest
    assert not server.is_ready(f"http://127.0.0.1:{port}"), "tritonserver still answers after Ctrl-C"
