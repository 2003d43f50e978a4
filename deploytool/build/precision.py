"""The FP16 and BF16 deploy graphs: the reduced precision everywhere except FP32 islands
chosen by measurement. One planner serves both precisions (`ReducedPrecision`: FP16, BF16).

TensorRT 10 and 11 build strongly typed networks, which run each tensor in the type the ONNX
gives it, so `model_fp16.onnx` is the engine's precision contract. It is built in three steps:

1. calibrate: run the FP32 graph on calibration inputs with an |x|-max reduction attached to
   every float tensor (one scalar per tensor, so memory stays small at any tile size);
2. plan: keep in FP32 the fused normalisations and softmax, every node that reads or writes a
   tensor whose measured range does not fit FP16 with a safety margin (growing residual
   streams), and every reduction whose running sum, derived from its measured output, does not
   (sums of squares over a whole tile);
3. convert with onnxconverter-common (FP32 graph IO kept), then validate against the FP32 graph
   on the calibration inputs and on `verify`'s standard inputs (see VERIFY_SAFETY); if the error
   exceeds either limit, the margin is widened and the plan rebuilt, and if no margin helps,
   the sensitivity search keeps the blocks that lose the most precision in FP32.

By construction no FP16 edge of the result carries a tensor whose measured range exceeds
FP16_MAX / margin. ONNX Runtime's CPU provider runs FP16 nodes without FP16 kernels in FP32 and
may drop the FP16 rounding between two such nodes, so it under-reports overflow: the tests also
run the overflow stress case in onnx's reference evaluator, which computes in true FP16.

BF16 (`model_bf16.onnx`, deploytool.build.bf16) has FP32's range and 8 significant bits, so its
loss is precision, not overflow. What carries over from FP16: calibration on the smaller
calibration graph, the islands by op (normalisations, softmax, and ops ONNX has no BF16 kernel
for), the validation on the calibration inputs and verify's, and the sensitivity search, which
is where BF16 plans buy their precision. What does not: the range islands and margins (no tensor
comes near BF16's range, so one margin is tried) and with them the tile growth, which only
grows ranges. Reductions are judged by their element count instead of their running sum (see
BF16_SUMMED_LIMIT). Plans are measured on the graph's emulation in FP32 (bf16.emulate): ONNX
Runtime's CPU provider has no BF16 kernels.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploytool.build import bf16
from deploytool.build.graphs import TensorType, tensor_types
from deploytool.build.metrics import psnr
from deploytool.errors import ExportError
from deploytool.runtime.backends.onnxruntime import open_session
from deploytool.runtime.manifest import Bf16Summary, Fp16Measurement, Fp16Summary

FP16_MAX = 65504.0
# Fused normalisations and softmax: their inner sums are not graph tensors, so there is nothing
# to measure, and TensorRT's FP16 versions are known to lose precision (HAT, SwinIR). FP32 inside.
ALWAYS_FP32_OPS = frozenset({"LayerNormalization", "Softmax", "LogSoftmax", "InstanceNormalization", "GroupNormalization", "CumSum", "Resize", "Range"})
# Reductions are judged by their accumulator, derived from the measured output: a sum of squares
# over a whole tile (Restormer's q/k normalisation) overflows FP16 though its root does not.
REDUCTIONS = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMean", "GlobalAveragePool"})
# Ranges are measured on a few inputs; real images can go further. Larger margins keep more in FP32.
MARGINS = (16.0, 256.0, 4096.0)
# `verify` judges the FP16 graph by max |diff|, a tail statistic: on tiny IPTs one set of inputs
# gives up to 2.6x another's of the same generator (the official IPT: 0.032 on its calibration
# inputs, 0.103 on verify's). The plan is validated on verify's own inputs (exactly where the
# calibration tile is the export's) and must meet fp16_max_abs / VERIFY_SAFETY there, which
# covers verify's inputs drawn at another tile and other runtimes' rounding (TensorRT).
VERIFY_SAFETY = 2.0
FLOP_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Ops whose output element sums over input elements whose count depends on the tile (see tile_growth)
SUMS_OVER_INPUT = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceL2", "MatMul", "Gemm"})
# Ops whose output is bounded whatever their input: growth with the tile stops there
BOUNDED_OPS = frozenset(
    {"Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Sigmoid", "Tanh", "Erf", "Sin", "Cos", "Sign"}
)
# The export's own runs measure the graph itself, on CPU wherever the export happens
CPU = ["CPUExecutionProvider"]
# A reduction whose kernel accumulates in BF16 (8 significant bits) drops every addend below
# 2^-9 of its running sum: past 2^8 equal addends the sum's error bound reaches the sum itself.
# The emulation accumulates in FP32 as BF16 CPUs and GPUs do, so it cannot show this; reductions
# over more elements stay FP32. (FP16 judges its accumulators by their measured range instead.)
BF16_SUMMED_LIMIT = 2**8


@dataclass(frozen=True)
class ReducedPrecision:
    """What the planner needs of the precision it plans: one planner, two precisions."""

    name: str  # "fp16" | "bf16": the file, tolerance and manifest names
    max_value: float  # the largest finite value: range islands keep tensors above max_value / margin
    margins: tuple[float, ...]
    summed_limit: int | None  # reductions over more elements stay FP32 (None: judged by range alone)
    lacks_kernel: Callable[[str], bool]  # op types ONNX defines no kernel of this precision for
    # the graph ONNX Runtime runs to measure a plan, from `prepare_conversion`'s model
    validation_graph: Callable[[onnx.ModelProto, set[str]], onnx.ModelProto]
    deploy_graph: Callable[[onnx.ModelProto, set[str]], onnx.ModelProto]  # the shipped graph
    validated_is_deployed: bool  # the validation graph is the shipped one (FP16) or its emulation (BF16)
    summary: type

    @property
    def label(self) -> str:
        return self.name.upper()


@dataclass
class Fp16Plan:
    fp32_nodes: set[str]
    reasons: dict[str, str]
    margin: float


def float_tensor_names(model: onnx.ModelProto) -> list[str]:
    """Every float32 activation of the graph (node outputs whose inferred type is float)."""
    types = tensor_types(model)
    return [out for node in model.graph.node for out in node.output if out in types and types[out].elem_type == TensorProto.FLOAT]


@dataclass
class Calibration:
    ranges: dict[str, float]  # max |value| of every float tensor over the inputs
    outputs: list[np.ndarray]  # the graph's output for each input: the FP32 reference
    other_outputs: list[np.ndarray] = dataclasses.field(default_factory=list)  # for `others`


def calibrate(model: onnx.ModelProto, inputs: Sequence[np.ndarray], others: Sequence[np.ndarray] = ()) -> Calibration:
    """max |value| of every float activation over `inputs`, and the graph's outputs, from one
    run per input; the outputs alone for `others` (from the same session: opening another
    costs as much as a run).

    Each activation gets a ReduceMax and a ReduceMin placed right after its producer; with
    ORT's priority-based order each is reduced and freed as soon as it is made, so memory stays
    at one inference's (appending the probes at the end kept every activation alive: 18 GB for
    SwinIR-M at 128 px instead of 0.8 GB).
    """
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    wanted = set(float_tensor_names(model))
    names, nodes, outputs = [], [], []
    for node in model.graph.node:
        nodes.append(node)
        for name in node.output:
            if name not in wanted:
                continue
            index = len(names)
            names.append(name)
            for op in ("ReduceMax", "ReduceMin"):
                nodes.append(helper.make_node(op, [name], [f"__{op}_{index}"], keepdims=0))
                outputs.append(helper.make_tensor_value_info(f"__{op}_{index}", TensorProto.FLOAT, []))
    del probed.graph.node[:]
    probed.graph.node.extend(nodes)
    probed.graph.output.extend(outputs)
    session = open_session(probed.SerializeToString(), providers=CPU, memory_arena=False, priority_order=True)
    del probed
    input_name, output_name = model.graph.input[0].name, model.graph.output[0].name
    ranges = dict.fromkeys(names, 0.0)
    references = []
    for array in inputs:
        reference, *values = session.run([output_name, *(o.name for o in outputs)], {input_name: array})
        references.append(reference)
        for position, name in enumerate(names):
            high, low = values[2 * position], values[2 * position + 1]
            ranges[name] = max(ranges[name], abs(float(high)), abs(float(low)))
    ranges[input_name] = max(float(np.abs(array).max()) for array in inputs)
    return Calibration(ranges, references, [session.run([output_name], {input_name: array})[0] for array in others])


def measure_ranges(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> dict[str, float]:
    """max |value| of every float activation over `inputs` (see `calibrate`)."""
    return calibrate(model, inputs).ranges


def plan_islands(
    model: onnx.ModelProto, ranges: dict[str, float], margin: float, sizes: dict[str, int] | None = None, reduced: ReducedPrecision | None = None
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
    if node.op_type in ALWAYS_FP32_OPS or reduced.lacks_kernel(node.op_type):
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


def prepare_conversion(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as `convert` starts from (initializers unshared, shapes inferred): made once
    for a search that converts one graph with many plans (IPT: 7 of a conversion's 18 s)."""
    return onnx.shape_inference.infer_shapes(unshare_initializers(model))


