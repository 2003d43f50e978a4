"""The plan and the conversion: the reduced precision everywhere except FP32 islands.

plan: keep in FP32 the fused normalisations and softmax, every node that reads or writes a
tensor whose measured range does not fit FP16 with a safety margin (growing residual streams),
and every reduction whose running sum, derived from its measured output, does not (sums of
squares over a whole tile); convert with onnxconverter-common (FP32 graph IO kept).

By construction no FP16 edge of the result carries a tensor whose measured range exceeds
FP16_MAX / margin. ONNX Runtime's CPU provider runs FP16 nodes without FP16 kernels in FP32 and
may drop the FP16 rounding between two such nodes, so it under-reports overflow: the tests also
run the overflow stress case in onnx's reference evaluator, which computes in true FP16.

BF16 keeps the normalisations and the ops ONNX has no BF16 kernel for as islands by op; its
reductions are judged by their element count instead of their running sum (see
BF16_SUMMED_LIMIT), its softmax runs BF16 (see BF16_FP32_OPS), and one margin is tried (no tensor
comes near BF16's range).
"""

from __future__ import annotations

import contextlib
import heapq
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploytool.build import bf16
from deploytool.build.inferred_types import TensorType, tensor_types, with_inferred_shapes
from deploytool.build.precision.growth import reduction_accumulator, summed_elements, tensor_sizes
from deploytool.runtime.manifest import Bf16Summary, Fp16Summary

FP16_MAX = 65504.0
# Fused normalisations and softmax: their inner sums are not graph tensors, so there is nothing
# to measure, and TensorRT's FP16 versions are known to lose precision (HAT, SwinIR). FP32 inside.
ALWAYS_FP32_OPS = frozenset({"LayerNormalization", "Softmax", "LogSoftmax", "InstanceNormalization", "GroupNormalization", "CumSum", "Resize", "Range"})
# BF16 runs softmax in BF16 at any length: a BF16 softmax kernel reads and writes BF16 and keeps
# its max and sum in FP32, which the emulation computes (OpenVINO's CPU plugin, measured over 4096
# elements in test_openvino_bf16; TensorRT's fused attention kernels keep FP32 statistics too, not
# measurable here). An FP32 softmax between BF16 matrix products costs a Cast pair and breaks
# OpenVINO's fused attention (MatMul-Softmax-MatMul) into three kernels (HAT's 576-long windows).
BF16_FP32_OPS = ALWAYS_FP32_OPS - {"Softmax"}
# Reductions are judged by their accumulator, derived from the measured output: a sum of squares
# over a whole tile (Restormer's q/k normalisation) overflows FP16 though its root does not.
REDUCTIONS = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMean", "GlobalAveragePool"})
# Ranges are measured on a few inputs; real images can go further. Larger margins keep more in FP32.
MARGINS = (16.0, 256.0, 4096.0)

FLOP_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")

# A reduction whose kernel accumulates in BF16 (8 significant bits) drops every addend below
# 2^-9 of its running sum: past 2^8 equal addends the sum's error bound reaches the sum itself.
# The emulation accumulates in FP32, as OpenVINO's CPU plugin does (measured), so it cannot show
# this; TensorRT does not document a standalone reduction's accumulator, so reductions over more
# elements stay FP32 (what that costs OpenVINO: README, BF16). FP16 judges its accumulators
# by their measured range instead.
BF16_SUMMED_LIMIT = 2**8


