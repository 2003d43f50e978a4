"""The FP16 deploy graph under overflow stress: naive FP16 breaks, the planned graph holds."""

import numpy as np
import onnx
import pytest

from deploytool import precision
from deploytool.inputs import synthetic_batch
from deploytool.manifest import FP16_FILE, FP32_FILE
from tests.helpers import export_tiny, save_official, tiny_entry, tiny_state_dict

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


def run_in_true_fp16(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    """onnx's reference evaluator computes FP16 nodes in numpy float16, as a GPU stores them.

    (ONNX Runtime's CPU provider runs FP16 nodes in FP32 and may skip the rounding between
    two of them, so it cannot show an overflow between nodes.)
    """
    from onnx.reference import ReferenceEvaluator

    with np.errstate(all="ignore"):
        return ReferenceEvaluator(model).run(None, {"input": batch})[0]


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
        assert not np.isfinite(run_in_true_fp16(naive, array)).all(), "naive FP16 should overflow"
        actual = run_in_true_fp16(planned, array)
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
