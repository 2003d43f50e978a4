"""TensorRT engine planning and records, and the build up to TensorRT's API (a fake `tensorrt`
module stands in for it: TensorRT needs an NVIDIA GPU)."""

import json
import shutil
from pathlib import Path

import pytest

from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends.tensorrt import build as engines
from deploytool.runtime.manifest import BF16_FILE, FP16_FILE, EngineRecord, read_manifest
from tests.fake_tensorrt import fake_tensorrt, pretend_gpu
from tests.helpers import assert_one_line_error, export_tiny


@pytest.mark.parametrize("version", ["11.0.0", "10.13.0.35", "10.12.0", "10.11.0.33", "10.3.0"])  # 10.3: JetPack 6
def test_every_supported_tensorrt_builds_the_fp16_graph_strongly_typed(version):
    plan = engines.plan_build(version, strongly_typed=True)
    assert (plan.graph, plan.strongly_typed) == (FP16_FILE, True)


def test_tensorrt_before_10_is_refused():
    with pytest.raises(DeployError, match="TensorRT 8.6.1 is too old"):
        engines.plan_build("8.6.1", strongly_typed=False)


def test_tensorrt_without_strongly_typed_networks_is_refused_not_built_weakly_typed():
    with pytest.raises(DeployError) as error:
        engines.plan_build("10.13.0", strongly_typed=False)
    assert str(error.value) == (
        "TensorRT 10.13.0 has no NetworkDefinitionCreationFlag.STRONGLY_TYPED, which deploytool needs to build "
        "model_fp16.onnx with its FP32 islands; install an official TensorRT 10 or 11 release"
    )


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines") / "e"
    export_tiny("swinir-s-x2", folder)
    return folder


def test_build_creates_a_strongly_typed_network_from_the_fp16_graph(fp16_export, tmp_path, monkeypatch):
    export_dir = Path(shutil.copytree(fp16_export, tmp_path / "e"))
    trt = fake_tensorrt("10.3.0", flags={"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    pretend_gpu(monkeypatch, trt)
    name, record = engines.build_engine(export_dir)
    assert trt.calls["create_network"] == [1 << 1]
    assert trt.calls["parse_from_file"] == [str(export_dir / FP16_FILE)]
    assert trt.calls["set_flag"] == []  # no precision flag on a strongly typed network
    assert (export_dir / name).read_bytes() == b"serialized engine"
    assert record.plan == {"graph": FP16_FILE, "strongly_typed": True}
    assert read_manifest(export_dir).engines[name] == record


def test_build_uses_the_flag_by_name_not_its_value(fp16_export, tmp_path, monkeypatch):
    export_dir = Path(shutil.copytree(fp16_export, tmp_path / "e"))
    trt = fake_tensorrt("11.0.0", flags={"STRONGLY_TYPED": 0})  # TensorRT 11 has no EXPLICIT_BATCH
    pretend_gpu(monkeypatch, trt)
    engines.build_engine(export_dir)
    assert trt.calls["create_network"] == [1 << 0]


def test_build_without_the_flag_refuses_and_writes_nothing(fp16_export, tmp_path, monkeypatch):
    export_dir = Path(shutil.copytree(fp16_export, tmp_path / "e"))
    before = sorted(p.name for p in export_dir.iterdir())
    trt = fake_tensorrt("10.13.0", flags={"EXPLICIT_BATCH": 0})
    pretend_gpu(monkeypatch, trt)
    with pytest.raises(DeployError, match="has no NetworkDefinitionCreationFlag.STRONGLY_TYPED"):
        engines.build_engine(export_dir)
    assert trt.calls["create_network"] == [] and sorted(p.name for p in export_dir.iterdir()) == before


@pytest.mark.parametrize("text, expected", [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)), ("1048576", 2**20)])
def test_workspace_sizes(text, expected):
    assert engines.parse_size(text) == expected


def test_bad_workspace_size_is_one_line():
    with pytest.raises(DeployError, match="cannot read a size from 'lots'"):
        engines.parse_size("lots")


def engine_record(sha256: str) -> EngineRecord:
    return EngineRecord(
        sha256=sha256,
        bytes=17,
        gpu="NVIDIA H100",
        compute_capability=(9, 0),
        tensorrt="10.13.0",
        plan={"graph": FP16_FILE},
        workspace_bytes=2**30,
        opt_level=3,
        timing_cache="timing.cache",
        build_seconds=1.0,
    )


def test_recording_an_engine_keeps_the_others(tmp_path):
    export_tiny("swinir-s-x2", tmp_path / "e", fp16=False)
    manifest = read_manifest(tmp_path / "e").with_engine("model.sm86-trt10.13.0.engine", engine_record("a" * 64))
    updated = manifest.with_engine("model.sm90-trt11.0.0.engine", engine_record("b" * 64))
    assert set(updated.engines) == {"model.sm86-trt10.13.0.engine", "model.sm90-trt11.0.0.engine"}
    assert set(manifest.engines) == {"model.sm86-trt10.13.0.engine"}  # not modified in place
    updated.write(tmp_path / "e")
    assert read_manifest(tmp_path / "e") == updated  # engines survive the round trip through JSON


def test_a_recorded_engine_is_checked_like_the_other_files(tmp_path):
    from deploytool.runtime.fileio import sha256_file

    export_tiny("swinir-s-x2", tmp_path / "e", fp16=False)
    manifest = read_manifest(tmp_path / "e")
    engine = tmp_path / "e" / "model.sm90-trt10.13.0.engine"
    engine.write_bytes(b"serialized engine")
    manifest = manifest.with_engine(engine.name, engine_record(sha256_file(engine)))
    assert manifest.check_file(tmp_path / "e", engine.name) == engine
    engine.write_bytes(b"another engine")
    with pytest.raises(DeployError, match="changed since export"):
        manifest.check_file(tmp_path / "e", engine.name)