@dataclass(frozen=True)
class ReducedPrecision:
    """What the planner needs of the precision it plans: one planner, two precisions."""

    name: str  # "fp16" | "bf16": the file, tolerance and manifest names
    max_value: float  # the largest finite value: range islands keep tensors above max_value / margin
    margins: tuple[float, ...]
    summed_limit: int | None  # reductions over more elements stay FP32 (None: judged by range alone)
    lacks_kernel: Callable[[str], bool]  # op types ONNX defines no kernel of this precision for
    # what a search measures its plans on, made once from `prepare_conversion`'s model: its
    # `model`, and `session(fp32_nodes)`: a plan's graph and an ONNX Runtime session on it
    trials: Callable[[onnx.ModelProto], PlanTrials]
    deploy_graph: Callable[[onnx.ModelProto, set[str]], onnx.ModelProto]  # the shipped graph
    validated_is_deployed: bool  # the validation graph is the shipped one (FP16) or its emulation (BF16)
    summary: type
    fp32_ops: frozenset[str] = ALWAYS_FP32_OPS  # ops kept in FP32 whatever their values
    min_blocks: int | None = None  # the sensitivity search's blocks (None: MIN_BLOCKS; see node_blocks)
    finer_units: bool = False  # the search returns the kept blocks' weighted products that hold (search.release_finer_units)

    @property
    def label(self) -> str:
        return self.name.upper()


@dataclass
class Fp16Plan:
    fp32_nodes: set[str]
    reasons: dict[str, str]
    margin: float


def plan_islands(
    model: onnx.ModelProto,
    ranges: dict[str, float],
    margin: float,
    sizes: dict[str, int] | None = None,
    reduced: ReducedPrecision | None = None,
) -> Fp16Plan:
    """Nodes that must stay FP32: by op type, by measured range against the reduced precision's
    largest value / margin, and reductions by their accumulation (`reduced`: FP16 by default).

    `sizes` (element counts, default: this graph's) judge the reductions' running sums.
    """
    reduced = reduced or FP16
    limit = reduced.max_value / margin
    if sizes is None:
        sizes = tensor_sizes(model) if any(n.op_type in REDUCTIONS for n in model.graph.node) else {}
    fp32_nodes: set[str] = set()
    reasons: dict[str, str] = {}
    for node in model.graph.node:
        reason = island_reason(node, ranges, limit, sizes, reduced)
        if reason is not None:
            fp32_nodes.add(node.name)
            reasons[node.name] = reason
    return Fp16Plan(fp32_nodes, reasons, margin)


def island_reason(node: onnx.NodeProto, ranges: dict[str, float], limit: float, sizes: dict[str, int], reduced: ReducedPrecision) -> str | None:
    """Why `node` stays FP32 ("op:<type>", "range", "accumulator", "accumulation"), or None."""
    if node.op_type in reduced.fp32_ops or reduced.lacks_kernel(node.op_type):
        return f"op:{node.op_type}"
    if any(ranges.get(t, 0.0) > limit for t in (*node.input, *node.output)):
        return "range"
    if node.op_type not in REDUCTIONS:
        return None
    if reduction_accumulator(node, ranges, sizes) > limit:
        return "accumulator"
    if reduced.summed_limit is not None and summed_elements(node, sizes) > reduced.summed_limit:
        return "accumulation"
    return None


