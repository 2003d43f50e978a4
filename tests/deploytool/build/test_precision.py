"""The FP16 deploy graph under overflow stress: naive FP16 breaks, the planned graph holds; the
BF16 plan of the same planner: islands by op and accumulation, bought precision, full size
(every id's tiny BF16 plan: tests/model_defs/test_family.py, on the session's shared exports)."""

import contextlib
import dataclasses
import functools
import math
import re

import numpy as np
import onnx
import pytest
import torch

from deploytool.build import export, precision
from deploytool.runtime.backends import ORIGINAL, ORT_FP16
from deploytool.runtime.input_batches import PARITY_BATCHES, parity_batch, synthetic_batch
from deploytool.runtime.manifest import BF16_FILE, FP16_FILE, FP32_FILE, read_manifest
from deploytool.verify import parity
from tests.helpers import (
    assert_bf16_plan_holds,
    export_tiny,
    full_size_id,
    max_abs_against_torchscript,
    save_official,
    tiny_entry,
    tiny_state_dict,
    true_fp16_outputs,
)

# The layer that reads the long skip (conv_first + conv_after_body): scaled down by the factor
# that scales those two up, so the FP32 model stays sane while the skip goes beyond 65504.
# The factor keeps every weight below the converter's 1e4 clamp: activations overflow, not weights.
STREAM_READERS = {"pixelshuffle": "conv_before_upsample.0", "pixelshuffledirect": "upsample.0", "nearest+conv": "conv_before_upsample.0", "": "conv_last"}


def stressed_checkpoint(model_id: str, path, factor: float = 4e4):
    entry = tiny_entry(model_id)
    state = tiny_state_dict(entry)
    for key in ("conv_first.weight", "conv_first.bias", "conv_after_body.weight", "conv_after_body.bias"):
        state[key] *= factor
    state[f"{STREAM_READERS[entry.arch['upsampler']]}.weight"] /= factor
    return save_official(state, path)


@pytest.mark.parametrize("model_id", ["swinir-m-x2", "swinir-dn-color-25", "swinir-s-x4", "hat-x4", "hat-s-x2"])
def test_planned_fp16_survives_a_residual_stream_beyond_fp16_range(tmp_path, model_id):
    out = tmp_path / "e"
    manifest = export_tiny(model_id, out, weights=stressed_checkpoint(model_id, tmp_path / "stress.pth"))
    assert_planned_fp16_holds_where_naive_fp16_overflows(out, manifest)


def assert_planned_fp16_holds_where_naive_fp16_overflows(out, manifest: dict) -> None:
    """On a stressed export: activations beyond FP16's range, which a naive FP16 graph turns
    into inf/NaN and the planned graph keeps within tolerance, in true FP16 and in ORT."""
    fp32 = onnx.load(str(out / FP32_FILE))
    batch = [synthetic_batch(manifest.input.shape, seed) for seed in (7, 8)]
    ranges = precision.measure_ranges(fp32, batch)
    assert max(ranges.values()) > precision.FP16_MAX  # the stress is real

    reference = precision.run_graph(fp32, batch)
    naive = precision.convert(fp32, None)
    planned = onnx.load(str(out / FP16_FILE))
    limit = manifest.tolerances["fp16_max_abs"]
    for expected, array in zip(reference, batch):
        assert not np.isfinite(true_fp16_outputs(naive, array)[0]).all(), "naive FP16 should overflow"
        actual = true_fp16_outputs(planned, array)[0]
        assert np.isfinite(actual).all() and np.abs(expected - actual).max() < limit
    for expected, actual in zip(reference, precision.run_graph(planned, batch)):
        assert np.abs(expected - actual).max() < limit
    assert manifest.fp16.fp32_by_reason.get("range", 0) > 0


def test_measure_ranges_reports_every_activation():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"]), helper.make_node("Relu", ["y"], ["out"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(np.float32([-1000.0]).reshape(1), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ranges = precision.measure_ranges(model, [np.float32([[1, -2, 3, 0.5]]), np.float32([[0.1, 0.2, 0.3, 0.4]])])
    assert ranges["y"] == 3000.0 and ranges["out"] == 2000.0 and ranges["x"] == 3.0