def convert(model: onnx.ModelProto, fp32_nodes: Iterable[str] | None, *, prepared: bool = False) -> onnx.ModelProto:
    """FP16 graph with FP32 input/output; `fp32_nodes=None` converts everything (the naive way).
    `prepared`: `model` comes from `prepare_conversion`."""
    from onnxconverter_common import float16

    if prepared:
        source = onnx.ModelProto()
        source.CopyFrom(model)  # the converter changes its argument
    else:
        source = unshare_initializers(model)
    blocked = set(fp32_nodes or ())
    op_block_list = list(float16.DEFAULT_OP_BLOCK_LIST) if fp32_nodes is not None else []
    with warnings.catch_warnings():
        # weights below FP16's smallest normal are flushed to +-1e-7: expected, not news
        warnings.filterwarnings("ignore", message=".*will be truncated to.*")
        converted = float16.convert_float_to_float16(
            source,
            keep_io_types=True,
            disable_shape_infer=prepared,
            op_block_list=op_block_list,
            node_block_list=sorted(blocked),
        )
    remove_cast_round_trips(converted, blocked)
    fold_constant_casts(converted)
    return converted


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


def _compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max |diff|, PSNR of the worst batch) over calibration batches."""
    max_abs, worst_psnr = 0.0, math.inf
    for a, b in zip(reference, candidate):
        if not np.isfinite(b).all():
            return math.inf, -math.inf
        max_abs = max(max_abs, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
        worst_psnr = min(worst_psnr, psnr(a, b))
    return max_abs, worst_psnr


def run_graph(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    session = open_session(model.SerializeToString(), providers=CPU, memory_arena=False)
    name = session.get_inputs()[0].name
    return [session.run(None, {name: array})[0] for array in inputs]


@dataclass
class Validation:
    max_abs: float
    psnr: float
    inputs: int  # how many inputs ran: a plan stops at the first input it fails
    graph: onnx.ModelProto | None  # the graph validated, kept where it met every input's limit
    errors: tuple[float, ...] = ()  # max |diff| of each input that ran, in order

    @property
    def holds(self) -> bool:
        return self.graph is not None


def validate(
    prepared: onnx.ModelProto,
    fp32_nodes: set[str],
    inputs: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    limits: float | Sequence[float],
    reduced: ReducedPrecision | None = None,
) -> Validation:
    """The plan's graph (FP16 by default; made from `prepare_conversion`'s model) against the
    FP32 outputs, input by input, each against its max |diff| limit (one for all, or one each):
    the first input that misses its limit ends the run."""
    limits = [limits] * len(inputs) if isinstance(limits, (int, float)) else list(limits)
    graph = (reduced or FP16).validation_graph(prepared, fp32_nodes)
    session = open_session(graph.SerializeToString(), providers=CPU, memory_arena=False)
    name = session.get_inputs()[0].name
    errors, worst_psnr = [], math.inf
    for array, expected, limit in zip(inputs, reference, limits):
        max_abs, value_psnr = _compare([expected], [session.run(None, {name: array})[0]])
        errors.append(max_abs)
        worst_psnr = min(worst_psnr, value_psnr)
        if not max_abs <= limit:
            break
    holds = len(errors) == len(inputs) and errors[-1] <= limits[-1]
    return Validation(max(errors), worst_psnr, len(errors), graph if holds else None, tuple(errors))


# The sensitivity search ranks blocks (module paths cut at one depth) and looks for at least this
# many: few enough to search quickly, enough that keeping one in FP32 costs little of the FLOPs.
MIN_BLOCKS = 8
MAX_BLOCK_DEPTH = 6


def node_blocks(model: onnx.ModelProto, reduced_nodes: set[str]) -> dict[str, list[str]]:
    """Reduced-precision nodes grouped by the module path the tracer put in their names ("/body/layers.3/...")
    cut at the shallowest depth that gives MIN_BLOCKS blocks; a node without a path (a fused Gemm)
    joins its first input's producer's block. Blocks in graph order."""
    producer = {out: node for node in model.graph.node for out in node.output}
    paths: dict[str, tuple[str, ...]] = {}
    for node in model.graph.node:
        if node.name.startswith("/"):
            paths[node.name] = tuple(node.name.split("/")[1:-1])
        else:
            source = next((producer[name] for name in node.input if name in producer), None)
            paths[node.name] = paths.get(source.name, ()) if source is not None else ()
    blocks: dict[str, list[str]] = {}
    for depth in range(1, MAX_BLOCK_DEPTH + 1):
        blocks = {}
        for node in model.graph.node:
            if node.name in reduced_nodes:
                blocks.setdefault("/" + "/".join(paths[node.name][:depth]), []).append(node.name)
        if len(blocks) >= MIN_BLOCKS:
            break
    return blocks


@dataclass(frozen=True)
class SearchInputs:
    """The inputs a plan is validated on, their FP32 outputs and max |diff| limits (`wanted`
    says what the limits are, for messages)."""

    arrays: Sequence[np.ndarray]
    reference: Sequence[np.ndarray]
    limits: Sequence[float]
    wanted: str

    def first(self, used: int) -> SearchInputs:
        return SearchInputs(self.arrays[:used], self.reference[:used], self.limits[:used], self.wanted)

    def starting_with(self, index: int) -> SearchInputs:
        order = [index, *(i for i in range(len(self.arrays)) if i != index)]
        return SearchInputs(*([items[i] for i in order] for items in (self.arrays, self.reference, self.limits)), self.wanted)


def buy_precision(
    prepared: onnx.ModelProto, plan: Fp16Plan, checked: SearchInputs, reduced: ReducedPrecision, progress: Callable[[str], None]
) -> tuple[Fp16Plan, tuple[str, ...], Validation]:
    """Keep in FP32, besides the range plan's islands, the blocks whose reduced precision costs
    the most, as few as the inputs' limits allow.

    Each block's cost is the output error with that block alone in the reduced precision (all
    else FP32), on the first input: it includes what later blocks make of its rounding (a
    cancellation downstream). Then a bisection for the shortest head of that ranking that holds
    on the first input, confirmed on all.
    """
    label = reduced.label
    reduced_nodes = {n.name for n in prepared.graph.node} - plan.fp32_nodes
    blocks = node_blocks(prepared, reduced_nodes)
    if len(blocks) < 2:
        raise ExportError(f"no {label} plan meets {checked.wanted}, and the graph has no blocks to search")
    started, one = time.perf_counter(), checked.first(1)
    cost = {}
    for block, names in blocks.items():
        alone = validate(prepared, plan.fp32_nodes | (reduced_nodes - set(names)), one.arrays, one.reference, one.limits, reduced)
        cost[block] = alone.max_abs
    ranked = sorted(blocks, key=lambda block: -cost[block])
    progress(
        f"sensitivity of {len(blocks)} blocks, each alone in {label} ({time.perf_counter() - started:.1f} s); worst: "
        + ", ".join(f"{b} ({cost[b]:.2g})" for b in ranked[:3])
    )

    def plan_keeping(count: int) -> Fp16Plan:
        kept = {name: "sensitivity" for block in ranked[:count] for name in blocks[block]}
        return Fp16Plan(plan.fp32_nodes | set(kept), {**plan.reasons, **kept}, plan.margin)

    def check(count: int, used: int) -> Validation:
        started, inputs = time.perf_counter(), checked.first(used)
        result = validate(prepared, plan_keeping(count).fp32_nodes, inputs.arrays, inputs.reference, inputs.limits, reduced)
        progress(f"  {count} of {len(ranked)} blocks in FP32: max |err| {result.max_abs:.3g} ({time.perf_counter() - started:.1f} s)")
        return result

    # at least one block stays in the reduced precision: a plan with every block in FP32 is not a reduced graph
    low, high = 1, len(ranked) - 1
    while low < high:
        middle = (low + high) // 2
        if check(middle, 1).holds:
            high = middle
        else:
            low = middle + 1
    # the bisection looked at one input; the others may ask for more blocks
    for count in range(low, len(ranked)):
        result = check(count, len(checked.arrays))
        if result.holds:
            return plan_keeping(count), tuple(ranked[:count]), result
    raise ExportError(f"no {label} plan meets {checked.wanted}, even with {len(ranked) - 1} of {len(ranked)} blocks kept in FP32 by the sensitivity search")


@dataclass(frozen=True)
class VerifyInputs:
    """`verify`'s standard inputs as the calibration graph takes them, and the max |diff| the
    plan must meet on them (see VERIFY_SAFETY)."""

    arrays: Sequence[np.ndarray]
    label: str
    limit: float


@dataclass
class Measured:
    """What calibration gives the plan search: ranges at the export's tile, the inputs plans are
    validated on, and the export graph's sizes and FLOPs."""

    model: onnx.ModelProto  # the export's graph
    measured: onnx.ModelProto  # the graph ranges were measured and plans are validated on
    checked: SearchInputs
    ranges: dict[str, float]
    growth: dict[str, float]
    sizes: dict[str, int]
    flops: dict[str, int]
    calibration_count: int
    calibration_label: str
    verify_inputs: VerifyInputs | None


