"""The OpenVINO backend: FP32 inference precision, FP32 tolerances, a compiled-model cache keyed by
graph and OpenVINO build, devices refused in one line, and the missing package named."""

import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from deploytool.cli import cli
from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends import OPENVINO, ORT, TORCH, open_runner
from deploytool.runtime.backends import openvino as backend
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import FP32_FILE, read_manifest
from deploytool.verify import parity
from tests.helpers import assert_one_line_error, export_tiny, write_test_png

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed: pip install deploytool[openvino] (the test extra has it)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino") / "swinir-s-x2"
    export_tiny("swinir-s-x2", out, fp16=False)
    return out


def _cache_files(export_dir):
    root = export_dir / backend.CACHE_FOLDER
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@needs_openvino
def test_runs_the_fp32_graph_in_f32_within_fp32_tolerances(exported):
    manifest = read_manifest(exported)
    batch = synthetic_batch(manifest.input.shape, seed=5)
    with open_runner(exported, manifest, OPENVINO) as runner, open_runner(exported, manifest, ORT) as reference:
        assert runner.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
        assert runner.device == "openvino CPU" and runner.input_shape == tuple(manifest.input.shape)
        out, expected = runner(batch), reference(batch)
    assert out.shape == expected.shape == tuple(manifest.output.shape) and out.dtype == np.float32
    assert np.abs(out - expected).max() <= manifest.tolerances["onnx_max_abs"]
    assert parity.pair_limits(OPENVINO, manifest.tolerances, tiled=False) == parity.pair_limits(ORT, manifest.tolerances, tiled=False)


@needs_openvino
def test_verify_judges_openvino_against_the_original(exported):
    report = parity.verify(exported, backends=["original", OPENVINO], synthetic_batches=1)
    rows = [c for c in report["comparisons"] if c["candidate"] == OPENVINO]
    assert report["passed"] and rows and all(r["passed"] and r["limits"].startswith("max|d|<=") for r in rows)


@needs_openvino
def test_a_second_run_imports_the_cached_blob_instead_of_compiling(exported, tmp_path):
    exported = shutil.copytree(exported, tmp_path / "export", ignore=shutil.ignore_patterns(backend.CACHE_FOLDER))
    manifest = read_manifest(exported)
    image = write_test_png(tmp_path / "in.png", 3)
    assert _cache_files(exported) == {}
    first = invoke("run", exported, image, "-o", tmp_path / "first.png", "--backend", OPENVINO)
    assert first.exit_code == 0, first.output
    cached = _cache_files(exported)
    folder = exported / backend.CACHE_FOLDER / backend.cache_key(manifest.files[FP32_FILE].sha256, backend.openvino_build(), "CPU")
    blobs = [p for p in cached if p.suffix == ".blob"]
    assert blobs and all(p.parent == folder for p in blobs), sorted(cached)
    second = invoke("run", exported, image, "-o", tmp_path / "second.png", "--backend", OPENVINO)
    assert second.exit_code == 0, second.output
    assert _cache_files(exported) == cached  # nothing new written, nothing rewritten
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()


def test_the_cache_key_changes_with_graph_build_device_and_precision():
    key = backend.cache_key("a" * 64, "2026.4.1-1", "CPU")
    others = [
        backend.cache_key("b" * 64, "2026.4.1-1", "CPU"),
        backend.cache_key("a" * 64, "2026.5.0-1", "CPU"),
        backend.cache_key("a" * 64, "2026.4.1-1", "GPU"),
        backend.cache_key("a" * 64, "2026.4.1-1", "CPU", "bf16"),
    ]
    assert len({key, *others}) == 5 and key == backend.cache_key("a" * 64, "2026.4.1-1", "CPU")


def test_devices_openvino_does_not_see_are_refused_listing_those_it_does():
    backend.check_device("CPU", ["CPU"])
    backend.check_device("GPU", ["CPU", "GPU.0", "GPU.1"])
    backend.check_device("GPU.1", ["CPU", "GPU.0", "GPU.1"])
    for device, seen in (("GPU", ["CPU"]), ("NPU", ["CPU", "GPU"]), ("GPU.2", ["CPU", "GPU.0", "GPU.1"])):
        with pytest.raises(BackendUnavailable) as error:
            backend.check_device(device, seen)
        assert str(error.value) == f"OpenVINO sees no {device} device on this machine; it sees: {', '.join(seen)}"


@needs_openvino
def test_run_on_a_device_that_is_not_there_fails_in_one_line(exported, tmp_path):
    image = write_test_png(tmp_path / "in.png", 3)
    missing = next(d for d in ("NPU", "GPU", "HETERO.XYZ") if d not in backend.available_devices())
    result = invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", OPENVINO, "--device", missing)
    assert_one_line_error(result, f"OpenVINO sees no {missing} device", "it sees: CPU")
    assert not (tmp_path / "out.png").exists()
    for other in (ORT, TORCH):  # torch opens through deploytool.build.runners, the others through the runtime
        assert_one_line_error(
            invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", other, "--device", "CPU"),
            f"--device applies to the openvino and openvino-bf16 backends, not {other}",
        )
        assert not (tmp_path / "out.png").exists()


def test_without_openvino_the_command_names_the_extra(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    image = write_test_png(tmp_path / "in.png", 3)
    assert_one_line_error(invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", OPENVINO), "pip install deploytool[openvino]")
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(DeployError, match=r"^OpenVINO is not installed: pip install deploytool\[openvino\]$"):
        backend.require_openvino()


@needs_openvino
def test_bench_and_doctor_know_the_backend(exported):
    result = invoke("bench", exported, "--backend", f"{ORT},{OPENVINO}", "--runs", "1", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
    assert [r["backend"] for r in json.loads(result.stdout)["results"]] == [ORT, OPENVINO]
    doctor = json.loads(invoke("doctor", "--json").stdout)
    assert doctor["facts"]["openvino"] and "CPU" in doctor["facts"]["openvino_devices"]
    assert OPENVINO in doctor["capabilities"]["run"] and "OpenVINO on CPU" in doctor["capabilities"]["run"]
