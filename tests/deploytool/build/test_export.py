"""The exporter: the graph contract, manifest, masks at any tile, failures that leave nothing behind.

Every id of every family is exported in tests/model_defs/test_family.py."""

import json
import time

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from deploytool.build import export, tracing
from deploytool.build.networks import build_def
from deploytool.errors import DeployError, ExportError
from deploytool.runtime.manifest import (
    BF16_FILE,
    FP16_FILE,
    FP32_FILE,
    MANIFEST_FILE,
    PARITY_HTML,
    PARITY_JSON,
    PARITY_MD,
    SCHEMA_VERSION,
    TIMING_CACHE,
    read_manifest,
)
from tests.helpers import constant_only_nodes, export_tiny, ops_reading_the_input, save_official, tiny_entry, tiny_state_dict


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
    assert manifest.opset == export.OPSET == 18 and manifest.exporter == export.EXPORTER and "torch.export" in manifest.exporter
    # batch 2: the FP16 plan's ranges are measured on the graph traced again at batch 1
    assert list(manifest.export_stages) == ["load", "trace", "simplify", "check", "calibration_trace", "fp16", "save"]
    assert manifest.fp16.measured_at.shape == (1, 3, 16, 16)
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
    """A tile other than the training img_size neither grows what a run computes from the image
    nor copies the mask per block: the graph holds the last row's and the last column's masks and
    makes every window's mask from them once, for all shifted blocks."""
    # the tiny model's mask is 0.06-0.4 MB, below the ids' 1 MB fold limit
    export_tiny("swinir-m-x2", tmp_path / "a", fp16=False, fold_limit_mb=0.05)
    export_tiny("swinir-m-x2", tmp_path / "b", fp16=False, tile=(32, 48), fold_limit_mb=0.05)
    at_img_size, larger = (onnx.load(str(tmp_path / name / FP32_FILE)) for name in ("a", "b"))
    assert ops_reading_the_input(larger) == ops_reading_the_input(at_img_size)
    # 4 x 6 windows of 8 x 8 tokens: two (64, 64) masks, no (24, ..., 64, 64) one
    masks = [numpy_helper.to_array(init) for init in larger.graph.initializer if list(init.dims) == [64, 64]]
    assert len(masks) == 2 and all(set(np.unique(mask).tolist()) == {0.0, -100.0} for mask in masks)
    assert not [init.name for init in larger.graph.initializer if 24 in init.dims]
    made = [node.op_type for node in constant_only_nodes(larger)]
    assert sorted(made) == ["Add", "Reshape", "Where", "Where"], made  # once, above the fold limit
    assert_static(larger)


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


def test_an_export_with_both_plans_calibrates_once_and_plans_bf16_as_an_export_of_bf16_alone(tmp_path, monkeypatch):
    from deploytool.build import precision

    calibrations = []
    measure = precision.measure
    monkeypatch.setattr(precision, "measure", lambda *args: calibrations.append(args[2]) or measure(*args))
    both = export_tiny("swinir-s-x2", tmp_path / "both", bf16=True)
    assert len(calibrations) == 1
    alone = export_tiny("swinir-s-x2", tmp_path / "alone", fp16=False, bf16=True)
    assert len(calibrations) == 2
    assert both.bf16 == alone.bf16 and both.files[BF16_FILE] == alone.files[BF16_FILE]
    # one calibration, each plan validated against its own precision's limits
    limits = {name: both.tolerances[f"{name}_max_abs"] / precision.VERIFY_SAFETY for name in ("fp16", "bf16")}
    assert both.fp16.verify_inputs_limit == limits["fp16"] != both.bf16.verify_inputs_limit == limits["bf16"]


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


class RealTensorForbidden(torch.nn.Module):
    """Raises on a real (non-fake) input: a forward pass that computes would fail."""

    def forward(self, x):
        from torch._subclasses.fake_tensor import is_fake

        if not is_fake(x):
            raise AssertionError("the model ran on a real tensor")
        return x


def test_the_trace_runs_the_model_on_fake_tensors_only():
    """No forward pass at the export tile: the model only ever sees fake tensors (shapes, no data)."""
    entry = tiny_entry("swinir-s-x2")
    model = build_def(entry, tiny_state_dict(entry))
    model.conv_first = torch.nn.Sequential(RealTensorForbidden(), model.conv_first)
    graph = tracing.trace(model, torch.zeros(1, 3, 24, 32))
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 24, 32]
    with pytest.raises(AssertionError, match="real tensor"):
        model(torch.zeros(1, 3, 24, 32))  # the guard does fire on real tensors


