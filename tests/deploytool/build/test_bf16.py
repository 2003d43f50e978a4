"""The BF16 deploy graph and its emulation: rounding bit for bit, PyTorch's BF16, the shipped graph's contract."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deploytool.build import bf16, precision


def round_to_nearest_even_reference(values: np.ndarray) -> np.ndarray:
    """float32 -> BF16 -> float32 on the bits: add 0x7FFF plus the kept part's lowest bit, drop
    the low 16 bits (a carry rounds up into the exponent, to infinity past BF16's largest). A NaN
    stays a NaN (the bit arithmetic could carry a NaN with a low payload into infinity)."""
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32)
    return np.where(np.isnan(values), np.float32(np.nan), rounded.view(np.float32))


def every_kind_of_float() -> np.ndarray:
    """Every BF16 value's neighbourhood: all 2^16 upper halves (zeros, subnormals, normals, the
    largest, infinities, NaNs, both signs) with the low halves that decide the rounding (exact,
    just above, just below and exactly at a tie, past it, all ones), and random floats."""
    upper = np.arange(2**16, dtype=np.uint32) << 16
    lower = np.array([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=np.uint32)
    random = np.random.default_rng(0).integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([(upper[:, None] | lower[None, :]).ravel(), random]).view(np.float32)


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan)  # a NaN stays a NaN (its payload is not BF16's to keep)
    mismatched = actual[~nan].view(np.uint32) != expected[~nan].view(np.uint32)
    assert not mismatched.any(), f"{mismatched.sum()} values round otherwise, e.g. {expected[~nan][mismatched][:3]}"


def one_node_graph(op_type: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x"], ["y"], name="node")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_emulation_rounds_to_nearest_even_bit_for_bit():
    values = every_kind_of_float()
    expected = round_to_nearest_even_reference(values.copy())
    # activations: the emulated graph's Cast to bfloat16 and back, in ONNX Runtime
    (emulated,) = precision.run_graph(bf16.emulate(one_node_graph("Identity"), set()), [values])
    assert_same_bits(emulated, expected)
    # weights: rounded once, in numpy
    assert_same_bits(bf16.round_to_bf16(values), expected)


def small_network() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv, Relu, a scale, a token reshape, MatMul, then Softmax (an FP32 island) added back."""
    rng = np.random.default_rng(0)
    weights = {
        "W": rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32),
        "B": rng.normal(0, 0.1, 8).astype(np.float32),
        "S": rng.normal(1, 0.2, (1, 8, 1, 1)).astype(np.float32),
        "M": rng.normal(0, 0.4, (8, 8)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "S"], ["m"], name="scale"),
        helper.make_node("ReduceMean", ["m"], ["mean"], name="mean", axes=[1], keepdims=1),
        helper.make_node("Sub", ["m", "mean"], ["centred"], name="centre"),
        helper.make_node("Reshape", ["centred", "shape"], ["flat"], name="flatten"),
        helper.make_node("Transpose", ["flat"], ["tokens"], name="tokens", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "M"], ["projected"], name="project"),
        helper.make_node("Softmax", ["projected"], ["soft"], name="soft", axis=-1),
        helper.make_node("Add", ["soft", "projected"], ["y"], name="add"),
    ]
    initializers = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    initializers.append(numpy_helper.from_array(np.array([1, 8, 64], np.int64), "shape"))
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), weights


def pytorch_bf16(x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """`small_network` in PyTorch's CPU BF16 ops, Softmax in FP32."""
    as_bf16 = {name: torch.from_numpy(array).bfloat16() for name, array in weights.items()}
    with torch.no_grad():
        features = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x).bfloat16(), as_bf16["W"], as_bf16["B"], padding=1)) * as_bf16["S"]
        centred = features - features.mean(dim=1, keepdim=True)
        projected = centred.reshape(1, 8, 64).transpose(1, 2) @ as_bf16["M"]
        return (torch.softmax(projected.float(), dim=-1).bfloat16() + projected).float().numpy()


def test_the_emulated_graph_computes_what_pytorch_bf16_does():
    """Bound: one BF16 step of each output value (a kernel's FP32 accumulation order may differ
    from ONNX Runtime's and round the other way); observed here: identical outputs."""
    model, weights = small_network()
    x = np.random.default_rng(1).normal(0, 1, (1, 4, 8, 8)).astype(np.float32)
    (emulated,) = precision.run_graph(bf16.emulate(model, {"soft"}), [x])
    expected = pytorch_bf16(x, weights)
    step = np.ldexp(1.0, np.frexp(np.abs(expected))[1] - 8)  # BF16's spacing at each value
    assert np.all(np.abs(emulated - expected) <= step)
    (unrounded,) = precision.run_graph(model, [x])
    assert np.abs(unrounded - expected).max() > 10 * np.abs(emulated - expected).max()  # the rounding is what matches