def measure(
    model: onnx.ModelProto,
    calibration: Sequence[np.ndarray],
    max_abs_tolerance: float,
    calibration_label: str,
    calibration_model: onnx.ModelProto | None,
    verify_inputs: VerifyInputs | None,
    progress: Callable[[str], None],
) -> Measured:
    """Ranges and FP32 outputs on `calibration_model` (or `model`), ranges carried to `model`'s tile."""
    measured = calibration_model if calibration_model is not None else model
    progress(f"calibrating on {len(calibration)} input(s) at {'x'.join(map(str, input_shape(measured)[2:]))} ({calibration_label})")
    started = time.perf_counter()
    extra = verify_inputs.arrays if verify_inputs is not None else ()
    measurement = calibrate(measured, calibration, extra)
    limits = [max_abs_tolerance] * len(calibration)
    wanted = f"the tolerance {max_abs_tolerance:g} on its calibration inputs"
    if extra:
        limits += [verify_inputs.limit] * len(extra)
        wanted += f" and {verify_inputs.limit:g} on {verify_inputs.label}"
    checked = SearchInputs([*calibration, *extra], [*measurement.outputs, *measurement.other_outputs], limits, wanted)
    ranges, growth = measurement.ranges, {}
    types = tensor_types(model)  # one shape inference of the export's graph for growth, sizes and FLOPs
    if measured is not model:
        names = corresponding_tensors(measured, model)
        if names is None:
            raise ExportError("the calibration graph has other nodes than the export's: ranges measured on it do not carry over")
        growth = tile_growth(measured, model, names, types)
        ranges = carried_ranges(ranges, names, growth)
    progress(f"ranges and FP32 reference measured ({time.perf_counter() - started:.1f} s)")
    sizes, flops = tensor_sizes(model, types), flop_counts(model, types)
    return Measured(model, measured, checked, ranges, growth, sizes, flops, len(calibration), calibration_label, verify_inputs)


