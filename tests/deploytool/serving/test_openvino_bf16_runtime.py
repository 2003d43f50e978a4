"""`deploytool triton --runtime openvino-bf16`: the export's BF16 plan served by a Python-backend
tile model that runs deploytool's own openvino-bf16 backend (f32 inference precision, so the plan's
FP32 islands stay FP32). Triton's OpenVINO backend cannot serve the plan: the CPU properties it
sets are INFERENCE_NUM_THREADS, COMPILATION_NUM_THREADS, HINT_BF16 (YES only), NUM_STREAMS and
PERFORMANCE_HINT, none of them f32 inference precision.

The repository is parsed with Triton's own protobuf schema; a CPU without BF16 is refused in one
line when the repository is written and when the tile model loads; through a real tritonserver
(127.0.0.1, a free port, started once) the results equal `deploytool run --backend openvino-bf16`'s
byte for byte: the same graph compiled with the same OpenVINO settings on the same CPU, tiled by
the same tiler.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from deploytool.errors import BackendUnavailable
from deploytool.runtime.backends import openvino as fp32_backend
from deploytool.runtime.backends import openvino as openvino_bf16
from deploytool.runtime.manifest import BF16_FILE, MANIFEST_FILE, read_manifest
from deploytool.serving.repository import RepositoryOptions, write_repository
from deploytool.serving.triton_models import BackendTileModel
from tests.helpers import needs_bf16_cpu, needs_openvino
from tests.triton_server import (
    TESTSETS,
    assert_one_line_error,
    config_parameters,
    export_for_serving,
    invoke,
    read_config,
    running_server,
    serve_environment_or_skip,
)

pytestmark = pytest.mark.timeout(300)

RUNTIME = openvino_bf16.TRITON_OPENVINO_BF16.name
MODEL_ID = "swinir-s-x2"
TILES = f"{MODEL_ID}-tiles"
WITH_BF16 = ["BF16", "FP32", "INT8"]  # OPTIMIZATION_CAPABILITIES of a CPU with AVX-512 BF16 or AMX
WITHOUT_BF16 = ["FP32", "INT8"]
REFUSAL = "openvino-bf16 needs BF16 arithmetic (on a CPU: AVX-512 BF16 or AMX); OpenVINO's CPU offers FP32, INT8, without BF16"


def cpu_offers(monkeypatch, capabilities: list[str]) -> None:
    """OpenVINO's CPU reports `capabilities` (a CPU with or without BF16, whatever this one is)."""
    monkeypatch.setattr(openvino_bf16, "device_capabilities", lambda core, device: capabilities)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    # one tiny export with a BF16 plan for the whole module
    return export_for_serving(MODEL_ID, tmp_path_factory.mktemp("bf16-serving") / MODEL_ID, bf16=True)


@needs_openvino
def test_the_tile_model_runs_the_backend_on_the_bf16_plan_in_a_python_model(export_dir, tmp_path, monkeypatch):
    cpu_offers(monkeypatch, WITH_BF16)
    repo, said = tmp_path / "models", []
    written = write_repository([export_dir], repo, RepositoryOptions(runtime=RUNTIME, instances=2), progress=said.append)
    assert [(m.name, m.kind, m.source) for m in written] == [(TILES, "tiles", BF16_FILE), (MODEL_ID, "whole-image", MANIFEST_FILE)]
    manifest = read_manifest(export_dir)

    tiles = read_config(repo / TILES / "config.pbtxt")
    assert (tiles.name, tiles.backend, tiles.platform, tiles.max_batch_size) == (TILES, "python", "", 0)
    assert [(t.name, t.data_type, list(t.dims)) for t in tiles.input] == [(manifest.input.name, mc.TYPE_FP32, list(manifest.input.shape))]
    assert [(t.name, t.data_type, list(t.dims)) for t in tiles.output] == [(manifest.output.name, mc.TYPE_FP32, list(manifest.output.shape))]
    assert [(g.count, g.kind, list(g.gpus)) for g in tiles.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU, [])]
    assert config_parameters(tiles) == {"backend": openvino_bf16.OPENVINO_BF16}
    version = repo / TILES / "1"
    assert sorted(p.name for p in version.iterdir()) == sorted([BF16_FILE, MANIFEST_FILE, "model.py"])
    for name in (BF16_FILE, MANIFEST_FILE):
        assert (version / name).read_bytes() == (export_dir / name).read_bytes(), name
    code = (version / "model.py").read_text()
    assert "BackendTileModel as TritonPythonModel" in code
    compile(code, "model.py", "exec")

    whole = read_config(repo / MODEL_ID / "config.pbtxt")
    assert config_parameters(whole)["tile_model"] == TILES and whole.instance_group[0].count == 4
    assert any("the server's CPU needs BF16 arithmetic" in line for line in said), said


