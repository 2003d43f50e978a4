"""The exporter: the graph contract, manifest, masks at any tile, failures that leave nothing behind.

Every id of every family is exported in tests/model_defs/test_family.py."""

import json
import time

import onnx
import pytest

from deploytool.build import export
from deploytool.errors import DeployError, ExportError
from deploytool.runtime.manifest import FP16_FILE, FP32_FILE, MANIFEST_FILE, PARITY_HTML, PARITY_JSON, PARITY_MD, SCHEMA_VERSION, TIMING_CACHE, read_manifest
from tests.helpers import export_tiny


def assert_static(model: onnx.ModelProto) -> None:
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"Shape", "Col2Im", "ConstantOfShape", "Range", "NonZero", "ScatterND"}, ops
    assert export.static_graph_violations(model) == []
    onnx.checker.check_model(model, full_check=True)


def test_manifest_records_the_contract(tmp_path):
    out = tmp_path / "m"
    manifest = export_tiny("swinir-m-x4", out, batch=2)
    on_disk = json.loads((out / MANIFEST_FILE).read_text())
    assert on_disk == manifest.to_json() and read_manifest(out) == manifest
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["input"] == {
        "name": "input",
        "shape": [2, 3, 16, 16],
        "dtype": "float32",
        "layout": "NCHW",
        "range": [0.0, 1.0],
        "views": [{"name": "image", "channels": 3, "color": "RGB"}],
    }
    assert on_disk["output"]["shape"] == [2, 3, 64, 64] and on_disk["output"]["clamped"] is False
    assert on_disk["tiling"] == {
        "tile": [16, 16],
        "tile_multiple": 8,
        "fixed_tile": False,
        "batch": 2,
        "overlap": 16,
        "padding": "reflect",
        "blend": {"mode": "ramp", "width": 16, "trim": 0},
    }
    assert manifest.opset >= 17 and "TorchScript" in manifest.exporter
    assert manifest.source.kind == "checkpoint" and len(manifest.source.sha256) == 64
    assert set(manifest.versions) >= {"torch", "onnx", "onnxruntime", "onnxsim"}
    assert manifest.fp16.fp32_by_op["LayerNormalization"] > 0
    graph = onnx.load(str(out / FP32_FILE))
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 16, 16]
    assert [d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim] == [2, 3, 64, 64]


