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
from onnx import TensorProto, helper, numpy_helper

from deploytool.build.inferred_types import TensorType, tensor_types
from deploytool.build.precision.growth import carried_ranges, corresponding_tensors, tensor_sizes, tile_growth
from deploytool.build.precision.plan import flop_counts
from deploytool.errors import ExportError
from deploytool.runtime.backends.onnxruntime import CPU_ONLY, open_session

# `verify` judges the FP16 graph by max |diff|, a tail statistic: on tiny IPTs one set of inputs
# gives up to 2.6x another's of the same generator (the official IPT: 0.032 on its calibration
# inputs, 0.103 on verify's). The plan is validated on verify's own inputs (exactly where the
# calibration tile is the export's) and must meet fp16_max_abs / VERIFY_SAFETY there, which
# covers verify's inputs drawn at another tile and other runtimes' rounding (TensorRT).
VERIFY_SAFETY = 2.0


def measuring_session(model: bytes, **options):
    """An ONNX Runtime session for the export's own runs of a serialized graph (calibration, plan
    trials, emulations): on CPU, with `open_session`'s `low_memory` (no arena, memory pattern or
    constant folding), `options` passed on."""
    # the export's own runs measure the graph itself, on CPU wherever the export happens
    return open_session(model, providers=CPU_ONLY, low_memory=True, **options)


def float_tensor_names(model: onnx.ModelProto) -> list[str]:
    """Every float32 activation of the graph (node outputs whose inferred type is float)."""
    return list(_float_tensor_types(model))


def _float_tensor_types(model: onnx.ModelProto) -> dict[str, TensorType]:
    types = tensor_types(model)
    return {out: types[out] for node in model.graph.node for out in node.output if out in types and types[out].elem_type == TensorProto.FLOAT}


# ONNX Runtime reduces a whole tensor to one value on one thread, but the rows of its trailing
# axes on every thread (a 3 MB tensor's max and min, 2 threads: 283 us at once, 89 us by rows of
# 64 and then the rows' results). A probe of a tensor of at least ROW_PROBE_ELEMENTS values
# reduces its fewest trailing axes holding ROW_PROBE_COLUMNS first; on the tensor itself, as a
# Reshape to 2-D would have copied it (DAT at 96 px: 1 GB more, and slower).
ROW_PROBE_ELEMENTS = 1 << 14
ROW_PROBE_COLUMNS = 64

# Ops whose output holds exactly the values of these inputs, rearranged or repeated: its max |x|
# is theirs, so it is derived instead of probed (SwinIR-M: 570 of 1,513 float tensors, a third
# of the probed elements). Slice and Gather are not here: they keep a part, whose max may be less.
_SAME_VALUES_INPUTS = {
    "Reshape": 1, "Transpose": 1, "Identity": 1, "Squeeze": 1, "Unsqueeze": 1, "Flatten": 1,
    "DepthToSpace": 1, "SpaceToDepth": 1, "Expand": 1, "Tile": 1, "Concat": None,
}  # fmt: skip


def _trailing_axes(tensor: TensorType) -> list[int] | None:
    """The fewest trailing axes holding at least ROW_PROBE_COLUMNS values, where a probe reduces
    rows (None: reduce the tensor at once)."""
    if not tensor.static or tensor.elements < ROW_PROBE_ELEMENTS:
        return None
    columns = 1
    for axis in range(len(tensor.shape) - 1, 0, -1):
        columns *= tensor.shape[axis]
        if columns >= ROW_PROBE_COLUMNS:
            return list(range(axis - len(tensor.shape), 0))
    return None


def _max_abs(array: np.ndarray) -> float:
    return float(np.abs(array).max()) if array.size else 0.0


