"""The FP16 deploy graph: FP16 everywhere except FP32 islands chosen from measured ranges.

TensorRT 11 (and >= 10.12 strongly typed) runs each tensor in the type the ONNX gives it, so
`model_fp16.onnx` is the engine's precision contract. It is built in three steps:

1. calibrate: run the FP32 graph on calibration inputs with an |x|-max reduction attached to
   every float tensor (one scalar per tensor, so memory stays small at any tile size);
2. plan: keep in FP32 the fused normalisations and softmax, every node that reads or writes a
   tensor whose measured range does not fit FP16 with a safety margin (growing residual
   streams), and every reduction whose running sum, derived from its measured output, does not
   (sums of squares over a whole tile);
3. convert with onnxconverter-common (FP32 graph IO kept), then validate against the FP32 graph
   on the calibration inputs; if the error exceeds the model's tolerance, the margin is widened
   and the plan rebuilt.

By construction no FP16 edge of the result carries a tensor whose measured range exceeds
FP16_MAX / margin. ONNX Runtime's CPU provider runs FP16 nodes without FP16 kernels in FP32 and
may drop the FP16 rounding between two such nodes, so it under-reports overflow: the tests also
run the overflow stress case in onnx's reference evaluator, which computes in true FP16.
"""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploytool.backends.onnxruntime import open_session
from deploytool.errors import ExportError
from deploytool.graphs import tensor_types
from deploytool.manifest import Fp16Summary
from deploytool.metrics import psnr

FP16_MAX = 65504.0
# Fused normalisations and softmax: their inner sums are not graph tensors, so there is nothing
# to measure, and TensorRT's FP16 versions are known to lose precision (HAT, SwinIR). FP32 inside.
ALWAYS_FP32_OPS = frozenset({"LayerNormalization", "Softmax", "LogSoftmax", "InstanceNormalization", "GroupNormalization", "CumSum", "Resize", "Range"})
# Reductions are judged by their accumulator, derived from the measured output: a sum of squares
# over a whole tile (Restormer's q/k normalisation) overflows FP16 though its root does not.
REDUCTIONS = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMean", "GlobalAveragePool"})
# Ranges are measured on a few inputs; real images can go further. Larger margins keep more in FP32.
MARGINS = (16.0, 256.0, 4096.0)
FLOP_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# The export's own runs measure the graph itself, on CPU wherever the export happens
CPU = ["CPUExecutionProvider"]


@dataclass
class Fp16Plan:
    fp32_nodes: set[str]
    reasons: dict[str, str]
    margin: float


def float_tensor_names(model: onnx.ModelProto) -> list[str]:
    """Every float32 activation of the graph (node outputs whose inferred type is float)."""
    types = tensor_types(model)
    return [out for node in model.graph.node for out in node.output if out in types and types[out].elem_type == TensorProto.FLOAT]