def rearranging_graph(opset: int, rng: np.random.Generator) -> onnx.ModelProto:
    """A graph whose tensors are probed by rows, at once, or derived from a rearranged input or
    a constant (see the comments)."""
    from onnx import TensorProto, helper

    def ints(name, values):
        return onnx.numpy_helper.from_array(np.int64(values), name)

    nodes = [
        helper.make_node("Mul", ["x", "k"], ["scaled"]),  # 1x3x100x70: rows of 70 (the last axis)
        helper.make_node("Transpose", ["scaled"], ["swapped"], perm=[0, 1, 3, 2]),  # derived
        helper.make_node("Reshape", ["swapped", "flat_shape"], ["flat"]),  # derived: 1x21000
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["part"]),  # probed: a part
        helper.make_node("Concat", ["part", "wide"], ["joined"], axis=1),  # derived, from a constant
        helper.make_node("Tanh", ["joined"], ["out"]),
        helper.make_node("Reshape", ["scaled", "narrow_shape"], ["narrow"]),  # derived
        helper.make_node("Sigmoid", ["narrow"], ["unused_side"]),  # 5250x4: no rows of 64, at once
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 100, 70])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 600]), helper.make_tensor_value_info("unused_side", TensorProto.FLOAT, [5250, 4])],
        [
            onnx.numpy_helper.from_array(np.float32([-7.0]), "k"),
            onnx.numpy_helper.from_array(rng.normal(size=(1, 100)).astype(np.float32) * 500, "wide"),
            ints("flat_shape", [1, -1]),
            ints("narrow_shape", [-1, 4]),
            ints("starts", [10]),
            ints("ends", [510]),
            ints("axes", [1]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", [17, 18])
def test_measured_ranges_are_every_activation_s_exact_max_whether_probed_by_rows_or_derived(monkeypatch, opset):
    """Large tensors are probed by rows of their trailing axes, rearranging ops take their
    inputs' range unprobed (a constant's too): every range is still the tensor's exact max |x|."""
    from onnx import TensorProto, helper

    from deploytool.build.precision import calibration
    from deploytool.runtime.backends.onnxruntime import CPU_ONLY, open_session

    rng = np.random.default_rng(3)
    model = rearranging_graph(opset, rng)
    inputs = [rng.normal(size=(1, 3, 100, 70)).astype(np.float32) for _ in range(2)]
    opened = []
    monkeypatch.setattr(calibration, "open_session", lambda model, **options: opened.append(onnx.load_from_string(model)) or open_session(model, **options))

    ranges = precision.measure_ranges(model, inputs)

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    names = [out for node in model.graph.node for out in node.output]
    exposed.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names if name not in ("out", "unused_side"))
    session = open_session(exposed.SerializeToString(), providers=CPU_ONLY)
    every = [dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": array}))) for array in inputs]
    for name in names:
        assert ranges[name] == max(float(np.abs(values[name]).max()) for values in every), name
    assert ranges["x"] == max(float(np.abs(array).max()) for array in inputs)
    assert ranges["joined"] > ranges["part"]  # the constant's range reached the Concat
    assert set(ranges) == {"x", *names}  # activations only: a constant's own range is not the plan's

    probed_graph = opened[0].graph
    reductions = {node.input[0]: node for node in probed_graph.node if node.op_type == "ReduceMax"}
    assert {"scaled", "part", "out", "unused_side"} <= set(reductions)
    assert not set(reductions) & {"swapped", "flat", "joined", "narrow"}

    def axes(node):
        if opset >= 18:
            return onnx.numpy_helper.to_array(next(i for i in probed_graph.initializer if i.name == node.input[1])).tolist() if len(node.input) > 1 else None
        return next((list(a.ints) for a in node.attribute if a.name == "axes"), None)

    assert axes(reductions["scaled"]) == [-1]  # by rows of 70
    assert axes(reductions["unused_side"]) is None and axes(reductions["part"]) is None


def test_plan_keeps_normalisations_and_large_tensors_in_fp32():
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], name="soft"),
        helper.make_node("Add", ["s", "x"], ["big"], name="add"),
        helper.make_node("Relu", ["big"], ["out"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])]
    )
    plan = precision.plan_islands(helper.make_model(graph), {"x": 1.0, "s": 1.0, "big": 60000.0, "out": 1.0}, margin=16)
    assert plan.fp32_nodes == {"soft", "add", "relu"}
    assert plan.reasons == {"soft": "op:Softmax", "add": "range", "relu": "range"}