def test_traced_nodes_are_named_by_module_without_the_exporters_metadata():
    entry = tiny_entry("swinir-s-x2")
    graph = export.traced_graph(build_def(entry, tiny_state_dict(entry)), (1, 3, *entry.tiling.tile))
    names = [node.name for node in graph.graph.node]
    assert len(set(names)) == len(names)
    # the attention of block 1 of layer 0, one path component per module as the FP16 search cuts them
    assert "/layers.0/residual_group/blocks.1/attn/MatMul_1" in names
    assert not any(node.metadata_props or node.doc_string for node in graph.graph.node)
    assert not graph.metadata_props and not graph.graph.value_info
    # every value name unique (valid SSA), weights included
    values = [*(i.name for i in graph.graph.initializer), *(o for node in graph.graph.node for o in node.output)]
    assert len(set(values)) == len(values)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_plain_ops_rewrites_what_the_dynamo_exporter_writes_into_what_tensorrt_parses():
    """CastLike -> Cast, an int32 GatherND index cast to int64, SplitToSequence/SequenceAt -> Split."""
    h = onnx.helper
    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "table")
    index = numpy_helper.from_array(np.array([[2], [0]], dtype=np.int32), "index")
    nodes = [
        h.make_node("Constant", [], ["scalar"], value=numpy_helper.from_array(np.array(2.0, dtype=np.float64))),
        h.make_node("CastLike", ["scalar", "x"], ["two"]),
        h.make_node("Mul", ["x", "two"], ["doubled"]),
        h.make_node("Constant", [], ["chunk"], value=numpy_helper.from_array(np.array(2, dtype=np.int64))),
        h.make_node("SplitToSequence", ["doubled", "chunk"], ["parts"], axis=1),
        *(h.make_node("Constant", [], [f"at{i}"], value=numpy_helper.from_array(np.array(i, dtype=np.int64))) for i in (0, -1)),
        h.make_node("SequenceAt", ["parts", "at0"], ["first"]),
        h.make_node("SequenceAt", ["parts", "at-1"], ["last"]),
        h.make_node("Add", ["first", "last"], ["summed"]),
        h.make_node("GatherND", ["table", "index"], ["gathered"]),
    ]
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [h.make_tensor_value_info("summed", onnx.TensorProto.FLOAT, [2, 2]), h.make_tensor_value_info("gathered", onnx.TensorProto.FLOAT, [2, 3])],
        [table, index],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", export.OPSET)], ir_version=10)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    tracing.plain_ops(model)
    ops = [node.op_type for node in model.graph.node]
    assert not {"CastLike", "SplitToSequence", "SequenceAt"} & set(ops) and "Split" in ops
    onnx.checker.check_model(model, full_check=True)  # an int32 GatherND index fails this
    summed, gathered = _run(model, {"x": x})
    np.testing.assert_array_equal(summed, 2 * x[:, :2] + 2 * x[:, 2:])
    np.testing.assert_array_equal(gathered, np.arange(12, dtype=np.float32).reshape(4, 3)[[2, 0]])


def test_ops_outside_tensorrts_matrix_and_computed_reduction_axes_are_violations():
    h = onnx.helper
    nodes = [
        h.make_node("Hardmax", ["x"], ["hard"]),
        h.make_node("Abs", ["hard"], ["axes_source"]),
        h.make_node("Cast", ["axes_source"], ["axes"], to=onnx.TensorProto.INT64),
        h.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum", keepdims=1),
    ]
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])], [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)]
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", export.OPSET)])
    problems = export.static_graph_violations(model)
    assert any("Hardmax" in p and "onnx-tensorrt's operator matrix" in p for p in problems), problems
    assert "ReduceSum node sum takes a computed operand 1" in problems


def test_constants_written_as_lists_become_typed_initializers():
    """The dynamo exporter writes a Resize's unused scales as an empty `value_floats` Constant;
    left a node, the FP16 converter retyped its output to FP16 without converting it (swinir-real's
    FP16 graph failed onnx's checker)."""
    from onnx import AttributeProto, TensorProto, helper

    from deploytool.build.graph_passes import constants_to_initializers

    empty_scales = helper.make_node("Constant", [], ["scales"])
    empty_scales.attribute.append(helper.make_attribute("value_floats", [], attr_type=AttributeProto.FLOATS))
    nodes = [
        empty_scales,
        helper.make_node("Constant", [], ["axes"], value_ints=[2, 3]),
        helper.make_node("Constant", [], ["table"], value=helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0])),
        helper.make_node("Constant", [], ["text"], value_string="kept"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    constants_to_initializers(model)
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert initializers["scales"].dtype == np.float32 and initializers["scales"].shape == (0,)
    assert initializers["axes"].dtype == np.int64 and initializers["axes"].tolist() == [2, 3]
    assert initializers["table"].tolist() == [1.0, 2.0]
    assert [n.output[0] for n in model.graph.node] == ["text"]


def test_an_export_folder_that_cannot_be_made_is_refused_before_the_work(tmp_path, monkeypatch):
    weights = save_official(tiny_state_dict(tiny_entry("swinir-s-x2")), tmp_path / "w.pth")
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")

    def no_trace(*args, **kwargs):
        raise AssertionError("traced before the folder was checked")

    monkeypatch.setattr(export, "traced_graph", no_trace)
    with pytest.raises(DeployError, match=r"^cannot create the export's parent folder .*a-file/sub: Not a directory$"):
        export_tiny("swinir-s-x2", blocker / "sub" / "e", weights=weights)