def search_plan(
    found: Measured, prepared: onnx.ModelProto, reduced: ReducedPrecision, progress: Callable[[str], None]
) -> tuple[Fp16Plan, tuple[str, ...], Validation]:
    """The first margin's plan that holds; when none does, the sensitivity search's.
    Returns the plan, the blocks the search kept FP32 and the plan's validation."""
    checked, tried = found.checked, []
    for margin in reduced.margins:
        started = time.perf_counter()
        plan = plan_islands(found.model, found.ranges, margin, found.sizes, reduced)
        result = validate(prepared, plan.fp32_nodes, checked.arrays, checked.reference, checked.limits, reduced)
        seen = "" if result.inputs == len(checked.arrays) else f" on {result.inputs} of {len(checked.arrays)} inputs"
        progress(
            f"{reduced.label} plan with range margin {margin:g}: {len(plan.fp32_nodes)} FP32 nodes, max |err| {result.max_abs:.3g}{seen} ({time.perf_counter() - started:.1f} s)"
        )
        tried.append((plan, result))
        if result.holds:
            return plan, (), result
    # from the narrowest plan: wider margins bought FP32 by range, which did not help
    plan, result = tried[0]
    # the input that plan missed goes first: the search ranks and bisects on the first input
    first = result.inputs - 1
    progress(f"no range margin meets {checked.wanted}; searching for the blocks that lose precision, from margin {plan.margin:g}")
    plan, bought, result = buy_precision(prepared, plan, checked.starting_with(first), reduced, progress)
    order = [first, *(i for i in range(len(checked.arrays)) if i != first)]
    return plan, bought, dataclasses.replace(result, errors=tuple(result.errors[order.index(i)] for i in range(len(order))))