@pytest.mark.parametrize("version", ["10.13/../../../victim", "../10.13", "10.13\0", "1" * 300])
def test_an_engine_name_that_would_leave_the_export_folder_is_refused(tmp_path, version):
    with pytest.raises(DeployError, match="engine name") as caught:
        engines.engine_path(tmp_path / "export", (9, 0), version)
    assert "\n" not in str(caught.value)


def test_an_engine_is_a_file_of_its_export_folder(tmp_path):
    assert engines.engine_path(tmp_path, (8, 7), "10.3.0.30") == tmp_path / "model.sm87-trt10.3.0.30.engine"


@pytest.fixture(scope="module")
def bf16_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines") / "bf16"
    export_tiny("swinir-s-x2", folder, fp16=False, bf16=True)
    return folder


@pytest.mark.parametrize("version", ["11.0.0", "10.13.0.35", "10.3.0"])
def test_a_bf16_engine_is_planned_from_the_bf16_graph_strongly_typed(version):
    plan = engines.plan_build(version, strongly_typed=True, precision="bf16")
    assert (plan.graph, plan.strongly_typed) == (BF16_FILE, True)
    with pytest.raises(DeployError, match=f"build {BF16_FILE} with its FP32 islands"):
        engines.plan_build(version, strongly_typed=False, precision="bf16")


def test_build_bf16_creates_a_strongly_typed_network_from_the_bf16_graph_and_records_it(bf16_export, tmp_path, monkeypatch):
    export_dir = Path(shutil.copytree(bf16_export, tmp_path / "e"))
    trt = fake_tensorrt("10.13.0", flags={"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    pretend_gpu(monkeypatch, trt)
    name, record = engines.build_engine(export_dir, engines.BuildOptions(precision="bf16"))
    assert name == "model_bf16.sm90-trt10.13.0.engine"
    assert trt.calls["create_network"] == [1 << 1]
    assert trt.calls["parse_from_file"] == [str(export_dir / BF16_FILE)]
    assert trt.calls["set_flag"] == []  # no BF16 flag: TensorRT refuses precision flags on a strongly typed network
    assert record.plan == {"graph": BF16_FILE, "strongly_typed": True}
    manifest = read_manifest(export_dir)  # the schema accepts the name; the engine is checked like any file
    assert manifest.engines[name] == record and manifest.check_file(export_dir, name) == export_dir / name


def test_build_bf16_on_a_gpu_before_ampere_is_refused_in_one_line_before_building(bf16_export, tmp_path, monkeypatch):
    import torch

    export_dir = Path(shutil.copytree(bf16_export, tmp_path / "e"))
    before = sorted(p.name for p in export_dir.iterdir())
    trt = fake_tensorrt("10.13.0", flags={"STRONGLY_TYPED": 1})
    pretend_gpu(monkeypatch, trt)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *device: "Tesla T4 (fake)")
    with pytest.raises(BackendUnavailable) as error:
        engines.build_engine(export_dir, engines.BuildOptions(precision="bf16"))
    assert str(error.value) == "BF16 TensorRT engines need a GPU of compute capability 8.0 (Ampere) or newer; Tesla T4 (fake) is sm75"
    assert trt.calls["create_network"] == [] and sorted(p.name for p in export_dir.iterdir()) == before


def test_build_bf16_without_the_bf16_graph_says_it_is_missing(fp16_export, tmp_path, monkeypatch):
    export_dir = Path(shutil.copytree(fp16_export, tmp_path / "e"))
    pretend_gpu(monkeypatch, fake_tensorrt("10.13.0", flags={"STRONGLY_TYPED": 1}))
    with pytest.raises(DeployError, match=f"{BF16_FILE} is missing from the export"):
        engines.build_engine(export_dir, engines.BuildOptions(precision="bf16"))


def test_bf16_engines_are_named_after_their_graph():
    assert engines.engine_path(Path("/x"), (8, 0), "10.3.0", "bf16") == Path("/x/model_bf16.sm80-trt10.3.0.engine")
    assert engines.bf16_refusal((8, 0), "A100") is None and engines.bf16_refusal((12, 0), "RTX 5090") is None
    with pytest.raises(DeployError, match="unknown engine precision 'int8'; choose from fp16, bf16"):
        engines.plan_build("10.13.0", strongly_typed=True, precision="int8")


def test_the_build_command_passes_the_precision_and_refuses_old_gpus_in_one_line(bf16_export, tmp_path, monkeypatch):
    import torch
    from click.testing import CliRunner

    from deploytool.cli import cli

    export_dir = Path(shutil.copytree(bf16_export, tmp_path / "e"))
    trt = fake_tensorrt("10.13.0", flags={"STRONGLY_TYPED": 1})
    pretend_gpu(monkeypatch, trt)
    built = CliRunner().invoke(cli, ["build", str(export_dir), "--precision", "bf16", "--json"], catch_exceptions=False)
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["file"] == "model_bf16.sm90-trt10.13.0.engine"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (7, 5))
    refused = CliRunner().invoke(cli, ["build", str(export_dir), "--precision", "bf16"], catch_exceptions=False)
    assert_one_line_error(refused, "BF16 TensorRT engines need a GPU of compute capability 8.0 (Ampere) or newer", "is sm75")