def test_a_re_export_removes_what_the_previous_export_verify_and_build_wrote(tmp_path):
    out = tmp_path / "e"
    export_tiny("swinir-s-x2", out)
    engines = ["model.sm90-trt10.13.0.engine", "model.sm87-trt10.3.0.30.engine"]
    stale = [PARITY_JSON, PARITY_MD, PARITY_HTML, TIMING_CACHE, *engines, ".parity.json.k2j4l1.part.json"]
    for name in stale:
        (out / name).write_text("from the previous export: PASSED")
    mine = ["notes.txt", "photo.png", "model.onnx.bak"]
    for name in mine:
        (out / name).write_text("the user's")
    manifest = export_tiny("swinir-s-x2", out, fp16=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([FP32_FILE, MANIFEST_FILE, *mine])
    assert read_manifest(out) == manifest and not manifest.engines and not manifest.has_fp16


def test_any_window_multiple_exports_with_one_shared_mask(tmp_path):
    """A tile other than the training img_size neither grows the graph nor copies the mask per block."""
    # the tiny model's per-block bias plus masks is 0.06-0.8 MB, below the ids' 1 MB fold limit
    at_img_size = export_tiny("swinir-m-x2", tmp_path / "a", fp16=False, fold_limit_mb=0.05)
    larger = export_tiny("swinir-m-x2", tmp_path / "b", fp16=False, tile=(32, 48), fold_limit_mb=0.05)
    assert larger.graph.nodes == at_img_size.graph.nodes
    model = onnx.load(str(tmp_path / "b" / FP32_FILE))
    # 4 x 6 windows of 8 x 8: one row mask for the 4 rows and one column mask for the 6 columns
    masks = sorted(list(init.dims) for init in model.graph.initializer if list(init.dims)[-2:] == [64, 64] and init.dims[0] in (4, 6))
    assert masks == [[4, 1, 1, 64, 64], [6, 1, 64, 64]], masks
    assert_static(model)


def test_tile_that_is_not_a_window_multiple_is_refused(tmp_path):
    with pytest.raises(DeployError, match="not a multiple of 8"):
        export_tiny("swinir-m-x2", tmp_path / "x", tile=(20, 16))
    assert not (tmp_path / "x").exists()


def test_each_stage_records_its_time_and_memory(tmp_path):
    started = time.perf_counter()
    manifest = export_tiny("swinir-s-x2", tmp_path / "s")
    wall = time.perf_counter() - started  # an independent clock around the whole export
    assert list(manifest.export_stages) == ["load", "trace", "simplify", "check", "fp16", "save"]
    assert all(cost.seconds > 0 and cost.peak_rss_mb > 100 for cost in manifest.export_stages.values())  # every stage does work
    peaks = [cost.peak_rss_mb for cost in manifest.export_stages.values()]
    assert peaks == sorted(peaks)  # the peak so far never falls
    stages = sum(cost.seconds for cost in manifest.export_stages.values())
    # each figure is rounded to 0.1 ms; the stages run one after another within the export
    assert stages <= manifest.export_seconds + 6 * 5e-5 and manifest.export_seconds <= wall + 5e-5
    assert stages >= 0.5 * manifest.export_seconds  # the stages are the export's work, not a small part of it


def test_an_fp16_plan_that_misses_its_tolerance_still_writes_the_fp32_export(tmp_path, monkeypatch):
    from deploytool.build import precision

    def no_plan(*args, **kwargs):
        raise ExportError("no FP16 plan meets the tolerance 0.08 (best max |err| 0.175 with margin 4096)")

    monkeypatch.setattr(precision, "build_fp16", no_plan)
    out = tmp_path / "f"
    with pytest.raises(ExportError, match="the FP32 export is written to .* without model_fp16.onnx"):
        export_tiny("swinir-s-x2", out)
    written = read_manifest(out)
    assert written.fp16 is None and set(written.files) == {FP32_FILE} and not (out / FP16_FILE).exists()


def test_a_failed_export_leaves_no_manifest(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise DeployError("simulated failure")

    monkeypatch.setattr(export, "simplify", broken)
    out = tmp_path / "m"
    with pytest.raises(DeployError, match="simulated failure"):
        export_tiny("swinir-s-x2", out, fp16=False)
    assert not (out / MANIFEST_FILE).exists() and not (out / FP32_FILE).exists()
    assert not list(tmp_path.glob("**/*.part*")) and not list(tmp_path.glob(".export-*"))


def test_a_failed_reexport_leaves_the_earlier_export_intact(tmp_path, monkeypatch):
    out = tmp_path / "m"
    export_tiny("swinir-s-x2", out, fp16=False)
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def broken(*args, **kwargs):
        raise DeployError("simulated failure")

    monkeypatch.setattr(export, "simplify", broken)
    with pytest.raises(DeployError, match="simulated failure"):
        export_tiny("swinir-s-x2", out, fp16=False)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # nothing was replaced
    read_manifest(out)
    assert not list(tmp_path.glob("**/*.part*")) and not list(tmp_path.glob(".export-*"))


def test_deduplicate_initializers_merges_identical_constants():
    import numpy as np
    from onnx import helper, numpy_helper

    values = numpy_helper.from_array(np.ones((4, 4), np.float32), "a")
    copy = numpy_helper.from_array(np.ones((4, 4), np.float32), "b")
    other = numpy_helper.from_array(np.zeros((4, 4), np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "a"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"]), helper.make_node("Add", ["z", "c"], ["out"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [4, 4])],
        [values, copy, other],
    )
    model = helper.make_model(graph)
    assert export.deduplicate_initializers(model) == 1
    assert [i.name for i in model.graph.initializer] == ["a", "c"]
    assert model.graph.node[1].input[1] == "a"
