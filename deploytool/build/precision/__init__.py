"""The FP16 and BF16 deploy graphs: the reduced precision everywhere except FP32 islands
chosen by measurement. One planner serves both precisions (`ReducedPrecision`: FP16, BF16).

TensorRT 10 and 11 build strongly typed networks, which run each tensor in the type the ONNX
gives it, so `model_fp16.onnx` is the engine's precision contract. It is built in three steps:

1. calibrate (`measure`): run the FP32 graph on calibration inputs with an |x|-max reduction
   attached to every float tensor (one scalar per tensor, so memory stays small at any tile
   size); one calibration serves every precision's plan of the graph;
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

The package, by job: calibration.py (ranges and the FP32 outputs), growth.py (ranges carried to
the export's tile), plan.py (the islands and the conversion, FP16 and BF16), search.py (validation
and the sensitivity search); this module builds the plans and re-exports every name. A name is
patched where it is looked up (`precision.search.validate`, not `precision.validate`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

import onnx

from deploytool.build.precision.calibration import (
    VERIFY_SAFETY,
    Calibration,
    Measured,
    SearchInputs,
    SharedCalibration,
    VerifyInputs,
    calibrate,
    float_tensor_names,
    input_shape,
    measure,
    measure_ranges,
    measuring_session,
)
from deploytool.build.precision.growth import (
    BOUNDED_OPS,
    SUMS_OVER_INPUT,
    carried_ranges,
    corresponding_tensors,
    flowing_growth,
    reduction_accumulator,
    summed_elements,
    tensor_sizes,
    tile_growth,
)
from deploytool.build.precision.plan import (
    ALWAYS_FP32_OPS,
    BF16,
    BF16_SUMMED_LIMIT,
    FLOP_OPS,
    FP16,
    FP16_MAX,
    MARGINS,
    PRECISIONS,
    REDUCTIONS,
    Conversions,
    Fp16Plan,
    PlanTrials,
    ReducedPrecision,
    convert,
    flop_counts,
    fold_constant_casts,
    island_reason,
    plan_islands,
    prepare_conversion,
    remove_cast_round_trips,
    topological_order,
    unshare_initializers,
)
from deploytool.build.precision.search import (
    MAX_BLOCK_DEPTH,
    MIN_BLOCKS,
    Validation,
    buy_precision,
    node_blocks,
    node_paths,
    release_finer_units,
    run_graph,
    search_plan,
    validate,
)
from deploytool.runtime.manifest import Bf16Summary, Fp16Measurement, Fp16Summary


def plan_summary(found: Measured, plan: Fp16Plan, bought: tuple[str, ...], result: Validation, reduced: ReducedPrecision):
    """The manifest's record of the plan (`reduced.summary`: Fp16Summary or Bf16Summary)."""
    shared, verify_inputs = found.calibration, found.verify_inputs
    model = shared.model
    by_op = collections.Counter(n.op_type for n in model.graph.node if n.name in plan.fp32_nodes)
    by_reason = collections.Counter(r.split(":")[0] for r in plan.reasons.values())
    fp32_flops = sum(v for k, v in shared.flops.items() if k in plan.fp32_nodes)
    largest = sorted(shared.ranges.items(), key=lambda kv: -kv[1])[:5]
    verified = result.errors[shared.calibration_count :]
    return reduced.summary(
        margin=plan.margin,
        fp32_nodes=len(plan.fp32_nodes),
        total_nodes=len(model.graph.node),
        fp32_by_op=dict(by_op.most_common()),
        fp32_by_reason=dict(by_reason),
        max_abs_vs_fp32=result.max_abs,
        psnr_vs_fp32=result.psnr if math.isfinite(result.psnr) else None,
        calibration=shared.calibration_label,
        largest_ranges=tuple((k, round(v, 3)) for k, v in largest),
        calibration_tile=input_shape(shared.measured)[2:],
        grown_tensors=len(shared.growth),
        sensitivity_blocks=bought,
        measured_at=Fp16Measurement(
            shape=input_shape(shared.measured),
            inputs=shared.calibration_label + (f" + {verify_inputs.label}" if verified else ""),
        ),
        verify_inputs_max_abs=max(verified) if verified else None,
        verify_inputs_limit=verify_inputs.limit if verified else None,
        **{f"{reduced.name}_flop_share": 1.0 - fp32_flops / max(1, sum(shared.flops.values()))},
    )