def shuffled_graph(nodes: int, rng: np.random.Generator) -> onnx.GraphProto:
    """A random acyclic graph of Adds, each reading the input or earlier nodes' outputs, its nodes
    listed in a random order (not a topological one)."""
    from onnx import TensorProto, helper

    def source(position: int) -> str:  # the input or an earlier node's output
        earlier = int(rng.integers(-1, position))
        return f"v{earlier}" if earlier >= 0 else "x"

    made = [helper.make_node("Add", [source(i), source(i)], [f"v{i}"], name=f"n{i}") for i in range(nodes)]
    order = rng.permutation(nodes)
    info = functools.partial(helper.make_tensor_value_info, elem_type=TensorProto.FLOAT, shape=[1])
    return helper.make_graph([made[i] for i in order], "g", [info("x")], [info(f"v{nodes - 1}")])


def test_the_conversion_sorts_its_graph_into_the_converters_own_order():
    """onnxconverter-common's sort (quadratic) and `topological_order` (linear) put the same nodes
    in the same order; where `topological_order` gives None (a name written twice, a cycle) the
    library's sort runs, and the conversion's graph is the same either way."""
    from onnxconverter_common import float16

    rng = np.random.default_rng(0)
    for nodes in (1, 2, 40, 300):
        graph = shuffled_graph(nodes, rng)
        sorted_by_library = onnx.GraphProto()
        sorted_by_library.CopyFrom(graph)
        float16.sort_topology(sorted_by_library)
        assert [n.name for n in precision.topological_order(graph)] == [n.name for n in sorted_by_library.node]
    twice, cycle = shuffled_graph(5, rng), shuffled_graph(5, rng)
    twice.node[0].output[0] = twice.node[1].output[0]
    cycle.node.append(onnx.helper.make_node("Relu", ["w"], ["w"], name="loop"))
    assert precision.topological_order(twice) is None and precision.topological_order(cycle) is None

    model = onnx.helper.make_model(shuffled_graph(300, rng), opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=8)
    fp32_nodes = {f"n{i}" for i in rng.choice(300, 60, replace=False)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision.plan, "_linear_topological_sort", lambda module: contextlib.nullcontext())
        library_sorted = precision.convert(model, fp32_nodes).SerializeToString()
    assert precision.convert(model, fp32_nodes).SerializeToString() == library_sorted
    assert float16.sort_topology.__module__ == float16.__name__  # left as it was found


def test_global_average_pool_is_judged_by_its_running_sum():
    """HAT's channel attention averages a whole tile per channel: 65536 pixels at 256 px, so a
    mean of 0.1 is a running sum of 6554, beyond FP16's margin while the mean itself is tiny."""
    node = onnx.helper.make_node("GlobalAveragePool", ["features"], ["means"], name="pool")
    sizes = {"features": 1 * 180 * 256 * 256, "means": 180}
    assert precision.reduction_accumulator(node, {"means": 0.1}, sizes) == pytest.approx(0.1 * 65536)
    plan_inputs = {"features": 3.0, "means": 0.1}
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [node],
            "g",
            [onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [1, 180, 256, 256])],
            [onnx.helper.make_tensor_value_info("means", onnx.TensorProto.FLOAT, [1, 180, 1, 1])],
        ),
        ir_version=8,
    )
    plan = precision.plan_islands(model, plan_inputs, margin=16.0)
    assert plan.fp32_nodes == {"pool"} and plan.reasons["pool"] == "accumulator"
    small = precision.plan_islands(model, {"features": 3.0, "means": 0.001}, margin=16.0)
    assert small.fp32_nodes == set()