def _same_values_sources(node: onnx.NodeProto) -> list[str]:
    """The inputs whose values `node`'s output holds exactly, rearranged (none if it computes)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in _SAME_VALUES_INPUTS:
        return []
    count = _SAME_VALUES_INPUTS[node.op_type]
    return [name for name in node.input[:count] if name]


class _ProbedGraph:
    """`model` with a max and a min probe right after each float activation that computes new
    values; the ranges of those that rearrange others' values are derived from theirs."""

    def __init__(self, model: onnx.ModelProto):
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
        self.input_name, self.output_name = model.graph.input[0].name, model.graph.output[0].name
        self.constants = {init.name: init for init in model.graph.initializer if init.data_type == TensorProto.FLOAT}
        self.names: list[str] = []  # the probed activations, in graph order
        self.derived: dict[str, list[str]] = {}  # activation: the tensors whose values it holds
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.outputs: list[onnx.ValueInfoProto] = []
        wanted = _float_tensor_types(model)
        nodes = []
        for node in model.graph.node:
            nodes.append(node)
            for name in node.output:
                if name not in wanted:
                    continue
                sources = _same_values_sources(node)
                if sources and all(s in wanted or s in self.constants or s == self.input_name for s in sources):
                    self.derived[name] = sources
                else:
                    nodes += self._probe(name, len(self.names), wanted[name])
                    self.names.append(name)
        self._source, self._nodes = model, nodes

    def serialized(self) -> bytes:
        """The graph with its probes, serialized: the copy it is made from (every weight) is freed
        when this returns, not held through the runs."""
        probed = onnx.ModelProto()
        probed.CopyFrom(self._source)
        del probed.graph.node[:]
        probed.graph.node.extend(self._nodes)
        probed.graph.initializer.extend(self.initializers.values())
        probed.graph.output.extend(self.outputs)
        return probed.SerializeToString()

    def _constant(self, values: list[int]) -> str:
        name = "__probe_" + "_".join(str(v).replace("-", "m") for v in values)
        if name not in self.initializers:
            self.initializers[name] = helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
        return name

    def _reduce(self, op: str, source: str, target: str, axes: list[int] | None) -> onnx.NodeProto:
        if axes is None:
            return helper.make_node(op, [source], [target], keepdims=0)
        if self.opset >= 18:  # from opset 18 the reductions take their axes as an input
            return helper.make_node(op, [source, self._constant(axes)], [target], keepdims=0)
        return helper.make_node(op, [source], [target], keepdims=0, axes=axes)

    def _probe(self, name: str, index: int, tensor: TensorType) -> list[onnx.NodeProto]:
        axes = _trailing_axes(tensor)
        made = []
        for op in ("ReduceMax", "ReduceMin"):
            target = f"__{op}_{index}"
            if axes is None:
                made.append(self._reduce(op, name, target, None))
            else:
                made += [self._reduce(op, name, f"{target}_rows", axes), self._reduce(op, f"{target}_rows", target, None)]
            self.outputs.append(helper.make_tensor_value_info(target, TensorProto.FLOAT, []))
        return made

    def ranges(self, probe_values: Sequence[Sequence[np.ndarray]], inputs: Sequence[np.ndarray]) -> dict[str, float]:
        """max |value| of every float activation and the input, from the probes' values of each run."""
        ranges = dict.fromkeys(self.names, 0.0)
        for values in probe_values:
            for position, name in enumerate(self.names):
                high, low = values[2 * position], values[2 * position + 1]
                ranges[name] = max(ranges[name], abs(float(high)), abs(float(low)))
        ranges[self.input_name] = max(_max_abs(array) for array in inputs)
        known = dict(ranges)  # and the constants a derived range needs
        for name, sources in self.derived.items():  # in graph order: a source is known before its use
            for source in sources:
                if source not in known:
                    known[source] = _max_abs(numpy_helper.to_array(self.constants[source]))
            ranges[name] = known[name] = max(known[source] for source in sources)
        return ranges


@dataclass
class Calibration:
    ranges: dict[str, float]  # max |value| of every float tensor over the inputs
    outputs: list[np.ndarray]  # the graph's output for each input: the FP32 reference
    other_outputs: list[np.ndarray] = dataclasses.field(default_factory=list)  # for `others`


def calibrate(model: onnx.ModelProto, inputs: Sequence[np.ndarray], others: Sequence[np.ndarray] = ()) -> Calibration:
    """max |value| of every float activation over `inputs`, and the graph's outputs, from one
    run per input; the outputs alone for `others`, from the graph without probes (DAT at 96 px:
    3.6 s a run, 1.0 s to open, where a run with the probes takes 4.9 s).

    Each activation gets a ReduceMax and a ReduceMin placed right after its producer; with
    ORT's priority-based order each is reduced and freed as soon as it is made, so memory stays
    at one inference's (appending the probes at the end kept every activation alive: 18 GB for
    SwinIR-M at 128 px instead of 0.8 GB). An activation that only rearranges others' values
    (`_SAME_VALUES_INPUTS`) takes their range unprobed. Against probing every tensor at once:
    4 inputs, SwinIR-M at 64 px 6.8 -> 5.1 s, DAT-x4 at 96 px (2 inputs) 16.8 -> 12.8 s, the
    same ranges.
    """
    probed = _ProbedGraph(model)
    session = measuring_session(probed.serialized(), priority_order=True)
    input_name, output_name = probed.input_name, probed.output_name
    runs = [session.run([output_name, *(o.name for o in probed.outputs)], {input_name: array}) for array in inputs]
    del session
    fp32_outputs = [run[0] for run in runs]
    ranges = probed.ranges([run[1:] for run in runs], inputs)
    other_outputs = []
    if others:
        session = measuring_session(model.SerializeToString())
        other_outputs = [session.run([output_name], {input_name: array})[0] for array in others]
    return Calibration(ranges, fp32_outputs, other_outputs)