def prepare_conversion(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as `convert` starts from (initializers unshared, shapes inferred): made once
    for a search that converts one graph with many plans (IPT: 7 of a conversion's 18 s)."""
    return with_inferred_shapes(unshare_initializers(model))


def convert(model: onnx.ModelProto, fp32_nodes: Iterable[str] | None, *, prepared: bool = False) -> onnx.ModelProto:
    """FP16 graph with FP32 input/output; `fp32_nodes=None` converts everything (the naive way).
    `prepared`: `model` comes from `prepare_conversion`."""
    from onnxconverter_common import float16

    if prepared:
        source = onnx.ModelProto()
        source.CopyFrom(model)  # the converter changes its argument
    else:
        # the converter's own shape inference would take the weights through it
        source = prepare_conversion(model)
    blocked = set(fp32_nodes or ())
    op_block_list = list(float16.DEFAULT_OP_BLOCK_LIST) if fp32_nodes is not None else []
    with warnings.catch_warnings(), _linear_topological_sort(float16):
        # weights below FP16's smallest normal are flushed to +-1e-7: expected, not news
        warnings.filterwarnings("ignore", message=".*will be truncated to.*")
        converted = float16.convert_float_to_float16(
            source,
            keep_io_types=True,
            disable_shape_infer=True,
            op_block_list=op_block_list,
            node_block_list=sorted(blocked),
        )
    remove_cast_round_trips(converted, blocked)
    fold_constant_casts(converted)
    return converted


def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto] | None:
    """`graph`'s nodes in the order onnxconverter-common's sort puts them (at each step the first
    node in graph order whose inputs are all written), found in linear time: a heap of the ready
    nodes by position. None where that sort does something else: a name written twice, a node
    writing nothing, a cycle."""
    nodes = list(graph.node)
    writer: dict[str, int] = {}
    for position, node in enumerate(nodes):
        if not node.output or any(name in writer for name in node.output):
            return None
        writer.update(dict.fromkeys(node.output, position))
    unwritten = [0] * len(nodes)
    readers: list[list[int]] = [[] for _ in nodes]
    for position, node in enumerate(nodes):
        sources = {writer[name] for name in node.input if name in writer}
        unwritten[position] = len(sources)
        for source in sources:
            readers[source].append(position)
    ready = [position for position, count in enumerate(unwritten) if count == 0]
    order: list[int] = []
    while ready:
        position = heapq.heappop(ready)
        order.append(position)
        for reader in readers[position]:
            unwritten[reader] -= 1
            if unwritten[reader] == 0:
                heapq.heappush(ready, reader)
    return [nodes[position] for position in order] if len(order) == len(nodes) else None


@contextlib.contextmanager
def _linear_topological_sort(float16):
    """onnxconverter-common ends a conversion by sorting the graph, rescanning the remaining nodes
    for every node it places: quadratic, 2.1 s of a 3.5 s conversion of DAT-x4's 3,422 nodes.
    While this is entered its sort is `topological_order`, the same order (the same bytes); the
    library's own sort runs where that gives None."""
    library_sort = float16.sort_topology

    def sort(graph: onnx.GraphProto) -> None:
        order = topological_order(graph)
        if order is None:
            library_sort(graph)
            return
        del graph.node[:]
        graph.node.extend(order)
        for node in graph.node:
            for attribute in node.attribute:
                for subgraph in [*([attribute.g] if attribute.g.node else []), *attribute.graphs]:
                    sort(subgraph)

    float16.sort_topology = sort
    try:
        yield
    finally:
        float16.sort_topology = library_sort


def _cast_target(node: onnx.NodeProto | None) -> int | None:
    if node is None or node.op_type != "Cast":
        return None
    return next(a.i for a in node.attribute if a.name == "to")


def remove_cast_round_trips(model: onnx.ModelProto, fp32_nodes: set[str]) -> int:
    """Let FP32 islands talk to each other in FP32; returns how many round trips were removed.

    The converter casts every output of a blocked node to FP16 and back to FP32 for a blocked
    consumer: a tensor too large for FP16 would overflow on that edge.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    float_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}

    def is_float32(name: str) -> bool:
        node = producer.get(name)
        if node is None:
            return name in float_inputs
        return node.name in fp32_nodes or _cast_target(node) == TensorProto.FLOAT

    bypass: dict[str, str] = {}
    graph_outputs = {o.name for o in graph.output}
    for node in graph.node:
        inner = producer.get(node.input[0]) if _cast_target(node) == TensorProto.FLOAT else None
        if _cast_target(inner) == TensorProto.FLOAT16 and is_float32(inner.input[0]) and node.output[0] not in graph_outputs:
            bypass[node.output[0]] = inner.input[0]
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in bypass:
                node.input[position] = bypass[name]
    _drop_dead_casts(graph)
    return len(bypass)


def _drop_dead_casts(graph: onnx.GraphProto) -> None:
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        kept = [n for n in graph.node if n.op_type != "Cast" or n.output[0] in used]
        if len(kept) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(kept)


def fold_constant_casts(model: onnx.ModelProto) -> int:
    """Replace Cast(constant) by a converted initializer; returns how many were folded.

    The converter casts constant operands of FP32 islands back (e.g. Resize scales); left in,
    they would be computed operands where TensorRT wants constants.
    """
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    kept, folded = [], 0
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in constants:
            target = next(a.i for a in node.attribute if a.name == "to")
            array = constants[node.input[0]].astype(helper.tensor_dtype_to_np_dtype(target))
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            folded += 1
        else:
            kept.append(node)
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "Constant" or n.output[0] in used]
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    del graph.node[:]
    graph.node.extend(kept)
    return folded


class PlanTrials(Protocol):
    """The graph a plan search measures many plans on (`ReducedPrecision.trials`)."""

    model: onnx.ModelProto  # `prepare_conversion`'s: node names, types and FLOPs (its weights may be held apart)

    def session(self, fp32_nodes: Iterable[str]) -> tuple[onnx.ModelProto, Any]:
        """The plan's validation graph and an ONNX Runtime session on it."""
        ...


class Conversions:
    """FP16's trials: a plan's validation graph is its deploy graph, converted from `model`."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model

    def session(self, fp32_nodes: Iterable[str]) -> tuple[onnx.ModelProto, Any]:
        from deploytool.build.precision.calibration import measuring_session

        graph = convert(self.model, fp32_nodes, prepared=True)
        return graph, measuring_session(graph.SerializeToString())


def unshare_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every initializer feeds one node only.

    onnxconverter-common gives a shared initializer one type, which breaks a graph where an FP32
    island and an FP16 node read the same constant; duplicates are merged again after conversion.
    """
    unshared = onnx.ModelProto()
    unshared.CopyFrom(model)
    graph = unshared.graph
    by_name = {init.name: init for init in graph.initializer}
    seen: set[str] = set()
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name not in by_name:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(by_name[name])
                copy.name = f"{name}__{node.name}_{position}"
                graph.initializer.append(copy)
                node.input[position] = copy.name
            seen.add(name)
    return unshared


def flop_counts(model: onnx.ModelProto, types: dict[str, TensorType] | None = None) -> dict[str, int]:
    """Multiply-accumulates of Conv/MatMul/Gemm nodes, from the (static) inferred shapes
    (`types`: the model's `tensor_types`, where the caller has them already)."""
    shapes = {name: list(tensor.shape or ()) for name, tensor in (types or tensor_types(model)).items()}
    flops: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in FLOP_OPS:
            continue
        out = shapes.get(node.output[0])
        weight = shapes.get(node.input[1])
        if not out or not weight:
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kernel = int(np.prod(weight[1:])) if node.op_type == "Conv" else int(np.prod(weight[2:])) * weight[0] // group
            flops[node.name] = int(np.prod(out)) * kernel
        else:
            a_shape = shapes.get(node.input[0])
            inner = a_shape[-1] if a_shape else weight[0]
            flops[node.name] = int(np.prod(out)) * inner
    return flops


FP16 = ReducedPrecision(
    name="fp16",
    max_value=FP16_MAX,
    margins=MARGINS,
    summed_limit=None,
    lacks_kernel=lambda op_type: False,  # the converter keeps its own block list in FP32
    trials=Conversions,
    deploy_graph=lambda model, fp32_nodes: convert(model, fp32_nodes),
    validated_is_deployed=True,
    summary=Fp16Summary,
)
BF16 = ReducedPrecision(
    name="bf16",
    max_value=bf16.BF16_MAX,
    margins=MARGINS[:1],  # ranges never near BF16's: wider margins give the same plan
    summed_limit=BF16_SUMMED_LIMIT,
    lacks_kernel=bf16.lacks_bf16,
    trials=bf16.Emulation,
    deploy_graph=bf16.convert,
    validated_is_deployed=False,
    summary=Bf16Summary,
    fp32_ops=BF16_FP32_OPS,
    # BF16 loses precision everywhere, not in a few overflowing places: finer blocks keep less
    # in FP32 (IPT at full size: 8 blocks kept 94% of the FLOPs in FP32)
    min_blocks=24,
    finer_units=True,
)
PRECISIONS = {reduced.name: reduced for reduced in (FP16, BF16)}