def test_a_search_emulation_computes_what_emulate_does_without_carrying_the_weights(monkeypatch):
    """A plan search's Emulation: for every plan the same outputs, bit for bit, as `emulate`'s
    graph, from graphs that hold no bytes of a large weight (ONNX Runtime is handed them from
    memory: the FP32 array to an FP32 node, its rounded copy to a BF16 one); small constants stay
    in the graph (ONNX Runtime reads some while it loads it: a Resize's scales), rounded there."""
    monkeypatch.setattr(bf16, "_HANDED_ELEMENTS", 100)  # W (288 values) handed over; B, S, M (8, 8, 64) kept
    model, _ = small_network()
    prepared = precision.prepare_conversion(model)
    emulation = bf16.Emulation(prepared)
    x = np.random.default_rng(3).normal(0, 1, (1, 4, 8, 8)).astype(np.float32)
    for kept in (set(), {"soft"}, {"conv", "project"}, {node.name for node in model.graph.node}):
        graph, session = emulation.session(kept)
        floats = {init.name: init for init in graph.graph.initializer if init.data_type == TensorProto.FLOAT}
        assert {name for name, init in floats.items() if init.data_location == TensorProto.EXTERNAL} == {"W" if "conv" in kept else "W__bf16"}
        assert not floats["W" if "conv" in kept else "W__bf16"].raw_data and {"B", "S", "M"} <= set(floats)
        (expected,) = precision.run_graph(bf16.emulate(prepared, kept), [x])
        assert_same_bits(session.run(None, {"x": x})[0], expected)


