"""The ONNX graph passes export runs, each a function model -> model or a check: onnxsim with
large expanding constants held back from folding (`simplify`), Constant nodes to initializers,
byte-identical initializers merged, the static-graph check, the graph's size summary, and the
atomic save.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from deploytool.build.inferred_types import tensor_types
from deploytool.errors import ExportError
from deploytool.runtime.fileio import atomic_path

# Ops that mean shape arithmetic or data-dependent shapes, or that TensorRT cannot run (Col2Im).
FORBIDDEN_OPS = frozenset({"Shape", "Size", "Col2Im", "NonZero", "ConstantOfShape", "Range", "Loop", "If", "Scan", "Unique"})
# Inputs (by position) that must be constants for a static graph.
STATIC_OPERANDS = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Pad": (1, 2),
    "Slice": (1, 2, 3, 4),
    "Resize": (1, 2, 3),
    "Split": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "TopK": (1,),
    # from opset 18 the reductions take their axes as an input
    **dict.fromkeys(
        ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"),
        (1,),
    ),
}
# onnx-tensorrt's operator support matrix (docs/operators.md): the operators TensorRT 10.x
# parses at opset 18, less those FORBIDDEN_OPS excludes and the quantized, sequence and random
# ones a restoration graph has no use for.
TENSORRT_OPS = frozenset(
    {
        *("Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool"),
        *("BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum"),
        *("DepthToSpace", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor"),
        *("Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater"),
        *("GreaterOrEqual", "GridSample", "GroupNormalization", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization"),
        *("IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "LpNormalization", "LpPool"),
        *("LRN", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg", "Not", "OneHot"),
        *("Or", "Pad", "Pow", "PRelu", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax"),
        *("ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "Round"),
        *("ScatterElements", "ScatterND", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Slice", "Softmax"),
        *("Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK"),
        *("Transpose", "Trilu", "Unsqueeze", "Where", "Xor"),
    }
)


def simplify(model: onnx.ModelProto, fold_limit_mb: float = 0.0, hold: frozenset[str] | None = None) -> tuple[onnx.ModelProto, frozenset[str]]:
    """onnxsim; with `fold_limit_mb`, constants that a node expands beyond that size stay
    computed. Returns the graph and the names of the nodes so held; `hold` holds those nodes
    instead (the same graph at another tile, whose constants have other sizes, folds alike)."""
    import onnxsim

    if hold is None:
        hold = _expanding_constants(model, int(fold_limit_mb * 2**20)) if fold_limit_mb else frozenset()
    held = _hold_nodes(model, hold)
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ExportError("onnxsim could not validate the simplified graph against the traced one")
    if held:
        _release_held_nodes(simplified)
    return simplified, held


# A domain onnxsim does not know, so it cannot fold the nodes moved there; moved back after.
_HOLD_DOMAIN = "ai.deploytool.hold"


def _expanding_constants(model: onnx.ModelProto, limit_bytes: int) -> frozenset[str]:
    """The nodes that compute, from constants only, a tensor above `limit_bytes` and larger
    than every input (a bias gathered from a small table, a broadcast): folded, each would
    become a large initializer."""
    nbytes = {name: tensor.nbytes for name, tensor in tensor_types(model).items()}
    constant = {init.name for init in model.graph.initializer}
    expanding = set()
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(name in constant for name in inputs)):
            out_bytes = nbytes.get(node.output[0], 0)
            if node.op_type != "Constant" and out_bytes > limit_bytes and out_bytes > max(nbytes.get(n, 0) for n in inputs):
                expanding.add(node.name)
            else:
                constant.update(node.output)
    return frozenset(expanding)


def _hold_nodes(model: onnx.ModelProto, names: frozenset[str]) -> frozenset[str]:
    """Hide the named nodes from constant folding; returns the names found."""
    held = frozenset(node.name for node in model.graph.node if node.name in names)
    for node in model.graph.node:
        if node.name in held:
            node.domain = _HOLD_DOMAIN
    if held:
        model.opset_import.append(onnx.helper.make_opsetid(_HOLD_DOMAIN, 1))
    return held


def _release_held_nodes(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.domain == _HOLD_DOMAIN:
            node.domain = ""
    imports = [o for o in model.opset_import if o.domain != _HOLD_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)


# Constant attributes that hold a list or a scalar instead of a tensor, and the dtype of each
_CONSTANT_LISTS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Move Constant nodes into initializers, where deduplication can see them and the FP16/BF16
    converters type them (the dynamo exporter writes some as lists: an empty `value_floats` for a
    Resize's unused scales, which the FP16 converter retyped but did not convert)."""
    graph = model.graph
    kept = []
    for node in graph.node:
        tensor = _constant_tensor(node)
        if tensor is None:
            kept.append(node)
        else:
            graph.initializer.append(tensor)
    del graph.node[:]
    graph.node.extend(kept)


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    if attribute.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attribute.t)
        tensor.name = node.output[0]
        return tensor
    if attribute.name in _CONSTANT_LISTS:
        values = np.array(onnx.helper.get_attribute_value(attribute), dtype=_CONSTANT_LISTS[attribute.name])
        return numpy_helper.from_array(values, node.output[0])
    return None


def deduplicate_initializers(model: onnx.ModelProto) -> int:
    """Merge byte-identical constants (e.g. one window mask per block) into one; returns how many."""
    graph = model.graph
    first_by_key: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for init in graph.initializer:
        key = (init.data_type, tuple(init.dims), hashlib.sha256(numpy_helper.to_array(init).tobytes()).hexdigest())
        if key in first_by_key:
            renamed[init.name] = first_by_key[key]
        else:
            first_by_key[key] = init.name
            kept.append(init)
    if not renamed:
        return 0
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    return len(renamed)


def static_graph_violations(model: onnx.ModelProto) -> list[str]:
    """Everything that keeps a graph from being fully static; empty for a conforming graph."""
    problems = []
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    for node in model.graph.node:
        if node.op_type in FORBIDDEN_OPS:
            problems.append(f"{node.op_type} node {node.name}")
        elif node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_OPS:
            problems.append(f"{node.op_type} node {node.name} is not in onnx-tensorrt's operator matrix")
        for position in STATIC_OPERANDS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] and node.input[position] not in constants:
                problems.append(f"{node.op_type} node {node.name} takes a computed operand {position}")
    for name, tensor in tensor_types(model, strict=True).items():
        if not tensor.static:
            problems.append(f"tensor {name} has no static shape")
    return problems


def readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """{value name: the nodes that read it}."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def graph_summary(model: onnx.ModelProto) -> dict[str, Any]:
    return {
        "nodes": len(model.graph.node),
        "initializers": len(model.graph.initializer),
        "parameter_bytes": int(sum(np.prod(i.dims) * (2 if i.data_type == onnx.TensorProto.FLOAT16 else 4) for i in model.graph.initializer)),
    }


def save_model(model: onnx.ModelProto, path: Path) -> None:
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