@pytest.mark.parametrize("model_id, calibration_tile", [("swinir-m-x2", (32, 32)), ("hat-x4", (48, 48))])
def test_a_plan_measured_at_a_smaller_tile_holds_at_the_export_tile(tmp_path, monkeypatch, model_id, calibration_tile):
    """The overflow stress with ranges measured on the same graph at a smaller tile (at least
    three windows) and carried to the export's tile by node name: the planned graph still holds
    where naive FP16 breaks."""
    monkeypatch.setattr(export, "CALIBRATION_SIDE", 32)
    out = tmp_path / "e"
    manifest = export_tiny(model_id, out, weights=stressed_checkpoint(model_id, tmp_path / "stress.pth"), tile=(64, 64))
    assert manifest.fp16.calibration_tile == calibration_tile
    assert_planned_fp16_holds_where_naive_fp16_overflows(out, manifest)


def test_ranges_are_measured_at_the_export_tile_where_the_smaller_graph_differs(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "CALIBRATION_SIDE", 32)
    monkeypatch.setattr(precision, "corresponding_tensors", lambda measured, target: None)
    messages = []
    monkeypatch.setattr(export, "export", functools.partial(export.export, progress=messages.append))
    manifest = export_tiny("swinir-m-x2", tmp_path / "e", tile=(64, 64))
    assert manifest.fp16.calibration_tile == (64, 64) and manifest.fp16.grown_tensors == 0
    assert any("the graph at 1x3x32x32 has other nodes than at 1x3x64x64: measuring ranges on the export's graph" in m for m in messages)


def test_tile_growth_bounds_the_tile_wide_sums():
    """Restormer's q/k norms sum over all H*W pixels, its channel attention multiplies over them:
    from 32 to 64 px those grow 2x (sqrt of 4x the pixels) and 4x; window-local tensors do not."""
    from deploytool.build.networks import build_def
    from tests.model_defs.test_restormer import tiny_entry as restormer_entry
    from tests.model_defs.test_restormer import tiny_state

    entry = restormer_entry("restormer-derain")
    model = build_def(entry, tiny_state(entry))
    small, large = (export.finish_graph(export.trace(model, torch.zeros(1, 3, side, side)), 0).graph for side in (32, 64))
    names = precision.corresponding_tensors(small, large)
    growth = precision.tile_growth(small, large, names)
    node = {n.output[0]: n for n in large.graph.node}
    norms = [name for name, n in node.items() if n.op_type == "ReduceL2"]
    assert norms and all(growth[name] == pytest.approx(2.0) for name in norms)
    attention = [name for name, n in node.items() if n.op_type == "Softmax"]
    scores = [node[name].input[0] for name in attention]
    assert all(growth.get(name, 1.0) >= 4.0 for name in scores)  # the scores before the softmax grew
    assert all(name not in growth for name in attention)  # ...and the softmax bounds them again
    convolutions = [name for name, n in node.items() if n.op_type == "Conv"]
    assert convolutions and all(name not in growth for name in convolutions)
    # the bound as derived: a 64 px image's norms are within the growth of its four 32 px
    # quadrants' (up to what their zero-padded borders change: 13% here, inside the 16x margin)
    image = synthetic_batch((1, 3, 64, 64), seed=1)
    quadrants = [image[:, :, y : y + 32, x : x + 32] for y in (0, 32) for x in (0, 32)]
    grown = precision.carried_ranges(precision.measure_ranges(small, quadrants), names, growth)
    actual = precision.measure_ranges(large, [image])
    for name in norms:
        assert actual[name] <= 1.25 * grown[name]
    # and the plan follows the growth: a norm of 50 (a running sum of 2500) is FP16 at 32 px,
    # while at 64 px its sum of squares (10000) passes the 16x margin below 65504
    measured = {names[name]: 50.0 for name in norms}
    kept = precision.plan_islands(large, precision.carried_ranges(measured, names, growth), margin=16.0)
    assert all(kept.reasons[node[name].name] == "accumulator" for name in norms)
    unscaled = precision.plan_islands(large, precision.carried_ranges(measured, names, {}), margin=16.0)
    assert not any(node[name].name in unscaled.fp32_nodes for name in norms)