def selecting_network() -> onnx.ModelProto:
    """Computing nodes (Mul, Add, Greater) between nodes that only select their inputs' values:
    Slice, Concat, Gather, Transpose, Max, Where, Split, Relu, ReduceMax."""
    rng = np.random.default_rng(4)
    initializers = [
        numpy_helper.from_array(rng.normal(1, 0.3, (1, 8)).astype(np.float32), "scale"),
        numpy_helper.from_array(np.array([2], np.int64), "starts"),
        numpy_helper.from_array(np.array([6], np.int64), "ends"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([3, 0, 7, 1, 1, 5, 2, 6], np.int64), "order"),
        numpy_helper.from_array(np.array([1], np.int64), "last"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"], name="scale"),
        helper.make_node("Slice", ["scaled", "starts", "ends", "axes"], ["part"], name="part"),
        helper.make_node("Concat", ["part", "part"], ["twice"], name="twice", axis=0),
        helper.make_node("Gather", ["twice", "order"], ["picked"], name="picked", axis=0),
        helper.make_node("Transpose", ["picked"], ["turned"], name="turned", perm=[1, 0]),
        helper.make_node("Max", ["picked", "scaled"], ["larger"], name="larger"),
        helper.make_node("Greater", ["larger", "x"], ["above"], name="above"),
        helper.make_node("Where", ["above", "larger", "x"], ["chosen"], name="chosen"),
        helper.make_node("Split", ["chosen"], ["left", "right"], name="halves", axis=1, num_outputs=2),
        helper.make_node("Relu", ["left"], ["positive"], name="positive"),
        helper.make_node("ReduceMax", ["right", "last"], ["peak"], name="peak", keepdims=1),
        helper.make_node("Add", ["positive", "peak"], ["sum"], name="sum"),
        helper.make_node("Concat", ["sum", "right"], ["y"], name="joined", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "selecting",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8]), helper.make_tensor_value_info("turned", TensorProto.FLOAT, [8, 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_the_emulation_leaves_what_value_selecting_nodes_write_unrounded_and_computes_the_same_bits(monkeypatch):
    """A BF16 node that only selects its inputs' values writes BF16 values already: rounding its
    output again would change no bit, so the emulation leaves that Cast pair out (HAT at 64 px:
    8,067 -> 5,343 nodes, its run 6.23 -> 4.45 s)."""
    model = selecting_network()
    x = np.random.default_rng(5).normal(0, 1, (8, 8)).astype(np.float32)
    x[0, :4] = [np.inf, -np.inf, 3.3895e38, 1e-40]  # BF16's largest and a subnormal, rounded on read
    emulated = bf16.emulate(model, set())
    rounded_after = {node.input[0] for node in emulated.graph.node if node.name.endswith("__round")}
    assert rounded_after == {"x", "scaled__exact", "sum__exact"}  # the input, the two computing nodes' outputs
    monkeypatch.setattr(bf16, "SELECTS_INPUT_VALUES", frozenset())
    everything = bf16.emulate(model, set())
    assert len(everything.graph.node) > len(emulated.graph.node)
    for expected, actual in zip(precision.run_graph(everything, [x]), precision.run_graph(emulated, [x])):
        assert_same_bits(actual, expected)


def test_a_bf16_softmax_between_bf16_nodes_computes_as_an_fp32_island_there_does():
    """Why a softmax over at most BF16_SUMMED_LIMIT elements is no island: its input comes BF16
    from the MatMul before it and its output is read in BF16 by the node after it, and between
    the two it sums in FP32 either way, so the plan's output is the same to the bit; only the
    Cast pair around it goes."""
    model, _ = small_network()
    x = np.random.default_rng(2).normal(0, 1, (1, 4, 8, 8)).astype(np.float32)
    (island,) = precision.run_graph(bf16.emulate(model, {"soft"}), [x])
    (bf16_softmax,) = precision.run_graph(bf16.emulate(model, set()), [x])
    assert_same_bits(bf16_softmax, island)
    casts = [len([n for n in bf16.convert(model, kept).graph.node if n.op_type == "Cast"]) for kept in ({"soft"}, set())]
    assert casts[0] == casts[1] + 2


def test_the_bf16_graph_keeps_names_and_io_and_computes_as_its_emulation():
    """E2's contract: model.onnx's node names; FP32 islands in float32, all others in bfloat16
    with bfloat16 weights; float32 graph IO under the same names and shapes. onnx's reference
    evaluator runs the BF16 graph in numpy bfloat16: it computes what the emulation does (its
    ReduceMean accumulates otherwise than a BF16 kernel, so the mean is an island here)."""
    model, _ = small_network()
    islands = {"soft", "mean"}
    deployed = bf16.convert(model, islands)
    onnx.checker.check_model(deployed, full_check=True)
    assert {node.name for node in model.graph.node} <= {node.name for node in deployed.graph.node}
    assert [(v.name, v.type) for v in deployed.graph.input] == [(v.name, v.type) for v in model.graph.input]
    assert [(v.name, v.type) for v in deployed.graph.output] == [(v.name, v.type) for v in model.graph.output]
    types = {value.name: value.type.tensor_type.elem_type for value in deployed.graph.value_info}
    computed = {node.name: types.get(node.output[0]) for node in deployed.graph.node if node.name in {n.name for n in model.graph.node}}
    assert {name: computed.pop(name) for name in islands} == dict.fromkeys(islands, TensorProto.FLOAT)
    assert set(computed.values()) == {TensorProto.BFLOAT16}  # "add" writes the output's BF16 twin, cast to float32 as "y"
    weights = {init.name.split("__")[0]: init.data_type for init in deployed.graph.initializer}
    assert all(weights[name] == TensorProto.BFLOAT16 for name in ("W", "B", "S", "M"))
    assert {node.op_type for node in deployed.graph.node} - {node.op_type for node in model.graph.node} == {"Cast", "Constant"}
    assert bf16.fp32_islands(deployed, model) == islands

    from onnx.reference import ReferenceEvaluator

    x = np.random.default_rng(2).normal(0, 1, (1, 4, 8, 8)).astype(np.float32)
    (emulated,) = precision.run_graph(bf16.emulate(model, islands), [x])
    np.testing.assert_array_equal(ReferenceEvaluator(deployed).run(None, {"x": x})[0], emulated)


def test_reductions_keep_their_axes_at_the_bf16_graphs_opset():
    """ONNX has BF16 Conv only from opset 22, where ReduceMean's axes are an input: the version
    converter adds them as a Constant, named apart from model.onnx's nodes."""
    model, _ = small_network()
    deployed = bf16.convert(model, set())
    assert deployed.opset_import[0].version == bf16.BF16_OPSET
    constants = [node for node in deployed.graph.node if node.op_type == "Constant"]
    assert len(constants) == 1 and constants[0].name.startswith(f"opset{bf16.BF16_OPSET}.")
    mean = next(node for node in deployed.graph.node if node.name == "mean")
    assert mean.input[1] == constants[0].output[0] and not any(a.name == "axes" for a in mean.attribute)


@pytest.mark.parametrize("op_type, lacks", [("Conv", False), ("MatMul", False), ("Einsum", True), ("TopK", True), ("Not", False)])
def test_ops_without_a_bf16_kernel_in_onnx_are_known(op_type, lacks):
    assert bf16.lacks_bf16(op_type) is lacks
