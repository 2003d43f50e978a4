"""Shape inference and ONNX's other serializing passes run without the weights' data."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from deploytool.build.inferred_types import tensor_types, with_weights, without_weights


def weighted_graph() -> onnx.ModelProto:
    """A MatMul on a 32x32 weight (held out), a Reshape on its small shape constant (kept: shape
    inference reads it), a bias listed among the graph's inputs as older graphs do."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.normal(size=(32, 32)).astype(np.float32), "weight"),
        numpy_helper.from_array(np.array([4, 128], np.int64), "shape"),
        numpy_helper.from_array(rng.normal(size=(128,)).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "weight"], ["product"], name="product"),
        helper.make_node("Reshape", ["product", "shape"], ["flat"], name="flat"),
        helper.make_node("ReduceMean", ["flat"], ["mean"], name="mean", keepdims=1, axes=[0]),
        helper.make_node("Add", ["mean", "bias"], ["y"], name="biased"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 32]), helper.make_tensor_value_info("bias", TensorProto.FLOAT, [128])]
    graph = helper.make_graph(nodes, "weighted", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers, doc_string="kept")
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, producer_name="test")


def test_a_model_without_its_weights_data_and_with_them_again_is_the_same_bytes():
    model = weighted_graph()
    light, held = without_weights(model)
    assert [init.name for init in light.graph.initializer] == ["shape"] and {init.name for init in held.initializers} == {"weight", "bias"}
    assert [value.name for value in light.graph.input] == ["x", "bias", "weight"] and held.added_inputs == {"weight"}
    assert len(light.SerializeToString()) < 500 < len(model.SerializeToString()) - 4000  # 1,152 floats held out
    restored = with_weights(light, held)
    assert restored.SerializeToString(deterministic=True) == model.SerializeToString(deterministic=True)


def test_passes_run_without_the_weights_give_what_they_give_with_them():
    model = weighted_graph()
    assert tensor_types(model)["flat"].shape == (4, 128) and tensor_types(model)["mean"].shape == (1, 128)
    light, held = without_weights(model)
    converted = with_weights(version_converter.convert_version(light, 22), held)
    expected = version_converter.convert_version(model, 22)
    assert converted.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    assert any(node.op_type == "Constant" for node in converted.graph.node)  # ReduceMean's axes became an input there