def measure_ranges(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> dict[str, float]:
    """max |value| of every float activation over `inputs`, from one run per input.

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
    input_name = model.graph.input[0].name
    ranges = dict.fromkeys(names, 0.0)
    for array in inputs:
        values = session.run([o.name for o in outputs], {input_name: array})
        for position, name in enumerate(names):
            high, low = values[2 * position], values[2 * position + 1]
            ranges[name] = max(ranges[name], abs(float(high)), abs(float(low)))
    ranges[input_name] = max(float(np.abs(array).max()) for array in inputs)
    return ranges


def plan_islands(model: onnx.ModelProto, ranges: dict[str, float], margin: float) -> Fp16Plan:
    """Nodes that must stay FP32: by op type, and by measured range against FP16_MAX / margin."""
    limit = FP16_MAX / margin
    sizes = tensor_sizes(model) if any(n.op_type in REDUCTIONS for n in model.graph.node) else {}
    fp32_nodes: set[str] = set()
    reasons: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in ALWAYS_FP32_OPS:
            fp32_nodes.add(node.name)
            reasons[node.name] = f"op:{node.op_type}"
            continue
        large = [t for t in (*node.input, *node.output) if ranges.get(t, 0.0) > limit]
        if large:
            fp32_nodes.add(node.name)
            reasons[node.name] = "range"
        elif node.op_type in REDUCTIONS and reduction_accumulator(node, ranges, sizes) > limit:
            fp32_nodes.add(node.name)
            reasons[node.name] = "accumulator"
    return Fp16Plan(fp32_nodes, reasons, margin)


def tensor_sizes(model: onnx.ModelProto) -> dict[str, int]:
    return {name: tensor.elements for name, tensor in tensor_types(model).items()}


def reduction_accumulator(node: onnx.NodeProto, ranges: dict[str, float], sizes: dict[str, int]) -> float:
    """Largest running sum a reduction holds, from its measured output."""
    out = ranges.get(node.output[0], 0.0)
    if node.op_type == "ReduceL2":
        return out * out
    if node.op_type in ("ReduceMean", "GlobalAveragePool"):
        count = sizes.get(node.input[0], 1) // max(1, sizes.get(node.output[0], 1))
        return out * count
    return out


def convert(model: onnx.ModelProto, fp32_nodes: Iterable[str] | None) -> onnx.ModelProto:
    """FP16 graph with FP32 input/output; `fp32_nodes=None` converts everything (the naive way)."""
    from onnxconverter_common import float16

    blocked = set(fp32_nodes or ())
    op_block_list = list(float16.DEFAULT_OP_BLOCK_LIST) if fp32_nodes is not None else []
    with warnings.catch_warnings():
        # weights below FP16's smallest normal are flushed to +-1e-7: expected, not news
        warnings.filterwarnings("ignore", message=".*will be truncated to.*")
        converted = float16.convert_float_to_float16(
            unshare_initializers(model),
            keep_io_types=True,
            disable_shape_infer=False,
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


def flop_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates of Conv/MatMul/Gemm nodes, from the (static) inferred shapes."""
    shapes = {name: list(tensor.shape or ()) for name, tensor in tensor_types(model).items()}
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


def build_fp16(
    model: onnx.ModelProto,
    calibration: Sequence[np.ndarray],
    *,
    max_abs_tolerance: float,
    calibration_label: str,
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[onnx.ModelProto, Fp16Summary]:
    """Plan FP32 islands from measured ranges, convert, validate; widen the margin until it holds."""
    progress(f"calibrating on {len(calibration)} input(s) ({calibration_label})")
    ranges = measure_ranges(model, calibration)
    reference = run_graph(model, calibration)
    flops = flop_counts(model)
    total_flops = max(1, sum(flops.values()))
    best = None
    for margin in MARGINS:
        plan = plan_islands(model, ranges, margin)
        candidate = convert(model, plan.fp32_nodes)
        max_abs, value_psnr = _compare(reference, run_graph(candidate, calibration))
        progress(f"FP16 plan with range margin {margin:g}: {len(plan.fp32_nodes)} FP32 nodes, max |err| {max_abs:.3g}")
        best = (candidate, plan, max_abs, value_psnr)
        if max_abs <= max_abs_tolerance:
            break
    candidate, plan, max_abs, value_psnr = best
    if not max_abs <= max_abs_tolerance:
        raise ExportError(f"no FP16 plan meets the tolerance {max_abs_tolerance:g} (best max |err| {max_abs:.3g} with margin {plan.margin:g})")
    by_op = collections.Counter(n.op_type for n in model.graph.node if n.name in plan.fp32_nodes)
    by_reason = collections.Counter(r.split(":")[0] for r in plan.reasons.values())
    fp32_flops = sum(v for k, v in flops.items() if k in plan.fp32_nodes)
    largest = sorted(((k, v) for k, v in ranges.items()), key=lambda kv: -kv[1])[:5]
    report = Fp16Summary(
        margin=plan.margin,
        fp32_nodes=len(plan.fp32_nodes),
        total_nodes=len(model.graph.node),
        fp32_by_op=dict(by_op.most_common()),
        fp32_by_reason=dict(by_reason),
        fp16_flop_share=1.0 - fp32_flops / total_flops,
        max_abs_vs_fp32=max_abs,
        psnr_vs_fp32=value_psnr if math.isfinite(value_psnr) else None,
        calibration=calibration_label,
        largest_ranges=tuple((k, round(v, 3)) for k, v in largest),
    )
    return candidate, report


def ensure_named(model: onnx.ModelProto) -> None:
    """Give every node a unique name: the FP32 islands are recorded by node name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


__all__ = [
    "ALWAYS_FP32_OPS",
    "build_fp16",
    "convert",
    "ensure_named",
    "flop_counts",
    "measure_ranges",
    "plan_islands",
]
