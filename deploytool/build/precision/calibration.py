"""Calibration: run the FP32 graph on calibration inputs with an |x|-max reduction attached to
every float tensor (one scalar per tensor, so memory stays small at any tile size), and keep its
outputs as the FP32 reference the plans are validated against, on the calibration inputs and on
`verify`'s standard inputs (see VERIFY_SAFETY). BF16 plans are calibrated the same way, on the
smaller calibration graph too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from deploytool.build.inferred_types import tensor_types
from deploytool.build.precision.growth import carried_ranges, corresponding_tensors, tensor_sizes, tile_growth
from deploytool.build.precision.plan import flop_counts
from deploytool.errors import ExportError
from deploytool.runtime.backends.onnxruntime import open_session

# `verify` judges the FP16 graph by max |diff|, a tail statistic: on tiny IPTs one set of inputs
# gives up to 2.6x another's of the same generator (the official IPT: 0.032 on its calibration
# inputs, 0.103 on verify's). The plan is validated on verify's own inputs (exactly where the
# calibration tile is the export's) and must meet fp16_max_abs / VERIFY_SAFETY there, which
# covers verify's inputs drawn at another tile and other runtimes' rounding (TensorRT).
VERIFY_SAFETY = 2.0

# The export's own runs measure the graph itself, on CPU wherever the export happens
CPU = ["CPUExecutionProvider"]


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
    fp32_outputs = []
    for array in inputs:
        fp32_output, *values = session.run([output_name, *(o.name for o in outputs)], {input_name: array})
        fp32_outputs.append(fp32_output)
        for position, name in enumerate(names):
            high, low = values[2 * position], values[2 * position + 1]
            ranges[name] = max(ranges[name], abs(float(high)), abs(float(low)))
    ranges[input_name] = max(float(np.abs(array).max()) for array in inputs)
    return Calibration(ranges, fp32_outputs, [session.run([output_name], {input_name: array})[0] for array in others])


def measure_ranges(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> dict[str, float]:
    """max |value| of every float activation over `inputs` (see `calibrate`)."""
    return calibrate(model, inputs).ranges


@dataclass(frozen=True)
class SearchInputs:
    """The inputs a plan is validated on, their FP32 outputs and max |diff| limits (`wanted`
    says what the limits are, for messages)."""

    arrays: Sequence[np.ndarray]
    fp32_outputs: Sequence[np.ndarray]
    limits: Sequence[float]
    wanted: str

    def first(self, used: int) -> SearchInputs:
        return SearchInputs(self.arrays[:used], self.fp32_outputs[:used], self.limits[:used], self.wanted)

    def starting_with(self, index: int) -> SearchInputs:
        order = [index, *(i for i in range(len(self.arrays)) if i != index)]
        return SearchInputs(*([items[i] for i in order] for items in (self.arrays, self.fp32_outputs, self.limits)), self.wanted)


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


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