def measure_ranges(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> dict[str, float]:
    """max |value| of every float activation over `inputs` (see `calibrate`)."""
    return calibrate(model, inputs).ranges


@dataclass(frozen=True)
class SearchInputs:
    """The inputs a plan is validated on, their FP32 outputs and max |diff| limits (`wanted`
    says what the limits are, for messages); `positions`: where each stood in the order the
    search was given them (a search moves the input a plan missed to the front)."""

    arrays: Sequence[np.ndarray]
    fp32_outputs: Sequence[np.ndarray]
    limits: Sequence[float]
    wanted: str
    positions: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.positions:
            object.__setattr__(self, "positions", tuple(range(len(self.arrays))))

    def first(self, used: int) -> SearchInputs:
        return SearchInputs(self.arrays[:used], self.fp32_outputs[:used], self.limits[:used], self.wanted, self.positions[:used])

    def starting_with(self, index: int) -> SearchInputs:
        order = [index, *(i for i in range(len(self.arrays)) if i != index)]
        arrays, outputs, limits, positions = ([items[i] for i in order] for items in (self.arrays, self.fp32_outputs, self.limits, self.positions))
        return SearchInputs(arrays, outputs, limits, self.wanted, tuple(positions))

    def in_given_order(self, errors: Sequence[float]) -> tuple[float, ...]:
        """The max |diff| of each input (`errors`, in this order, every input's) in the order the
        search was given the inputs."""
        return tuple(error for _, error in sorted(zip(self.positions, errors)))


@dataclass(frozen=True)
class VerifyInputs:
    """`verify`'s standard inputs as the calibration graph takes them, and the max |diff| the
    plan must meet on them (see VERIFY_SAFETY)."""

    arrays: Sequence[np.ndarray]
    label: str
    limit: float


@dataclass
class SharedCalibration:
    """One calibration of an export's graph, which every reduced precision's plan of it shares (an
    export asking for FP16 and BF16 calibrates once): ranges at the export's tile, the FP32
    outputs of the calibration inputs and of verify's, and the export graph's sizes and FLOPs."""

    model: onnx.ModelProto  # the export's graph
    measured: onnx.ModelProto  # the graph ranges were measured and plans are validated on
    inputs: Sequence[np.ndarray]  # the calibration inputs, then verify's
    fp32_outputs: Sequence[np.ndarray]
    ranges: dict[str, float]
    growth: dict[str, float]
    sizes: dict[str, int]
    flops: dict[str, int]
    calibration_count: int
    calibration_label: str
    verify_label: str | None  # which verify inputs follow the calibration inputs (None: none)

    def serves(self, verify_inputs: VerifyInputs | None) -> bool:
        """Whether it measured the verify inputs a plan is to be validated on."""
        return verify_inputs is None or verify_inputs.label == self.verify_label

    def limited(self, max_abs_tolerance: float, verify_inputs: VerifyInputs | None) -> Measured:
        """What one precision's plan search is given: these measurements and that precision's limits."""
        if not self.serves(verify_inputs):
            raise ValueError(f"this calibration did not run {verify_inputs.label}")
        count = self.calibration_count if verify_inputs is None else len(self.inputs)
        limits = [max_abs_tolerance] * self.calibration_count
        wanted = f"the tolerance {max_abs_tolerance:g} on its calibration inputs"
        if verify_inputs is not None:
            limits += [verify_inputs.limit] * (count - self.calibration_count)
            wanted += f" and {verify_inputs.limit:g} on {verify_inputs.label}"
        checked = SearchInputs(self.inputs[:count], self.fp32_outputs[:count], limits, wanted)
        return Measured(self, checked, verify_inputs)


@dataclass
class Measured:
    """What one precision's plan search is given: the shared measurements, the inputs plans are
    validated on and their limits."""

    calibration: SharedCalibration
    checked: SearchInputs
    verify_inputs: VerifyInputs | None


def measure(
    model: onnx.ModelProto,
    calibration: Sequence[np.ndarray],
    calibration_label: str,
    calibration_model: onnx.ModelProto | None,
    verify_inputs: VerifyInputs | None,
    progress: Callable[[str], None],
) -> SharedCalibration:
    """Ranges and FP32 outputs on `calibration_model` (or `model`), ranges carried to `model`'s
    tile; the FP32 outputs of `verify_inputs` too (their limit is each plan's own)."""
    measured = calibration_model if calibration_model is not None else model
    progress(f"calibrating on {len(calibration)} input(s) at {'x'.join(map(str, input_shape(measured)[2:]))} ({calibration_label})")
    started = time.perf_counter()
    extra = verify_inputs.arrays if verify_inputs is not None else ()
    measurement = calibrate(measured, calibration, extra)
    ranges, growth = measurement.ranges, {}
    types = tensor_types(model)  # one shape inference of the export's graph for growth, sizes and FLOPs
    if measured is not model:
        names = corresponding_tensors(measured, model)
        if names is None:
            raise ExportError("the calibration graph has other nodes than the export's: ranges measured on it do not carry over")
        growth = tile_growth(measured, model, names, types)
        ranges = carried_ranges(ranges, names, growth)
    progress(f"ranges and FP32 reference measured ({time.perf_counter() - started:.1f} s)")
    return SharedCalibration(
        model=model,
        measured=measured,
        inputs=[*calibration, *extra],
        fp32_outputs=[*measurement.outputs, *measurement.other_outputs],
        ranges=ranges,
        growth=growth,
        sizes=tensor_sizes(model, types),
        flops=flop_counts(model, types),
        calibration_count=len(calibration),
        calibration_label=calibration_label,
        verify_label=verify_inputs.label if extra else None,
    )


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