def cancelling_ipt_checkpoint(path):
    """A tiny IPT that loses its output to FP16 mantissa, not range: one upsampler channel is
    exactly 3x another, and the last conv reads +3K of the first and -K of the second, which
    cancel in FP32 while FP16 rounds 3K, K and the two channels apart (K = 1000.3: FP16's step
    is 0.5 there and 2 at 3000). Every tensor stays below 16 (the upsampler scaled down, the
    output mean shift scaled up to match): no range margin keeps the cancellation in FP32."""
    entry = tiny_entry("ipt-sr-x4")
    state = tiny_state_dict(entry)
    upsampler, last, shrink, gain, k = "tail.0.0.2", "tail.0.1", 40.0, 30.0, 1000.3
    for position in range(4):  # pixel shuffle x2: conv channel 4c + position becomes channel c
        for key in ("weight", "bias"):
            state[f"{upsampler}.{key}"][4 + position] = 3 * state[f"{upsampler}.{key}"][position]
    for key in ("weight", "bias"):
        state[f"{upsampler}.{key}"] /= shrink
        state[f"{last}.{key}"] *= shrink / gain
    state["add_mean.weight"] *= gain
    state[f"{last}.weight"][:, 0, 1, 1] += 3 * k
    state[f"{last}.weight"][:, 1, 1, 1] -= k
    return save_official(state, path)


def test_the_sensitivity_search_buys_precision_where_ranges_cannot(tmp_path):
    out = tmp_path / "e"
    manifest = export_tiny("ipt-sr-x4", out, weights=cancelling_ipt_checkpoint(tmp_path / "ipt.pth"))
    tolerance = manifest.tolerances["fp16_calibration_max_abs"]
    fp32 = onnx.load(str(out / FP32_FILE))
    batch = [synthetic_batch(manifest.input.shape, seed) for seed in (7, 8)]
    reference = precision.run_graph(fp32, batch)
    ranges = precision.measure_ranges(fp32, batch)
    for margin in precision.MARGINS:  # what the range plans alone would ship
        ranged = precision.convert(fp32, precision.plan_islands(fp32, ranges, margin).fp32_nodes)
        assert max(np.abs(e - a).max() for e, a in zip(reference, precision.run_graph(ranged, batch))) > tolerance
    fp16 = manifest.fp16
    assert fp16.sensitivity_blocks and fp16.fp32_by_reason["sensitivity"] > 0
    assert all(block.startswith("/tail") for block in fp16.sensitivity_blocks)
    assert fp16.max_abs_vs_fp32 <= tolerance and 0.5 < fp16.fp16_flop_share < 1.0
    planned = onnx.load(str(out / FP16_FILE))
    assert max(np.abs(e - a).max() for e, a in zip(reference, precision.run_graph(planned, batch))) <= tolerance