@needs_openvino
def test_a_cpu_without_bf16_is_refused_when_the_repository_is_written(export_dir, tmp_path, monkeypatch):
    cpu_offers(monkeypatch, WITHOUT_BF16)
    assert_one_line_error(invoke("triton", export_dir, "--repo", tmp_path / "models", "--runtime", RUNTIME), REFUSAL)
    assert not (tmp_path / "models").exists()


def _load_args(repo: Path, name: str) -> dict[str, str]:
    """What Triton's Python backend passes a model's `initialize`: its config as JSON (the
    protobuf's JSON form, field names as in config.pbtxt), its folder and version."""
    config = json_format.MessageToDict(read_config(repo / name / "config.pbtxt"), preserving_proto_field_name=True)
    return {"model_config": json.dumps(config), "model_repository": str(repo / name), "model_version": "1"}


@needs_openvino
def test_a_cpu_without_bf16_fails_the_tile_models_load_in_one_line(export_dir, tmp_path, monkeypatch):
    """A repository written on a BF16 machine, loaded on one without: the model's `initialize`
    raises the backend's refusal (Triton then fails the load with it, and `serve` says it in one
    line), before anything is compiled or cached."""
    cpu_offers(monkeypatch, WITH_BF16)
    repo = tmp_path / "models"
    write_repository([export_dir], repo, RepositoryOptions(runtime=RUNTIME))
    cpu_offers(monkeypatch, WITHOUT_BF16)
    with pytest.raises(BackendUnavailable) as refused:
        BackendTileModel().initialize(_load_args(repo, TILES))
    assert str(refused.value) == REFUSAL
    assert not (repo / TILES / "1" / fp32_backend.CACHE_FOLDER).exists()


def _run(export_dir: Path, inputs: list[Path], out: Path, backend: str) -> Path:
    result = invoke("run", export_dir, *inputs, "-o", out, "--backend", backend)
    assert result.exit_code == 0, result.output
    return out


@needs_bf16_cpu
def test_results_through_triton_equal_run_with_the_openvino_bf16_backend(export_dir, tmp_path):
    serve_environment_or_skip()
    if not (TESTSETS / "Set5").is_dir():
        pytest.skip(f"the test images are not at {TESTSETS} (../shared/testsets beside the repository)")
    inputs = sorted((TESTSETS / "Set5" / "LR_bicubic" / "X2").iterdir())
    repo = tmp_path / "models"
    written = invoke("triton", export_dir, "--repo", repo, "--runtime", RUNTIME)
    assert written.exit_code == 0, written.output
    local = _run(export_dir, inputs, tmp_path / "local", openvino_bf16.OPENVINO_BF16)
    with running_server(repo) as triton:
        result = invoke("client", triton.url, MODEL_ID, *inputs, "-o", tmp_path / "served", "--concurrency", 2)
    assert result.exit_code == 0, result.output
    differing = [p.name for p in inputs if (local / p.name).read_bytes() != (tmp_path / "served" / p.name).read_bytes()]
    assert not differing, f"served results differ from `deploytool run --backend openvino-bf16`: {differing}"
    # the server compiled into the tile model's own cache folder, keyed like `run`'s
    key = fp32_backend.cache_key(read_manifest(export_dir).files[BF16_FILE].sha256, fp32_backend.openvino_build(), "CPU")
    assert list((repo / TILES / "1" / fp32_backend.CACHE_FOLDER / key).glob("*.blob"))
    # and it ran BF16 arithmetic: FP32's results differ
    fp32 = _run(export_dir, inputs, tmp_path / "fp32", "ort")
    assert any((fp32 / p.name).read_bytes() != (local / p.name).read_bytes() for p in inputs)