def plan_summary(found: Measured, plan: Fp16Plan, bought: tuple[str, ...], result: Validation, reduced: ReducedPrecision):
    """The manifest's record of the plan (`reduced.summary`: Fp16Summary or Bf16Summary)."""
    model = found.model
    by_op = collections.Counter(n.op_type for n in model.graph.node if n.name in plan.fp32_nodes)
    by_reason = collections.Counter(r.split(":")[0] for r in plan.reasons.values())
    fp32_flops = sum(v for k, v in found.flops.items() if k in plan.fp32_nodes)
    largest = sorted(found.ranges.items(), key=lambda kv: -kv[1])[:5]
    verified = result.errors[found.calibration_count :]
    verify_inputs = found.verify_inputs
    return reduced.summary(
        margin=plan.margin,
        fp32_nodes=len(plan.fp32_nodes),
        total_nodes=len(model.graph.node),
        fp32_by_op=dict(by_op.most_common()),
        fp32_by_reason=dict(by_reason),
        max_abs_vs_fp32=result.max_abs,
        psnr_vs_fp32=result.psnr if math.isfinite(result.psnr) else None,
        calibration=found.calibration_label,
        largest_ranges=tuple((k, round(v, 3)) for k, v in largest),
        calibration_tile=input_shape(found.measured)[2:],
        grown_tensors=len(found.growth),
        sensitivity_blocks=bought,
        measured_at=Fp16Measurement(
            shape=input_shape(found.measured),
            inputs=found.calibration_label + (f" + {verify_inputs.label}" if verified else ""),
        ),
        verify_inputs_max_abs=max(verified) if verified else None,
        verify_inputs_limit=verify_inputs.limit if verified else None,
        **{f"{reduced.name}_flop_share": 1.0 - fp32_flops / max(1, sum(found.flops.values()))},
    )


