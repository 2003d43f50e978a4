"""The BF16 deploy graph, and its emulation in FP32 that the planner measures.

`model_bf16.onnx` is `model.onnx` with every node outside the plan's FP32 islands computing in
bfloat16: the weights those nodes read stored as bfloat16, a Cast wherever a tensor crosses
between the two precisions, graph input and output float32 under model.onnx's names and shapes,
and model.onnx's node names kept. ONNX allows bfloat16 in Conv, ConvTranspose, the poolings and
InstanceNormalization only from opset 22, so the BF16 graph is model.onnx converted to opset 22
by onnx's version converter (which keeps the node names; the Reduce* ops' axes become Constant
inputs there, named here).

ONNX Runtime's CPU provider has no BF16 kernels, so a plan is measured on its emulation: the FP32
graph where every tensor a BF16 node reads or writes is rounded to BF16 with round-to-nearest-
even, as a BF16 kernel stores it (but for what a node that only selects its inputs' values
writes, which is BF16 already: SELECTS_INPUT_VALUES): weights once (ml_dtypes), activations by a Cast to bfloat16 and
back, which in ONNX Runtime rounds to nearest even (NaN, infinities and subnormals included:
checked bit for bit in the tests). What a BF16 kernel accumulates between reading and writing
(FP32 on CPUs with AVX-512 BF16 or AMX and on GPUs) the emulation computes in FP32 too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploytool.build.inferred_types import tensor_types, with_inferred_shapes, with_weights, without_weights

BF16_OPSET = 22
BF16_MAX = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
# the IR version opset 22 needs (ONNX Runtime reads up to 11 here)
BF16_IR_VERSION = 10
_FLOAT = "tensor(float)"
_BFLOAT16 = "tensor(bfloat16)"


@functools.cache
def lacks_bf16(op_type: str) -> bool:
    """True for an op of the default domain that takes float tensors but has no bfloat16 in its
    type constraints at BF16_OPSET (Einsum, TopK): such a node stays FP32."""
    try:
        schema = onnx.defs.get_schema(op_type, BF16_OPSET)
    except onnx.defs.SchemaError:
        return False
    allowed = [set(constraint.allowed_type_strs) for constraint in schema.type_constraints]
    return any(_FLOAT in types for types in allowed) and not any(_BFLOAT16 in types for types in allowed)


def round_to_bf16(array: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest BF16 (ties to even), still as float32."""
    with np.errstate(invalid="ignore"):  # NaN stays NaN
        return np.asarray(array, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors of a graph: inputs, initializers and node outputs."""
    return {name for name, tensor in tensor_types(model).items() if tensor.elem_type == TensorProto.FLOAT}


def declared_float_tensors(model: onnx.ModelProto) -> set[str]:
    """`float_tensors` of a model whose shapes are inferred already (value_info filled), read
    without inferring again: a plan search emulates one graph with many plans."""
    graph = model.graph
    values = [*graph.input, *graph.value_info, *graph.output]
    names = {value.name for value in values if value.type.tensor_type.elem_type == TensorProto.FLOAT}
    return names | {init.name for init in graph.initializer if init.data_type == TensorProto.FLOAT}


def _unshared(model: onnx.ModelProto) -> onnx.ModelProto:
    from deploytool.build.precision import unshare_initializers

    return unshare_initializers(model)


def emulate(model: onnx.ModelProto, fp32_nodes: Iterable[str], floats: set[str] | None = None) -> onnx.ModelProto:
    """The FP32 graph that computes as the BF16 plan keeping `fp32_nodes` in FP32 would: what a
    BF16 node reads and writes is rounded to BF16. `floats`: `float_tensors(model)`, where the
    caller has them already."""
    emulated = _unshared(model)
    floats = float_tensors(emulated) if floats is None else floats
    weights = {init.name: init for init in emulated.graph.initializer}

    def rounded_weight(name: str) -> str:
        _round_in_place(weights[name])
        return name

    _round_bf16_nodes(emulated.graph, set(fp32_nodes), floats, set(weights), rounded_weight)
    return emulated


# Ops whose every output value is one of their float inputs' values (a rearranged, repeated or
# selected part, or zero): in a BF16 node they write BF16 values already, so the emulation does not
# round their outputs (the rounding would leave every bit as it is). In HAT's graph half the nodes,
# most of them on the window partitions' large tensors.
SELECTS_INPUT_VALUES = frozenset(
    {
        "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten", "DepthToSpace", "SpaceToDepth",
        "Expand", "Tile", "Concat", "Slice", "Split", "Gather", "GatherND", "GatherElements", "Relu", "Max",
        "Min", "MaxPool", "Where", "Neg", "Abs", "ReduceMax", "ReduceMin",
    }
)  # fmt: skip


def _writes_bf16_values(node: onnx.NodeProto) -> bool:
    """Whether a BF16 `node` writes only values of its inputs, which are BF16 values already."""
    return node.domain in ("", "ai.onnx") and node.op_type in SELECTS_INPUT_VALUES


def _round_bf16_nodes(graph: onnx.GraphProto, kept: set[str], floats: set[str], weights: set[str], rounded_weight: Callable[[str], str]) -> None:
    """Round what every node outside `kept` reads and writes to BF16: a float weight it reads is
    replaced by `rounded_weight(name)`'s, any other float tensor it reads that no such node wrote
    by a Cast pair, and each float output by a Cast pair after it, but for a node that only
    selects its inputs' values (`SELECTS_INPUT_VALUES`)."""
    reduced = {out for node in graph.node if node.name not in kept for out in node.output if out in floats}
    nodes, rounded = [], {}
    for node in graph.node:
        if node.name in kept:
            nodes.append(node)
            continue
        for position, name in enumerate(node.input):
            if name in weights and name in floats:
                node.input[position] = rounded_weight(name)
            elif name in floats and name not in reduced:
                if name not in rounded:
                    rounded[name] = f"{name}__bf16"
                    nodes.extend(_rounding(name, rounded[name]))
                node.input[position] = rounded[name]
        nodes.append(node)
        if _writes_bf16_values(node):
            continue
        for position, name in enumerate(node.output):
            if name in floats:
                node.output[position] = f"{name}__exact"
                nodes.extend(_rounding(node.output[position], name))
    del graph.node[:]
    graph.node.extend(nodes)


# Float constants below this many elements stay in the graph: ONNX Runtime reads some of them while
# it loads the graph (a Resize's scales), and their bytes are nothing to copy.
_HANDED_ELEMENTS = 1024


class Emulation:
    """The emulations of one graph under many plans (a plan search), its float weights kept out
    of the graphs: each plan's graph holds its nodes and names its weights as external data, which
    its ONNX Runtime session is handed from memory (the BF16-rounded copy of a weight made once,
    on first use). A trial then neither copies, rounds nor serializes the weights, which took IPT
    at 48 px 1.7 s of a trial's 2.3 s. `model` must be unshared (`prepare_conversion`'s)."""

    def __init__(self, model: onnx.ModelProto):
        self.floats = declared_float_tensors(model)
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self._weights: dict[str, np.ndarray] = {}
        for init in self.model.graph.initializer:
            if init.data_type == TensorProto.FLOAT and init.data_location != TensorProto.EXTERNAL and math.prod(init.dims) >= _HANDED_ELEMENTS:
                self._weights[init.name] = numpy_helper.to_array(init)
                _make_external(init)
        self._rounded: dict[str, np.ndarray] = {}

    def graph(self, fp32_nodes: Iterable[str]) -> onnx.ModelProto:
        """The plan's emulation (as `emulate`'s), its weights external: see `session`."""
        emulated = onnx.ModelProto()
        emulated.CopyFrom(self.model)
        graph = emulated.graph
        weights = {init.name: init for init in graph.initializer}

        def rounded_weight(name: str) -> str:
            if name not in self._weights:  # small, in the graph
                _round_in_place(weights[name])
                return name
            if name not in self._rounded:
                self._rounded[name] = round_to_bf16(self._weights[name])
            weights[name].name = f"{name}__bf16"
            return weights[name].name

        _round_bf16_nodes(graph, set(fp32_nodes), self.floats, set(weights), rounded_weight)
        return emulated

    def session(self, fp32_nodes: Iterable[str]):
        """The plan's emulation (`graph`'s) and an ONNX Runtime session on it, handed the weights."""
        from deploytool.build.precision.calibration import measuring_session

        emulated = self.graph(fp32_nodes)
        arrays = {**self._weights, **{f"{name}__bf16": array for name, array in self._rounded.items()}}
        external = {init.name: arrays[init.name] for init in emulated.graph.initializer if init.data_location == TensorProto.EXTERNAL}
        return emulated, measuring_session(emulated.SerializeToString(), external=external)


def _round_in_place(init: TensorProto) -> None:
    init.CopyFrom(numpy_helper.from_array(round_to_bf16(numpy_helper.to_array(init)), init.name))


def _make_external(init: TensorProto) -> None:
    """Drop an initializer's data, leaving its name, type and shape: ONNX Runtime is handed the
    values (open_session's `external`)."""
    name, dims, data_type = init.name, list(init.dims), init.data_type
    init.Clear()
    init.name, init.data_type, init.data_location = name, data_type, TensorProto.EXTERNAL
    init.dims.extend(dims)
    entry = init.external_data.add()
    entry.key, entry.value = "location", "handed-to-the-session"


def _rounding(source: str, target: str) -> list[onnx.NodeProto]:
    """`target` = `source` rounded to BF16 (a Cast there and back)."""
    return [
        helper.make_node("Cast", [source], [f"{target}__as_bf16"], name=f"{target}__round", to=TensorProto.BFLOAT16),
        helper.make_node("Cast", [f"{target}__as_bf16"], [target], name=f"{target}__widen", to=TensorProto.FLOAT),
    ]


def convert(model: onnx.ModelProto, fp32_nodes: Iterable[str]) -> onnx.ModelProto:
    """The BF16 deploy graph of `model` keeping `fp32_nodes` in FP32 (see the module's doc)."""
    from onnx import version_converter

    # the converter serializes the model it is given: converted without the weights' data (IPT: 4.5 -> 0.2 s)
    light, held = without_weights(_unshared(model))
    converted = with_weights(version_converter.convert_version(light, BF16_OPSET), held)
    converted.ir_version = max(converted.ir_version, BF16_IR_VERSION)
    _name_new_nodes(converted)
    floats = float_tensors(converted)
    kept = set(fp32_nodes)
    graph = converted.graph
    output_casts = _cast_bf16_graph_outputs(graph, kept, floats)
    reduced = {out for node in graph.node if node.name not in kept for out in node.output if out in floats}
    weights = {init.name: init for init in graph.initializer}
    nodes, casts = [], {}
    for node in graph.node:
        if node.name in kept:
            _read_in(node, TensorProto.FLOAT, lambda name: name in reduced, nodes, casts)
        else:
            _to_bf16_node(node, floats, weights)
            _read_in(node, TensorProto.BFLOAT16, lambda name: name in floats and name not in reduced and name not in weights, nodes, casts)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend([*nodes, *output_casts])
    del graph.value_info[:]
    return with_inferred_shapes(converted, strict=True)


def fp32_islands(deployed: onnx.ModelProto, original: onnx.ModelProto) -> set[str]:
    """The nodes of `original` (model.onnx) that the BF16 graph `deployed` computes in float32:
    its plan, read back from the shipped graph."""
    types = tensor_types(deployed)
    names = {node.name for node in original.graph.node}
    return {
        node.name
        for node in deployed.graph.node
        if node.name in names and any(types[out].elem_type == TensorProto.FLOAT for out in node.output if out in types)
    }


def _to_bf16_node(node: onnx.NodeProto, floats: set[str], weights: dict[str, TensorProto]) -> None:
    """A node outside the islands computes in BF16: its float weights stored as BF16, a Cast to
    float made a Cast to BF16, a float Constant made BF16."""
    for name in node.input:
        if name in weights and name in floats:
            array = numpy_helper.to_array(weights[name]).astype(ml_dtypes.bfloat16)
            weights[name].CopyFrom(numpy_helper.from_array(array, name))
    for attribute in node.attribute:
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
            attribute.i = TensorProto.BFLOAT16
        elif node.op_type == "Constant" and attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
            attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(ml_dtypes.bfloat16), attribute.t.name))


