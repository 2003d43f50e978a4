"""Tile growth: ranges measured on the calibration graph (the export's graph at a smaller tile)
carried to the export's tile. Only sums grow with the tile (`tile_growth`); the reductions'
running sums and element counts (`reduction_accumulator`, `summed_elements`)
judge them in the plan.
BF16 plans use no growth: no tensor comes near BF16's range, and growth only grows ranges.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from deploytool.build.inferred_types import TensorType, tensor_types

# Ops whose output element sums over input elements whose count depends on the tile (see tile_growth)
SUMS_OVER_INPUT = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceL2", "MatMul", "Gemm"})
# Ops whose output is bounded whatever their input: growth with the tile stops there
BOUNDED_OPS = frozenset(
    {"Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Sigmoid", "Tanh", "Erf", "Sin", "Cos", "Sign"}
)


def corresponding_tensors(measured: onnx.ModelProto, target: onnx.ModelProto) -> dict[str, str] | None:
    """For one graph traced at two tiles: each `target` tensor's name in `measured` (onnxsim
    numbers the tensors it makes anew at each tile), or None where the nodes differ. The same
    nodes means the same names, ops and sources of every input, in the same order; constant
    operands may differ (shapes, masks: that is what the tile changes)."""

    def signature(model: onnx.ModelProto) -> list[tuple]:
        source = {value.name: ("input", index) for index, value in enumerate(model.graph.input)}
        for node in model.graph.node:
            source.update({out: (node.name, index) for index, out in enumerate(node.output)})
        return [(n.name, n.op_type, tuple(source.get(name, "") for name in n.input), len(n.output)) for n in model.graph.node]

    if signature(measured) != signature(target):
        return None
    names = {a.name: b.name for a, b in zip(target.graph.input, measured.graph.input)}
    for a, b in zip(target.graph.node, measured.graph.node):
        names.update(zip(a.output, b.output))
    return names


def tile_growth(
    measured: onnx.ModelProto, target: onnx.ModelProto, names: dict[str, str], target_types: dict[str, TensorType] | None = None
) -> dict[str, float]:
    """For one graph at two tiles (`names`: `corresponding_tensors`): by how much each `target`
    tensor's max |value| can exceed the one measured on `measured` (tensors that cannot grow
    are left out).

    Only sums grow with the tile: a reduction or a MatMul that sums over N elements at the
    target tile and n at the measured one is a sum of N/n partial sums, each like a measured
    one, so |sum| <= (N/n) * measured (ReduceL2: sqrt(N/n); a mean does not grow). Growth then
    flows forward: through products it multiplies, through a quotient it follows the numerator,
    through sums and layout ops it is the largest of the inputs', and bounded ops (softmax,
    normalisations, sigmoid, tanh, erf) end it.
    """
    small, large = tensor_types(measured), target_types or tensor_types(target)
    constants = {init.name: init for init in target.graph.initializer}
    growth: dict[str, float] = {}

    def summed_ratio(node: onnx.NodeProto) -> float:
        if node.op_type in ("MatMul", "Gemm"):
            transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
            axis = -2 if transposed else -1
            return large[node.input[0]].shape[axis] / small[names[node.input[0]]].shape[axis]
        inner = (
            large[node.input[0]].elements / large[node.output[0]].elements,
            small[names[node.input[0]]].elements / small[names[node.output[0]]].elements,
        )
        return inner[0] / inner[1]

    for node in target.graph.node:
        factor = flowing_growth(node, [growth.get(name, 1.0) for name in node.input if name], constants)
        if node.op_type in SUMS_OVER_INPUT:
            ratio = summed_ratio(node)
            factor *= math.sqrt(ratio) if node.op_type == "ReduceL2" else ratio
        if factor != 1.0:
            growth.update(dict.fromkeys(node.output, factor))
    return growth


def flowing_growth(node: onnx.NodeProto, factors: list[float], constants: dict[str, onnx.TensorProto]) -> float:
    """The growth of `node`'s output from its inputs' (`factors`), before any sum of its own
    (see `tile_growth`)."""
    first = factors[0] if factors else 1.0
    op = node.op_type
    if op in BOUNDED_OPS:
        return 1.0
    if op in ("Mul", "MatMul", "Gemm"):
        factor = math.prod(factors[:2]) if len(factors) > 1 else first
        return max(factor, *factors[2:]) if op == "Gemm" else factor
    if op == "Div":
        return first
    if op == "Sqrt":
        return math.sqrt(first)
    if op == "ReduceSumSquare":
        return first * first
    if op == "Pow":
        exponent = constants.get(node.input[1])
        power = float(np.max(np.abs(numpy_helper.to_array(exponent)))) if exponent is not None else math.inf
        return first**power if first > 1.0 else 1.0
    if op == "Exp":
        return math.inf if first > 1.0 else 1.0
    return max(factors, default=1.0)


def carried_ranges(ranges: dict[str, float], names: dict[str, str], growth: dict[str, float]) -> dict[str, float]:
    """Ranges measured on one tile's graph, under the other's tensor names, grown by `growth`."""
    carried = {}
    for name, measured_name in names.items():
        value = ranges.get(measured_name, 0.0)
        carried[name] = value * growth[name] if name in growth and value > 0 else value
    return carried


def tensor_sizes(model: onnx.ModelProto, types: dict[str, TensorType] | None = None) -> dict[str, int]:
    """Element counts; `types`: the model's `tensor_types`, where the caller has them already."""
    return {name: tensor.elements for name, tensor in (types or tensor_types(model)).items()}


def reduction_accumulator(node: onnx.NodeProto, ranges: dict[str, float], sizes: dict[str, int]) -> float:
    """Largest running sum a reduction holds, from its measured output."""
    out = ranges.get(node.output[0], 0.0)
    if node.op_type == "ReduceL2":
        return out * out
    if node.op_type in ("ReduceMean", "GlobalAveragePool"):
        return out * summed_elements(node, sizes)
    return out


def summed_elements(node: onnx.NodeProto, sizes: dict[str, int]) -> int:
    """How many input elements a reduction sums into each output element."""
    return sizes.get(node.input[0], 1) // max(1, sizes.get(node.output[0], 1))