def build_reduced(
    shared: SharedCalibration,
    *,
    reduced: ReducedPrecision,
    max_abs_tolerance: float,
    verify_inputs: VerifyInputs | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[onnx.ModelProto, Fp16Summary | Bf16Summary]:
    """Plan FP32 islands by op and from measured ranges, validate; widen the margin while it
    misses the tolerance, and when no margin meets it, buy precision by sensitivity.

    `shared` is `measure`'s calibration of the export's graph, where the calibration graph is the
    same graph at a smaller tile (`corresponding_tensors`): plans are validated there and the
    final plan converts the export's graph by node name. A plan holds when it meets
    `max_abs_tolerance` on the calibration inputs and, with `verify_inputs` (which `shared` must
    have measured), their limit on those too.
    """
    found = shared.limited(max_abs_tolerance, verify_inputs)
    model = shared.model
    trials = reduced.trials(prepare_conversion(shared.measured))
    plan, bought, result = search_plan(found, trials, reduced, progress)
    del trials
    shipped = result.graph if shared.measured is model and reduced.validated_is_deployed else reduced.deploy_graph(model, plan.fp32_nodes)
    return shipped, plan_summary(found, plan, bought, result, reduced)


def build_fp16(shared: SharedCalibration, **options) -> tuple[onnx.ModelProto, Fp16Summary]:
    """The FP16 deploy graph and its plan (`build_reduced`'s options)."""
    return build_reduced(shared, reduced=FP16, **options)


def build_bf16(shared: SharedCalibration, **options) -> tuple[onnx.ModelProto, Bf16Summary]:
    """The BF16 deploy graph and its plan (`build_reduced`'s options)."""
    return build_reduced(shared, reduced=BF16, **options)


def ensure_named(model: onnx.ModelProto) -> None:
    """Give every node a unique name: the FP32 islands are recorded by node name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


__all__ = [
    "ALWAYS_FP32_OPS",
    "BF16",
    "BF16_SUMMED_LIMIT",
    "BOUNDED_OPS",
    "Calibration",
    "Conversions",
    "FLOP_OPS",
    "FP16",
    "FP16_MAX",
    "Fp16Plan",
    "MARGINS",
    "MAX_BLOCK_DEPTH",
    "MIN_BLOCKS",
    "Measured",
    "PRECISIONS",
    "PlanTrials",
    "REDUCTIONS",
    "ReducedPrecision",
    "SUMS_OVER_INPUT",
    "SearchInputs",
    "SharedCalibration",
    "VERIFY_SAFETY",
    "Validation",
    "VerifyInputs",
    "build_bf16",
    "build_fp16",
    "build_reduced",
    "buy_precision",
    "calibrate",
    "carried_ranges",
    "convert",
    "corresponding_tensors",
    "ensure_named",
    "float_tensor_names",
    "flop_counts",
    "flowing_growth",
    "fold_constant_casts",
    "input_shape",
    "island_reason",
    "measure",
    "measure_ranges",
    "measuring_session",
    "node_blocks",
    "node_paths",
    "plan_islands",
    "plan_summary",
    "prepare_conversion",
    "reduction_accumulator",
    "release_finer_units",
    "remove_cast_round_trips",
    "run_graph",
    "search_plan",
    "summed_elements",
    "tensor_sizes",
    "tile_growth",
    "topological_order",
    "unshare_initializers",
    "validate",
]