def _read_in(node: onnx.NodeProto, to: int, needs_cast, nodes: list[onnx.NodeProto], casts: dict[tuple[str, int], str]) -> None:
    """Point the inputs for which `needs_cast` holds at their Cast to `to` (one per tensor and type)."""
    suffix = "bf16" if to == TensorProto.BFLOAT16 else "fp32"
    for position, name in enumerate(node.input):
        if not name or not needs_cast(name):
            continue
        if (name, to) not in casts:
            casts[name, to] = f"{name}__{suffix}"
            nodes.append(helper.make_node("Cast", [name], [casts[name, to]], name=f"{name}__cast_{suffix}", to=to))
        node.input[position] = casts[name, to]


def _cast_bf16_graph_outputs(graph: onnx.GraphProto, kept: set[str], floats: set[str]) -> list[onnx.NodeProto]:
    """Where a BF16 node writes a graph output, it writes `<name>__bf16_out` instead; returns the
    Casts to float that write the outputs under their names."""
    producer = {out: node for node in graph.node for out in node.output}
    casts = []
    for output in graph.output:
        node = producer.get(output.name)
        if node is None or node.name in kept or output.name not in floats:
            continue
        inner = f"{output.name}__bf16_out"
        node.output[list(node.output).index(output.name)] = inner
        for consumer in graph.node:
            consumer.input[:] = [inner if name == output.name else name for name in consumer.input]
        casts.append(helper.make_node("Cast", [inner], [output.name], name=f"{output.name}__cast_fp32", to=TensorProto.FLOAT))
        floats.add(inner)
    return casts


def _name_new_nodes(model: onnx.ModelProto) -> None:
    """Name the nodes the version converter added (the Reduce* axes' Constants) apart from any
    name the export gives (tracer paths start with '/', ensure_named's are `<op>_<index>`)."""
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"opset{BF16_OPSET}.{node.op_type}.{index}"


__all__ = ["BF16_MAX", "BF16_OPSET", "Emulation", "convert", "declared_float_tensors", "emulate", "fp32_islands", "lacks_bf16", "round_to_bf16"]