def test_the_sensitivity_search_says_when_nothing_holds(tmp_path, monkeypatch):
    """Only when no block can be kept FP16 does the export fail: in one line and exit status 2,
    with the FP32 export written and its manifest saying there is no FP16 graph."""
    from click.testing import CliRunner

    from deploytool.build import registry
    from deploytool.cli import cli

    entry = tiny_entry("ipt-sr-x4")
    monkeypatch.setattr(registry, "get", lambda model_id: entry)
    # no depth of the module paths gives 1000 blocks, so they are cut at the deepest one: the
    # most blocks the search can try; every plan still fails (`_failing`). Both are looked up in
    # precision.search, where node_blocks, search_plan and buy_precision use them
    monkeypatch.setattr(precision.search, "MIN_BLOCKS", 1000)
    monkeypatch.setattr(precision.search, "validate", _failing(precision.validate))
    out = tmp_path / "e"
    weights = cancelling_ipt_checkpoint(tmp_path / "ipt.pth")
    result = CliRunner().invoke(cli, ["export", "ipt-sr-x4", "--weights", str(weights), "--out", str(out), "--batch", "1"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert "Traceback" not in result.output and last.startswith("error: "), result.output
    assert re.search(r"no FP16 plan meets the tolerance .* blocks kept in FP32 by the sensitivity search; the FP32 export is written", last), last
    assert (out / FP32_FILE).is_file() and not (out / FP16_FILE).exists()
    written = read_manifest(out)
    assert written.fp16 is None and set(written.files) == {FP32_FILE}


def _failing(validate):
    """`validate` whose every result misses the tolerance (an FP16 error nothing can buy back)."""

    def failing(*args, **kwargs):
        result = validate(*args, **kwargs)
        return dataclasses.replace(result, max_abs=math.inf, graph=None)

    return failing


def test_the_fp16_plan_holds_on_verifys_inputs_not_only_on_its_calibration_inputs(tmp_path):
    """A tiny IPT (seed 0) whose range plan meets the tolerance on its two calibration inputs
    (max |d| 6.9e-4) and misses it on verify's two standard inputs (1.8e-3): max |d| is a tail
    statistic. The export validates on verify's inputs too, with a safety factor, and buys
    precision until the plan holds there: verify then passes."""
    tolerance = 1.2e-3
    entry = tiny_entry("ipt-sr-x4")
    tolerances = {**entry.tolerances, "fp16_max_abs": tolerance, "fp16_calibration_max_abs": tolerance}
    out = tmp_path / "e"
    manifest = export_tiny("ipt-sr-x4", out, weights=save_official(tiny_state_dict(entry, seed=0), tmp_path / "ipt.pth"), tolerances=tolerances)

    shape = manifest.input.shape
    fp32 = onnx.load(str(out / FP32_FILE))
    calibration = [synthetic_batch(shape, seed) for seed in range(2)]  # the export's, as export_tiny asks
    verify_inputs = [parity_batch(shape, index) for index in range(PARITY_BATCHES)]
    ranged = precision.convert(fp32, precision.plan_islands(fp32, precision.measure_ranges(fp32, calibration), precision.MARGINS[0]).fp32_nodes)

    def max_abs(graph, batches):
        return max(float(np.abs(e - a).max()) for e, a in zip(precision.run_graph(fp32, batches), precision.run_graph(graph, batches)))

    # the case is real: what the range plan alone (all an export validated on its calibration
    # inputs shipped) gives on each set
    assert max_abs(ranged, calibration) <= tolerance < max_abs(ranged, verify_inputs)

    fp16 = manifest.fp16
    assert fp16.sensitivity_blocks and fp16.verify_inputs_limit == pytest.approx(tolerance / precision.VERIFY_SAFETY)
    assert fp16.verify_inputs_max_abs <= fp16.verify_inputs_limit
    assert fp16.measured_at.shape == shape and "verify's 2 synthetic batches" in fp16.measured_at.inputs
    assert max_abs(onnx.load(str(out / FP16_FILE)), verify_inputs) <= tolerance / precision.VERIFY_SAFETY
    report = parity.verify(out, backends=[ORIGINAL, ORT_FP16])
    assert report["passed"] and {c["candidate"] for c in report["comparisons"]} == {ORT_FP16}


# -- BF16: the same planner over the other reduced precision


def test_bf16_islands_are_by_op_and_accumulation_not_by_range():
    """BF16 has FP32's range: a tensor beyond FP16's stays BF16. Normalisations stay FP32 by op
    as in FP16, ops ONNX has no BF16 kernel for stay FP32, and a reduction over more than
    BF16_SUMMED_LIMIT elements stays FP32 whatever its range; a softmax runs BF16 over any length
    (its kernels keep their sums in FP32), where FP16 keeps every softmax by op."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], name="soft"),
        helper.make_node("Softmax", ["x"], ["s_wide"], name="soft_wide", axis=0),
        helper.make_node("Add", ["s", "x"], ["big"], name="add"),
        helper.make_node("ReduceMean", ["big"], ["wide"], name="wide", axes=[0, 1], keepdims=0),
        helper.make_node("ReduceMean", ["big"], ["narrow"], name="narrow", axes=[1], keepdims=0),
        helper.make_node("Einsum", ["narrow"], ["out"], name="einsum", equation="i->i"),
        helper.make_node("LayerNormalization", ["x", "scale"], ["normed"], name="norm", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [300, 64])],
        [
            helper.make_tensor_value_info("wide", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [300]),
            helper.make_tensor_value_info("s_wide", TensorProto.FLOAT, [300, 64]),
            helper.make_tensor_value_info("normed", TensorProto.FLOAT, [300, 64]),
        ],
        [helper.make_tensor("scale", TensorProto.FLOAT, [64], [1.0] * 64)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ranges = {"x": 1.0, "s": 1.0, "s_wide": 1.0, "big": 60000.0, "wide": 1.0, "narrow": 1.0, "out": 1.0, "normed": 1.0}
    plan = precision.plan_islands(model, ranges, margin=16.0, reduced=precision.BF16)
    assert plan.reasons == {"wide": "accumulation", "einsum": "op:Einsum", "norm": "op:LayerNormalization"}
    assert precision.summed_elements(nodes[3], precision.tensor_sizes(model)) == 19200 > precision.BF16_SUMMED_LIMIT
    assert precision.summed_elements(nodes[4], precision.tensor_sizes(model)) == 64
    fp16 = precision.plan_islands(model, ranges, margin=16.0)  # the same graph's FP16 plan, for contrast
    assert fp16.reasons["add"] == "range" and "einsum" not in fp16.fp32_nodes
    assert fp16.reasons["soft"] == fp16.reasons["soft_wide"] == "op:Softmax"


def emulated_max_abs(fp32: onnx.ModelProto, fp32_nodes: set[str], batches: list[np.ndarray]) -> float:
    """The BF16 plan keeping `fp32_nodes`, emulated, against the FP32 graph."""
    from deploytool.build import bf16

    expected, actual = precision.run_graph(fp32, batches), precision.run_graph(bf16.emulate(fp32, fp32_nodes), batches)
    return max(float(np.abs(e - a).max()) for e, a in zip(expected, actual))


def test_the_bf16_sensitivity_search_buys_precision_where_op_islands_cannot(tmp_path):
    """`cancelling_ipt_checkpoint`'s cancellation (3K - K with K = 1000.3) is lost in BF16's 8
    bits as in FP16's 11: the search ranks the last conv costliest and keeps it in FP32 (with
    what else the tolerance needs), and the shipped graph holds."""
    from deploytool.build import bf16

    out = tmp_path / "e"
    manifest = export_tiny("ipt-sr-x4", out, weights=cancelling_ipt_checkpoint(tmp_path / "ipt.pth"), fp16=False, bf16=True)
    tolerance = manifest.tolerances["bf16_calibration_max_abs"]
    fp32 = onnx.load(str(out / FP32_FILE))
    batch = [synthetic_batch(manifest.input.shape, seed) for seed in (7, 8)]
    by_op = precision.plan_islands(fp32, precision.measure_ranges(fp32, batch), precision.MARGINS[0], reduced=precision.BF16)
    assert emulated_max_abs(fp32, by_op.fp32_nodes, batch) > tolerance  # what the op islands alone would ship
    plan = manifest.bf16
    assert manifest.fp16 is None and set(manifest.files) == {FP32_FILE, BF16_FILE}
    assert plan.sensitivity_blocks and plan.fp32_by_reason["sensitivity"] > 0
    assert plan.sensitivity_blocks[0] == "/tail.0/1"  # the last conv (module tail.0.1), where the channels cancel
    assert plan.max_abs_vs_fp32 <= tolerance and 0 < plan.bf16_flop_share < 1.0
    shipped = bf16.fp32_islands(onnx.load(str(out / BF16_FILE)), fp32)
    assert by_op.fp32_nodes < shipped and emulated_max_abs(fp32, shipped, batch) <= tolerance


@pytest.mark.slow
@pytest.mark.parametrize("model_id", [full_size_id(i) for i in ["dat-x4", "esrt-x2", "hat-x4", "ipt-sr-x4", "restormer-derain", "swinir-m-x4"]])
def test_a_full_size_bf16_plan_holds(full_size_exports, model_id):
    """One id per family at full size (random weights, 64 px; IPT at its fixed tile): the BF16 plan
    holds, and the FP32 graph computes what the TorchScript exporter's did."""
    from deploytool.build.networks import build_def, load_state_dict

    out, manifest = full_size_exports.folder(model_id), full_size_exports.manifest(model_id)
    assert_bf16_plan_holds(out, manifest)
    # the same export's FP32 graph (torch.export) computes what the TorchScript exporter's graph did (issue 22)
    request = full_size_exports.request(model_id)
    model = build_def(request.entry, load_state_dict(request.entry, request.source))
    assert max_abs_against_torchscript(onnx.load(str(out / FP32_FILE)), model, request.entry.fold_limit_mb) <= 1e-5


def test_the_bf16_search_returns_the_weighted_products_of_kept_blocks_that_hold_to_bf16():
    """Two blocks kept in FP32. In `/a` the precision is lost in its elementwise part (x + 256 -
    256 keeps a step of 2 in BF16), so its MatMul goes back to BF16; in `/b` the MatMul itself
    reads values near 256, so it cannot. The result holds on every input."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array((rng.standard_normal((16, 16)) / 4).astype(np.float32), "w"),
        numpy_helper.from_array((np.eye(16) + rng.standard_normal((16, 16)) / 64).astype(np.float32), "v"),
        numpy_helper.from_array(np.array(256.0, np.float32), "offset"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="/a/MatMul"),
        helper.make_node("Add", ["a", "offset"], ["a_up"], name="/a/Add"),
        helper.make_node("Sub", ["a_up", "offset"], ["a_out"], name="/a/Sub"),
        helper.make_node("Add", ["a_out", "offset"], ["b"], name="/b/Add"),
        helper.make_node("MatMul", ["b", "v"], ["p"], name="/b/MatMul"),
        helper.make_node("Sub", ["p", "offset"], ["y"], name="/b/Sub"),
    ]
    inputs, outputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = precision.prepare_conversion(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    arrays = [rng.standard_normal((4, 16)).astype(np.float32) for _ in range(3)]
    checked = precision.SearchInputs(arrays, precision.run_graph(model, arrays), [0.05] * 3, "0.05")
    blocks = {"/b": ["/b/Add", "/b/MatMul", "/b/Sub"], "/a": ["/a/MatMul", "/a/Add", "/a/Sub"]}
    trials = precision.BF16.trials(model)
    for block in blocks.values():  # each block alone in BF16 misses the limit: both are needed in FP32
        assert not precision.validate(trials, {n.name for n in nodes} - set(block), arrays[:1], checked.fp32_outputs[:1], 0.05).holds
    lines = []
    found = precision.release_finer_units(trials, precision.Fp16Plan(set(), {}, 16.0), blocks, checked, precision.BF16, lines.append)
    assert found is not None, lines
    plan, kept, result = found
    assert plan.fp32_nodes == {n.name for n in nodes} - {"/a/MatMul"} and kept == ("/b", "/a")
    assert set(plan.reasons.values()) == {"sensitivity"} and result.holds and result.inputs == 3
    assert "50% of their FLOPs stay FP32 (2 trials)" in lines[-1]


def test_search_inputs_moved_to_the_front_give_their_errors_back_in_the_order_they_were_given():
    arrays = [np.full((1,), index, np.float32) for index in range(4)]
    given = precision.SearchInputs(arrays, [a + 1 for a in arrays], [0.1, 0.2, 0.3, 0.4], "limits")
    moved = given.starting_with(2).starting_with(3)  # [2, 0, 1, 3], then its fourth first
    assert [float(a[0]) for a in moved.arrays] == [3, 2, 0, 1] and [float(o[0]) for o in moved.fp32_outputs] == [4, 3, 1, 2]
    assert moved.limits == [0.4, 0.3, 0.1, 0.2] and moved.first(2).positions == (3, 2)
    assert moved.in_given_order(moved.limits) == (0.1, 0.2, 0.3, 0.4)