def build_reduced(
    model: onnx.ModelProto,
    calibration: Sequence[np.ndarray],
    *,
    reduced: ReducedPrecision,
    max_abs_tolerance: float,
    calibration_label: str,
    calibration_model: onnx.ModelProto | None = None,
    verify_inputs: VerifyInputs | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[onnx.ModelProto, Fp16Summary | Bf16Summary]:
    """Plan FP32 islands by op and from measured ranges, validate; widen the margin while it
    misses the tolerance, and when no margin meets it, buy precision by sensitivity.

    `calibration_model` is the same graph at a smaller tile (`corresponding_tensors`), `calibration`
    inputs of its shape: ranges are measured and plans validated there, ranges carried to
    `model`'s tile by `tile_growth`, and the final plan converts `model` by node name.
    A plan holds when it meets `max_abs_tolerance` on the calibration inputs and, with
    `verify_inputs`, their limit on those too.
    """
    found = measure(model, calibration, max_abs_tolerance, calibration_label, calibration_model, verify_inputs, progress)
    prepared = prepare_conversion(found.measured)
    plan, bought, result = search_plan(found, prepared, reduced, progress)
    del prepared
    shipped = result.graph if found.measured is model and reduced.validated_is_deployed else reduced.deploy_graph(model, plan.fp32_nodes)
    return shipped, plan_summary(found, plan, bought, result, reduced)


def build_fp16(model: onnx.ModelProto, calibration: Sequence[np.ndarray], **options) -> tuple[onnx.ModelProto, Fp16Summary]:
    """The FP16 deploy graph and its plan (`build_reduced`'s options)."""
    return build_reduced(model, calibration, reduced=FP16, **options)


def build_bf16(model: onnx.ModelProto, calibration: Sequence[np.ndarray], **options) -> tuple[onnx.ModelProto, Bf16Summary]:
    """The BF16 deploy graph and its plan (`build_reduced`'s options)."""
    return build_reduced(model, calibration, reduced=BF16, **options)


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)


def ensure_named(model: onnx.ModelProto) -> None:
    """Give every node a unique name: the FP32 islands are recorded by node name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


FP16 = ReducedPrecision(
    name="fp16",
    max_value=FP16_MAX,
    margins=MARGINS,
    summed_limit=None,
    lacks_kernel=lambda op_type: False,  # the converter keeps its own block list in FP32
    validation_graph=lambda prepared, fp32_nodes: convert(prepared, fp32_nodes, prepared=True),
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
    validation_graph=lambda prepared, fp32_nodes: bf16.emulate(prepared, fp32_nodes, bf16.declared_float_tensors(prepared)),
    deploy_graph=bf16.convert,
    validated_is_deployed=False,
    summary=Bf16Summary,
)
PRECISIONS = {reduced.name: reduced for reduced in (FP16, BF16)}


__all__ = [
    "ALWAYS_FP32_OPS",
    "BF16",
    "FP16",
    "build_bf16",
    "build_fp16",
    "convert",
    "ensure_named",
    "flop_counts",
    "measure_ranges",
    "plan_islands",
]
