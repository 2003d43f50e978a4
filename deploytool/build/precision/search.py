"""Validation and the sensitivity search: each plan's graph is validated against the FP32 graph
on the calibration inputs and on `verify`'s standard inputs; if the error exceeds either limit,
the margin is widened and the plan rebuilt, and if no margin helps, the sensitivity search keeps
the blocks that lose the most precision in FP32. The search is where BF16 plans buy their
precision; they are measured on the graph's emulation in FP32 (bf16.emulate): ONNX Runtime's
CPU provider has no BF16 kernels.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from deploytool.build.metrics import psnr
from deploytool.build.precision.calibration import Measured, SearchInputs, measuring_session
from deploytool.build.precision.plan import Fp16Plan, PlanTrials, ReducedPrecision, flop_counts, plan_islands
from deploytool.errors import ExportError


def _compare(fp32_outputs: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max |diff|, PSNR of the worst batch) over calibration batches."""
    max_abs, worst_psnr = 0.0, math.inf
    for a, b in zip(fp32_outputs, candidate):
        if not np.isfinite(b).all():
            return math.inf, -math.inf
        max_abs = max(max_abs, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
        worst_psnr = min(worst_psnr, psnr(a, b))
    return max_abs, worst_psnr


def run_graph(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    session = measuring_session(model.SerializeToString())
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
    trials: PlanTrials,
    fp32_nodes: set[str],
    inputs: Sequence[np.ndarray],
    fp32_outputs: Sequence[np.ndarray],
    limits: float | Sequence[float],
) -> Validation:
    """The plan's graph (`trials.session`'s) against the FP32 outputs, input by input, each
    against its max |diff| limit (one for all, or one each): the first input that misses its
    limit ends the run."""
    limits = [limits] * len(inputs) if isinstance(limits, (int, float)) else list(limits)
    graph, session = trials.session(fp32_nodes)
    name = session.get_inputs()[0].name
    errors, worst_psnr = [], math.inf
    for array, expected, limit in zip(inputs, fp32_outputs, limits):
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


def node_paths(model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """{node: the module path the tracer put in its name ("/body/layers.3/attn/MatMul" ->
    ("body", "layers.3", "attn"))}; a node without a path (a fused Gemm) takes its first input's
    producer's."""
    producer = {out: node for node in model.graph.node for out in node.output}
    paths: dict[str, tuple[str, ...]] = {}
    for node in model.graph.node:
        if node.name.startswith("/"):
            paths[node.name] = tuple(node.name.split("/")[1:-1])
        else:
            source = next((producer[name] for name in node.input if name in producer), None)
            paths[node.name] = paths.get(source.name, ()) if source is not None else ()
    return paths


def node_blocks(model: onnx.ModelProto, reduced_nodes: set[str], min_blocks: int | None = None) -> dict[str, list[str]]:
    """Reduced-precision nodes grouped by their `node_paths` cut at the shallowest depth that
    gives `min_blocks` (default MIN_BLOCKS) blocks. Blocks in graph order."""
    paths = node_paths(model)
    blocks: dict[str, list[str]] = {}
    for depth in range(1, MAX_BLOCK_DEPTH + 1):
        blocks = {}
        for node in model.graph.node:
            if node.name in reduced_nodes:
                blocks.setdefault("/" + "/".join(paths[node.name][:depth]), []).append(node.name)
        if len(blocks) >= (min_blocks or MIN_BLOCKS):
            break
    return blocks


def buy_precision(
    trials: PlanTrials, plan: Fp16Plan, checked: SearchInputs, reduced: ReducedPrecision, progress: Callable[[str], None]
) -> tuple[Fp16Plan, tuple[str, ...], Validation]:
    """Keep in FP32, besides the range plan's islands, the blocks whose reduced precision costs
    the most, as few as the inputs' limits allow.

    Each block's cost is the output error with that block alone in the reduced precision (all
    else FP32), on the first input: it includes what later blocks make of its rounding (a
    cancellation downstream). Then a bisection for the shortest head of that ranking that holds
    on the first input, confirmed on all. The validation's errors are in `checked.positions`'
    order (the order the search was given the inputs).
    """
    label = reduced.label
    reduced_nodes = {n.name for n in trials.model.graph.node} - plan.fp32_nodes
    blocks = node_blocks(trials.model, reduced_nodes, reduced.min_blocks)
    if len(blocks) < 2:
        raise ExportError(f"no {label} plan meets {checked.wanted}, and the graph has no blocks to search")
    started, one = time.perf_counter(), checked.first(1)
    cost = {}
    for block, names in blocks.items():
        alone = validate(trials, plan.fp32_nodes | (reduced_nodes - set(names)), one.arrays, one.fp32_outputs, one.limits)
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
        result = validate(trials, plan_keeping(count).fp32_nodes, inputs.arrays, inputs.fp32_outputs, inputs.limits)
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
        if not result.holds:  # the input it missed goes first: the next count that misses it stops there
            checked = checked.starting_with(result.inputs - 1)
            continue
        found = (plan_keeping(count), tuple(ranked[:count]), result)
        if reduced.finer_units:
            found = release_finer_units(trials, plan, {block: blocks[block] for block in ranked[:count]}, checked, reduced, progress) or found
        searched, bought, validation = found
        return searched, bought, dataclasses.replace(validation, errors=checked.in_given_order(validation.errors))
    raise ExportError(f"no {label} plan meets {checked.wanted}, even with {len(ranked) - 1} of {len(ranked)} blocks kept in FP32 by the sensitivity search")


def release_finer_units(
    trials: PlanTrials,
    plan: Fp16Plan,
    kept: dict[str, list[str]],
    checked: SearchInputs,
    reduced: ReducedPrecision,
    progress: Callable[[str], None],
) -> tuple[Fp16Plan, tuple[str, ...], Validation] | None:
    """Return the weighted products (Conv, MatMul, Gemm reading a weight) of the blocks the
    search kept in FP32 to the reduced precision where the limits still hold: a block is rarely
    sensitive as a whole (IPT: a transformer layer's projections and feed-forward hold most of
    its FLOPs and keep the tolerance in BF16; its attention products and residual adds are what
    lose the precision). One trial a block, least sensitive first, each on every input (it stops
    at the first input that misses); the result is validated once more, and None where it does
    not hold (the caller keeps the whole blocks). Returns the plan, the blocks with nodes left in
    FP32, and its validation.
    """
    started = time.perf_counter()
    flops = flop_counts(trials.model)
    weights = {init.name for init in trials.model.graph.initializer}
    by_name = {node.name: node for node in trials.model.graph.node}
    fp32 = set(plan.fp32_nodes) | {name for names in kept.values() for name in names}
    tried, order = 0, checked
    for names in reversed(list(kept.values())):
        weighted = {name for name in names if flops.get(name) and any(i in weights for i in by_name[name].input[1:])}
        if weighted:
            tried += 1
            # on every input: trials that each held on the first input walked the plan to its limit there and past it elsewhere
            trial = validate(trials, fp32 - weighted, order.arrays, order.fp32_outputs, order.limits)
            if trial.holds:
                fp32 -= weighted
            else:  # the input it missed goes first: the next trial that misses it stops there
                order = order.starting_with(trial.inputs - 1)
    kept_names = fp32 - plan.fp32_nodes
    finer = Fp16Plan(plan.fp32_nodes | kept_names, {**plan.reasons, **dict.fromkeys(kept_names, "sensitivity")}, plan.margin)
    result = validate(trials, finer.fp32_nodes, checked.arrays, checked.fp32_outputs, checked.limits)
    before = sum(flops.get(name, 0) for names in kept.values() for name in names)
    after = sum(flops.get(name, 0) for name in kept_names)
    progress(
        f"weighted products of the kept blocks back in {reduced.label}: {after / max(before, 1):.0%} of their FLOPs stay FP32 ({tried} trials), "
        f"max |err| {result.max_abs:.3g} ({time.perf_counter() - started:.1f} s){'' if result.holds else ': misses the limits on all inputs, the whole blocks stay'}"
    )
    if not result.holds:
        return None
    return finer, tuple(block for block, names in kept.items() if kept_names & set(names)), result


def search_plan(
    found: Measured, trials: PlanTrials, reduced: ReducedPrecision, progress: Callable[[str], None]
) -> tuple[Fp16Plan, tuple[str, ...], Validation]:
    """The first margin's plan that holds; when none does, the sensitivity search's.
    Returns the plan, the blocks the search kept FP32 and the plan's validation."""
    checked, shared, tried = found.checked, found.calibration, []
    for margin in reduced.margins:
        started = time.perf_counter()
        plan = plan_islands(shared.model, shared.ranges, margin, shared.sizes, reduced)
        result = validate(trials, plan.fp32_nodes, checked.arrays, checked.fp32_outputs, checked.limits)
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
    return buy_precision(trials, plan, checked.starting_with(first), reduced, progress)
