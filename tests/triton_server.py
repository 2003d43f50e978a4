"""Shared helpers for the Triton serving tests: exports to serve, a real tritonserver, image fixtures."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from deploytool.build import export, registry
from deploytool.build.networks import resolve_source
from deploytool.errors import DeployError
from deploytool.serving import server
from tests.helpers import cli_runner, export_tiny, run_trace_cache

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
ESRT_WEIGHTS = SHARED / "weights" / "esrt_x2_partial_epoch20.pth"
TESTSETS = SHARED / "testsets"
# small enough that a synthetic image can exceed it cheaply, larger than every Set5/Set14 x2 input
TEST_MAX_PIXELS = 200_000


def serve_environment_or_skip() -> server.ServerEnvironment:
    """The server environment; a skip where there is none, a failure (naming the fix) where the
    one there cannot serve this source, e.g. it holds a deploytool older than this one."""
    try:
        return server.find_environment()
    except DeployError as exc:
        if not (server.SOURCE_ROOT / server.DEFAULT_ENV_NAME / "bin" / "python").is_file() and not os.environ.get(server.SERVE_ENV_VARIABLE):
            pytest.skip(f"no Triton server environment ({exc})")
        pytest.fail(f"the Triton server environment cannot serve this source: {exc}")


def export_for_serving(model_id: str, out_dir: Path, *, bf16: bool = False) -> Path:
    """ESRT x2 with the real epoch-20 weights (../shared) at a 64 px tile when present; every
    other id (and ESRT without them, or with `bf16`) as a tiny seeded export. No FP16 graph:
    python-ort serves model.onnx; `bf16` adds the BF16 plan the openvino-bf16 runtime serves."""
    if bf16:
        export_tiny(model_id, out_dir, fp16=False, bf16=True, tile=(48, 48), batch=2)
    elif model_id == "esrt-x2" and ESRT_WEIGHTS.is_file():
        entry = registry.get(model_id)
        source = resolve_source(entry, weights=ESRT_WEIGHTS)
        export.export(
            export.ExportRequest(
                entry=entry, source=source, out_dir=out_dir, tile=(64, 64), batch=1, fp16=False, calibration_count=2, trace_cache=run_trace_cache()
            )
        )
    else:
        # a 48 px tile (the tiny default, 16, means thousands of tiles per image); batch 2: the
        # server fills the last batch up, as `run` does
        export_tiny(model_id, out_dir, fp16=False, tile=(48, 48), batch=2)
    return out_dir


@contextlib.contextmanager
def running_server(repo: Path) -> Iterator[server.TritonServer]:
    """tritonserver on `repo`, on 127.0.0.1 and a free port, stopped whatever happens."""
    triton = server.TritonServer(repo, host="127.0.0.1", http_port=server.free_port())
    triton.ready_timeout = 120
    with triton:
        yield triton


def variant_images(source: Path, out_dir: Path, size: int = 72) -> list[Path]:
    """From a crop of one 8-bit RGB image: 16-bit RGB, RGBA (8 and 16 bit), gray, gray+alpha, as PNGs."""
    bgr = cv2.imread(str(source), cv2.IMREAD_COLOR)[:size, : size + 8]
    height, width = bgr.shape[:2]
    rng = np.random.default_rng(0)
    deep = (bgr.astype(np.uint16) * 257 + rng.integers(0, 257, bgr.shape, dtype=np.uint16)).astype(np.uint16)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    alpha8 = ramp.astype(np.uint8)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    variants = {
        "rgb16.png": deep,
        "rgba8.png": np.dstack([bgr, alpha8]),
        "rgba16.png": np.dstack([deep, alpha8.astype(np.uint16) * 257]),
        "gray8.png": gray,
        "gray16.png": gray.astype(np.uint16) * 257,
        "gray_alpha8.png": np.dstack([gray, gray, gray, alpha8]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, samples in variants.items():
        path = out_dir / name
        assert cv2.imwrite(str(path), samples)
        paths.append(path)
    return paths


def read_config(path: Path) -> mc.ModelConfig:
    """A config.pbtxt parsed with Triton's own protobuf schema (refusing any field it does not have)."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def config_parameters(config: mc.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def invoke(*args):
    from deploytool.cli import cli

    return cli_runner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments) -> str:
    """Exit status 2 and a last stderr line `error: ...` holding every fragment; no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    assert all(fragment in lines[-1] for fragment in fragments), lines[-1]
    return lines[-1]


def leftovers(folder: Path) -> list[Path]:
    """Temporary files an interrupted atomic write would leave (fileio.atomic_path's `.part`)."""
    return [p for p in folder.rglob("*") if ".part" in p.name]
