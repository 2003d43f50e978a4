"""The repository `deploytool triton` writes, every config.pbtxt parsed with Triton's own protobuf
schema (tritonclient's model_config). The trt and onnx runtimes cannot run here (no GPU, and the
wheel's server has only the Python backend): their configs and files are what is checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends import TRITON_ONNX, TRITON_OPENVINO, TRITON_PYTHON_ORT, TRITON_TRT, openvino
from deploytool.runtime.backends.tensorrt import run as trt_backend
from deploytool.runtime.fileio import sha256_file
from deploytool.runtime.manifest import EngineRecord, read_manifest
from deploytool.serving import repository
from deploytool.serving.repository import RepositoryOptions, parse_gpus, parse_pixels, write_repository
from tests.helpers import export_tiny, needs_openvino
from tests.triton_server import assert_one_line_error, config_parameters, invoke, read_config

ENGINE = "model.sm90-trt10.13.0.engine"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports") / "esrt-x2"
    export_tiny("esrt-x2", folder, fp16=True, tile=(32, 32))
    return folder


@pytest.fixture
def with_engine(export_dir, tmp_path):
    """A copy of the export with an engine record: bytes standing in for a plan (Triton is not
    asked to load it here), recorded as `deploytool build` records one."""
    folder = tmp_path / "esrt-x2"
    shutil.copytree(export_dir, folder)
    (folder / ENGINE).write_bytes(b"a TensorRT plan stands here")
    record = EngineRecord(
        sha256=sha256_file(folder / ENGINE),
        bytes=(folder / ENGINE).stat().st_size,
        gpu="NVIDIA H100",
        compute_capability=(9, 0),
        tensorrt="10.13.0",
        plan={"graph": "model_fp16.onnx", "strongly_typed": True},
        workspace_bytes=1 << 32,
        opt_level=3,
        timing_cache="timing.cache",
        build_seconds=1.0,
    )
    read_manifest(folder).with_engine(ENGINE, record).write(folder)
    return folder


def test_python_ort_repository(export_dir, tmp_path):
    repo = tmp_path / "models"
    written = write_repository([export_dir], repo, RepositoryOptions(runtime=TRITON_PYTHON_ORT, instances=2, max_pixels=parse_pixels("4M")))
    assert [(m.name, m.kind) for m in written] == [("esrt-x2-tiles", "tiles"), ("esrt-x2", "whole-image")]
    manifest = read_manifest(export_dir)

    tiles = read_config(repo / "esrt-x2-tiles" / "config.pbtxt")
    assert (tiles.name, tiles.backend, tiles.platform, tiles.max_batch_size) == ("esrt-x2-tiles", "python", "", 0)
    assert [(t.name, t.data_type, list(t.dims)) for t in tiles.input] == [(manifest.input.name, mc.TYPE_FP32, list(manifest.input.shape))]
    assert [(t.name, t.data_type, list(t.dims)) for t in tiles.output] == [(manifest.output.name, mc.TYPE_FP32, list(manifest.output.shape))]
    assert [(g.count, g.kind, list(g.gpus)) for g in tiles.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU, [])]
    assert (repo / "esrt-x2-tiles" / "1" / "model.onnx").read_bytes() == (export_dir / "model.onnx").read_bytes()
    assert "OrtTileModel as TritonPythonModel" in (repo / "esrt-x2-tiles" / "1" / "model.py").read_text()

    whole = read_config(repo / "esrt-x2" / "config.pbtxt")
    assert (whole.name, whole.backend, whole.max_batch_size) == ("esrt-x2", "python", 0)
    inputs = {t.name: (t.data_type, list(t.dims), t.optional) for t in whole.input}
    assert inputs == {
        "image_uint8": (mc.TYPE_UINT8, [-1, -1, -1], True),
        "image_uint16": (mc.TYPE_UINT16, [-1, -1, -1], True),
        "image_fp32": (mc.TYPE_FP32, [-1, -1, -1], True),
    }
    assert {t.name: t.data_type for t in whole.output} == {"restored_uint8": mc.TYPE_UINT8, "restored_uint16": mc.TYPE_UINT16, "restored_fp32": mc.TYPE_FP32}
    # two whole-image instances per tile instance
    assert [(g.count, g.kind) for g in whole.instance_group] == [(4, mc.ModelInstanceGroup.KIND_CPU)]
    assert config_parameters(whole) == {"tile_model": "esrt-x2-tiles", "max_pixels": "4000000", "views": "image", "overlap": str(manifest.overlap())}
    assert json.loads((repo / "esrt-x2" / "1" / "manifest.json").read_text()) == json.loads((export_dir / "manifest.json").read_text())
    compile((repo / "esrt-x2" / "1" / "model.py").read_text(), "model.py", "exec")


def test_onnx_runtime_serves_the_fp16_graph_on_gpus_or_fp32_when_asked(export_dir, tmp_path):
    repo = tmp_path / "models"
    write_repository([export_dir], repo, RepositoryOptions(runtime=TRITON_ONNX, instances=2, gpus=(0, 1)))
    tiles = read_config(repo / "esrt-x2-tiles" / "config.pbtxt")
    assert (tiles.backend, tiles.default_model_filename) == ("onnxruntime", "model.onnx")
    assert [(g.count, g.kind, list(g.gpus)) for g in tiles.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU, [0, 1])]
    assert (repo / "esrt-x2-tiles" / "1" / "model.onnx").read_bytes() == (export_dir / "model_fp16.onnx").read_bytes()
    assert not (repo / "esrt-x2-tiles" / "1" / "model.py").exists()
    # 2 instances on each of 2 GPUs: 8 whole-image instances keep them fed
    assert read_config(repo / "esrt-x2" / "config.pbtxt").instance_group[0].count == 8

    write_repository([export_dir], repo, RepositoryOptions(runtime=TRITON_ONNX, fp32=True))
    assert (repo / "esrt-x2-tiles" / "1" / "model.onnx").read_bytes() == (export_dir / "model.onnx").read_bytes()
    tiles = read_config(repo / "esrt-x2-tiles" / "config.pbtxt")
    assert [(g.count, list(g.gpus)) for g in tiles.instance_group] == [(1, [])]  # every GPU


def test_openvino_runtime_serves_the_fp32_graph_with_the_backends_documented_parameters(export_dir, tmp_path):
    """Triton's OpenVINO backend (not in the wheel's server, so not loaded here): its config, with
    only parameter keys its source reads (src/openvino.cc sets no other; it would ignore them), one
    stream per instance."""
    repo = tmp_path / "models"
    said = []
    write_repository([export_dir], repo, RepositoryOptions(runtime=TRITON_OPENVINO), progress=said.append)
    tiles = read_config(repo / "esrt-x2-tiles" / "config.pbtxt")
    manifest = read_manifest(export_dir)
    assert (tiles.backend, tiles.platform, tiles.default_model_filename, tiles.max_batch_size) == ("openvino", "", "model.onnx", 0)
    assert [(t.name, t.data_type, list(t.dims)) for t in tiles.input] == [(manifest.input.name, mc.TYPE_FP32, list(manifest.input.shape))]
    assert [(t.name, t.data_type, list(t.dims)) for t in tiles.output] == [(manifest.output.name, mc.TYPE_FP32, list(manifest.output.shape))]
    assert [(g.count, g.kind, list(g.gpus)) for g in tiles.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU, [])]
    assert config_parameters(tiles) == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    assert sorted(p.name for p in (repo / "esrt-x2-tiles" / "1").iterdir()) == ["model.onnx"]
    assert (repo / "esrt-x2-tiles" / "1" / "model.onnx").read_bytes() == (export_dir / "model.onnx").read_bytes()
    assert read_config(repo / "esrt-x2" / "config.pbtxt").instance_group[0].count == 2
    assert any("cannot pin f32 inference precision" in line for line in said)

    write_repository([export_dir], repo, RepositoryOptions(runtime=TRITON_OPENVINO, instances=3))
    tiles = read_config(repo / "esrt-x2-tiles" / "config.pbtxt")
    assert tiles.instance_group[0].count == 3 and config_parameters(tiles) == {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "3"}
    # the CPU properties src/openvino.cc reads (ParseParameters(device)), and its device-independent keys
    cpu_keys = {"INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS", "HINT_BF16", "NUM_STREAMS", "PERFORMANCE_HINT"}
    documented = cpu_keys | {"CPU_EXTENSION_PATH", "SKIP_OV_DYNAMIC_BATCHSIZE", "ENABLE_BATCH_PADDING", "RESHAPE_IO_LAYERS"}
    assert set(config_parameters(tiles)) <= documented
    with pytest.raises(DeployError, match="the openvino runtime runs on the CPU"):
        write_repository([export_dir], tmp_path / "other", RepositoryOptions(runtime=TRITON_OPENVINO, gpus=(0,)))


def test_trt_runtime_serves_the_engine_built_for_the_gpu(with_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(trt_backend, "current_target", lambda: ((9, 0), "10.13.0"))
    repo = tmp_path / "models"
    write_repository([with_engine], repo, RepositoryOptions(runtime=TRITON_TRT, gpus=(1,)))
    tiles = read_config(repo / "esrt-x2-tiles" / "config.pbtxt")
    assert (tiles.platform, tiles.backend, tiles.default_model_filename) == ("tensorrt_plan", "", "model.plan")
    assert [(g.count, g.kind, list(g.gpus)) for g in tiles.instance_group] == [(1, mc.ModelInstanceGroup.KIND_GPU, [1])]
    assert (repo / "esrt-x2-tiles" / "1" / "model.plan").read_bytes() == (with_engine / ENGINE).read_bytes()

    monkeypatch.setattr(trt_backend, "current_target", lambda: ((8, 6), "10.13.0"))
    with pytest.raises(DeployError, match=r"no engine for this GPU \(sm86\).*deploytool build"):
        write_repository([with_engine], tmp_path / "other", RepositoryOptions(runtime=TRITON_TRT))


def test_trt_without_a_tensorrt_gpu_here_takes_the_only_engine(with_engine, tmp_path, monkeypatch):
    def no_gpu():
        raise BackendUnavailable("no GPU")

    monkeypatch.setattr(trt_backend, "current_target", no_gpu)
    write_repository([with_engine], tmp_path / "models", RepositoryOptions(runtime=TRITON_TRT))
    assert (tmp_path / "models" / "esrt-x2-tiles" / "1" / "model.plan").read_bytes() == (with_engine / ENGINE).read_bytes()


def test_trt_without_an_engine_is_refused_with_the_build_command(export_dir, tmp_path):
    result = invoke("triton", export_dir, "--repo", tmp_path / "models")  # trt is the default runtime
    assert_one_line_error(result, "has no TensorRT engine", f"deploytool build {export_dir}")
    assert not (tmp_path / "models").exists()


def test_a_changed_export_file_is_refused_before_anything_is_written(export_dir, tmp_path):
    folder = tmp_path / "esrt-x2"
    shutil.copytree(export_dir, folder)
    with open(folder / "model.onnx", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(DeployError, match="changed since export"):
        write_repository([folder], tmp_path / "models", RepositoryOptions(runtime=TRITON_PYTHON_ORT))
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--runtime", "python-ort", "--gpus", "0"], "python-ort runtime runs on the CPU"),
        (["--runtime", "trt", "--fp32"], "--fp32 chooses model.onnx"),
        (["--runtime", "python-ort", "--instances", "0"], "--instances must be at least 1"),
        (["--runtime", "onnx", "--gpus", "0,x"], "--gpus '0,x'"),
        (["--runtime", "python-ort", "--max-pixels", "lots"], "--max-pixels 'lots'"),
        (["--runtime", "openvino-bf16", "--fp32"], "the openvino-bf16 runtime serves the BF16 plan (model_bf16.onnx)"),
        (["--runtime", "openvino-bf16", "--gpus", "0"], "the openvino-bf16 runtime runs on the CPU"),
    ],
)
def test_bad_options_are_one_line(export_dir, tmp_path, args, fragment):
    assert_one_line_error(invoke("triton", export_dir, "--repo", tmp_path / "models", *args), fragment)


@needs_openvino
def test_openvino_bf16_without_the_bf16_plan_names_the_export_to_make(export_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(openvino, "device_capabilities", lambda core, device: ["BF16", "FP32"])  # whatever this CPU offers
    result = invoke("triton", export_dir, "--repo", tmp_path / "models", "--runtime", "openvino-bf16")
    assert_one_line_error(result, f"{export_dir} has no model_bf16.onnx: export it with --precision fp16,bf16")
    assert not (tmp_path / "models").exists()


def test_the_same_export_twice_is_refused(export_dir, tmp_path):
    assert_one_line_error(invoke("triton", export_dir, export_dir, "--repo", tmp_path / "m", "--runtime", "python-ort"), "several exports are esrt-x2")


def test_rewriting_replaces_a_model_and_keeps_the_others(export_dir, tmp_path):
    repo = tmp_path / "models"
    (repo / "someone-else" / "1").mkdir(parents=True)
    write_repository([export_dir], repo, RepositoryOptions(runtime=TRITON_PYTHON_ORT, instances=1))
    result = invoke("triton", export_dir, "--repo", repo, "--runtime", "python-ort", "--instances", "3", "--json")
    assert result.exit_code == 0, result.output
    assert [m["name"] for m in json.loads(result.stdout)] == ["esrt-x2-tiles", "esrt-x2"]
    assert read_config(repo / "esrt-x2-tiles" / "config.pbtxt").instance_group[0].count == 3
    assert sorted(p.name for p in repo.iterdir()) == ["esrt-x2", "esrt-x2-tiles", "someone-else"]  # no staging folders left


def tree(folder) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


UNSAFE_IDS = ["./../victim", "..", "../../victim", "/tmp/deploytool-victim", "/", "a\0b", "x" * 4096]


@pytest.mark.tampered_manifests
@pytest.mark.parametrize("unsafe", UNSAFE_IDS)
def test_a_manifest_whose_model_id_is_a_path_writes_nothing_outside_the_repository(export_dir, tmp_path, unsafe):
    work = tmp_path / "work"
    folder = work / "exports" / "esrt-x2"
    shutil.copytree(export_dir, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["model_id"] = unsafe
    (folder / "manifest.json").write_text(json.dumps(data))
    (work / "victim").mkdir()
    (work / "victim" / "keep.txt").write_text("the victim's file")
    before = tree(tmp_path)
    message = assert_one_line_error(invoke("triton", folder, "--repo", work / "repo" / "models", "--runtime", "python-ort"), "model_id", "is not a model id")
    assert "\0" not in message
    assert tree(tmp_path) == before
    assert not Path("/tmp/deploytool-victim").exists() and not Path("/tmp/deploytool-victim-tiles").exists()


@pytest.mark.parametrize("unsafe", UNSAFE_IDS)
def test_the_repository_writer_keeps_every_model_folder_inside_the_repository(export_dir, tmp_path, monkeypatch, unsafe):
    """A manifest that did not come through read_manifest (built in code) is checked by the writer itself."""
    import dataclasses

    work = tmp_path / "work"
    (work / "victim").mkdir(parents=True)
    manifest = dataclasses.replace(read_manifest(export_dir), model_id=unsafe)
    monkeypatch.setattr(repository, "read_manifest", lambda folder: manifest)
    before = tree(tmp_path)
    with pytest.raises(DeployError, match="model name"):
        write_repository([export_dir], work / "repo", RepositoryOptions(runtime=TRITON_PYTHON_ORT))
    assert tree(tmp_path) == before


def test_pixel_counts_and_gpu_lists():
    assert parse_pixels("16M") == 16_000_000 and parse_pixels("500k") == 500_000 and parse_pixels("1.5M") == 1_500_000 and parse_pixels("4096") == 4096
    assert parse_gpus("0,1") == (0, 1) and parse_gpus(None) == ()
    for bad in ("0", "-3", "M", "12Q"):
        with pytest.raises(DeployError):
            parse_pixels(bad)
    with pytest.raises(DeployError, match="distinct"):
        parse_gpus("1,1")


def test_text_format_escapes_strings():
    text = repository.to_pbtxt({"name": 'a "quoted" \\ name', "parameters": [{"key": "k", "value": {"string_value": "v"}}]})
    config = text_format.Parse(text, mc.ModelConfig())
    assert config.name == 'a "quoted" \\ name' and config_parameters(config) == {"k": "v"}
