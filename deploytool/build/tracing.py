"""A model's ONNX graph at one static shape: torch.export on fake tensors, torch's dynamo ONNX
exporter, then the exporter's output made plain (shape arithmetic folded, unique names, nodes
named by module, ops TensorRT parses). `trace` is the entry; export.py calls it per shape.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import warnings
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from deploytool.build.graph_passes import readers
from deploytool.build.inferred_types import TensorType, tensor_types
from deploytool.build.trace_cache import NOTE_KEY, StaleEntry, TraceCache, state_tensors, trace_key
from deploytool.errors import DeployError
from deploytool.runtime.manifest import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import onnx_ir

# The dynamo exporter's own opset: its torchlib functions are written for 18, and any other
# opset is a version conversion of the finished graph. TensorRT 10.x's parser (onnx-tensorrt)
# takes it (every TensorRT 10 parses opsets up to at least 20). At 18 the Reduce* ops and Split
# take axes/sizes as inputs, which the static-graph check requires to be constants. The BF16
# graph is converted to 22 afterwards (build/bf16.py), where ONNX first has BF16 Conv.
OPSET = 18
EXPORTER = "torch.export (fake tensors, strict=False) + torch.onnx.export (dynamo, optimize=False) + onnxsim"
# The exporter computes reshape targets, slice bounds and the like from Shape ops and small
# constants; folding values of at most this many elements folds exactly that arithmetic.
SHAPE_ARITHMETIC_ELEMENTS = 8
# The dynamo exporter's record of each node's module scopes: "['', 'layers.0', 'layers.0.attn', 'matmul']"
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"


# What a trace imports on first use (the dynamo exporter, onnxscript's torchlib, the passes), for
# `load_exporter`; a module a later release moved is imported by the trace itself, as before.
EXPORTER_MODULES = (
    "torch.export._trace",
    "torch.onnx._internal.exporter._compat",
    "onnxscript.function_libs.torch_lib.ops",
    "onnxscript.optimizer",
    "onnx_ir.passes.common",
)


def load_exporter() -> None:
    """Import the exporter's modules (`EXPORTER_MODULES`) into this process. A trace imports them
    on first use, so a trace in a forked child (`forked_trace`) of a process that has not pays
    for the import in every child: imported once in the exporting process, each child has them
    (a tiny model's trace in a child: swinir-s-x2 3.5 -> 2.8 s, for 0.8 s once in the parent,
    where an export's two children each paid it at once: one `export esrt-x4` costs the same,
    and the test suite's workers, which export hundreds of times, save it on each)."""
    for name in EXPORTER_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def trace(model: torch.nn.Module, example: torch.Tensor, cache: TraceCache | None = None) -> onnx.ModelProto:
    """The model's ONNX graph at `example`'s shape, through torch.export and the dynamo ONNX
    exporter, with no forward pass at that shape: torch.export (`strict=False`) runs the model on
    fake tensors (shapes and dtypes only), so the trace's time and memory do not grow with the
    tile, and the weights become the graph's initializers as they are. Opset 18 (`OPSET`).

    Chosen over the TorchScript tracer, which executed a real forward at the export tile (most of
    a large-tile export's time and its peak memory) and is deprecated upstream, which had capped
    torch; no family needs that tracer. The cost here is a fixed one per trace, about the same at
    any tile: torch.export's capture and decomposition, then the translation. onnxscript's graph
    optimizer is skipped (`optimize=False`: it cost more than the trace, and onnxsim does that
    work anyway): only the shape arithmetic is folded here (`fold_shape_arithmetic`). Node names
    and the exporter's quirks: `name_nodes_by_module`, `plain_ops`. The export traces twice, at its
    tile and at the calibration tile, in two forked processes at once (`export.traced_graph`,
    `forked_trace`). The README's "How the graph is made" has the measurements.

    With a `cache` (trace_cache), the exporter's graph of an earlier trace of the same definition
    at the same shape is reused with this model's weights, and a fresh one is kept there; the
    graph then carries a note of which (`trace_cache.take_note`).
    """
    import onnx_ir

    key = trace_key(model, tuple(example.shape)) if cache is not None else None
    exported, note = _cached_graph(cache, key, model) if key is not None else (None, None)
    if exported is None:
        exported, weight_names = exported_graph(model, example)
        if key is not None:
            note = (f"{note}; " if note else "") + _kept(cache, key, onnx_ir.serde.serialize_model(exported), weight_names)
        elif cache is not None:
            note = "not kept in the trace cache: a class of the model has no source file to key its code by"
    graph = plain_graph(exported)
    if note:
        graph.metadata_props.add(key=NOTE_KEY, value=note)
    return graph


def exported_graph(model: torch.nn.Module, example: torch.Tensor) -> tuple[onnx_ir.Model, dict[str, str]]:
    """The dynamo exporter's graph of `model` at `example`'s shape (`trace`), its names made
    unique, and which of its initializers hold which of the model's weights: {initializer name:
    state-dict name}."""
    from onnx_ir.passes.common import NameFixPass

    with warnings.catch_warnings(), torch.no_grad():
        # the original-layout buffers some definitions keep for checkpoints warn when unused
        warnings.simplefilter("ignore")
        exported = torch.export.export(model.eval(), (example,), strict=False)
        program = torch.onnx.export(
            exported,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=False,
            verbose=False,
        )
    del exported
    state = state_tensors(model)
    weights = {value: value.name for value in program.model.graph.initializers.values() if value.name in state}
    # Values named after the FX nodes can repeat a weight's name (DAT: its `mean` buffer and an
    # aten.mean), which is not valid SSA once written out; NameFixPass makes every name unique.
    NameFixPass()(program.model)
    return program.model, {value.name: name for value, name in weights.items()}


def plain_graph(exported: onnx_ir.Model) -> onnx.ModelProto:
    """`exported_graph`'s graph with its shape arithmetic folded, nodes named by module and the
    exporter's quirks rewritten (`trace`)."""
    import onnx_ir

    fold_shape_arithmetic(exported)
    graph = onnx_ir.serde.serialize_model(exported)
    del exported
    name_nodes_by_module(graph)
    # the exporter's recorded intermediate types and shapes: ONNX shape inference derives them
    # again, and one of them disagreed with it on DAT (another value's dims)
    del graph.graph.value_info[:]
    plain_ops(graph)
    return graph


def _cached_graph(cache: TraceCache, key: str, model: torch.nn.Module) -> tuple[onnx_ir.Model | None, str | None]:
    """The cache's exporter graph under `key` with `model`'s weights, or None and why not."""
    try:
        exported = cache.load(key, model)
    except StaleEntry as exc:
        return None, f"traced again: the trace cache's entry {cache.path(key)} is stale ({exc})"
    return exported, f"reused from the trace cache ({cache.path(key)})" if exported is not None else None


def _kept(cache: TraceCache, key: str, graph: onnx.ModelProto, weight_names: dict[str, str]) -> str:
    """Keep a fresh trace (`graph`: a serialized copy, which this strips) in the cache; what
    happened, for the export's progress."""
    try:
        cache.store(key, graph, weight_names)
    except DeployError as exc:
        return f"not kept in the trace cache: {exc}"
    except OSError as exc:  # a write that failed midway (a full disk)
        return f"not kept in the trace cache: cannot write {cache.path(key)}: {exc.strerror or exc}"
    return f"kept in the trace cache ({cache.path(key)})"


def fold_shape_arithmetic(model) -> None:
    """Fold the exporter's shape arithmetic (values of at most `SHAPE_ARITHMETIC_ELEMENTS`) in an
    onnx-ir model. This gives every value a static shape, which the fold limit's analysis
    (graph_passes.simplify) needs to see which constants a node would expand: without it onnxsim
    folded HAT's per-block biases at 256 px into a 16 GB process. Larger constants are left to
    onnxsim and the fold limit."""
    from onnxscript.optimizer import fold_constants

    fold_constants(model, input_size_limit=SHAPE_ARITHMETIC_ELEMENTS, output_size_limit=SHAPE_ARITHMETIC_ELEMENTS)


def name_nodes_by_module(model: onnx.ModelProto) -> None:
    """Name each node after its module path, one component per module level (its name within its
    parent: module `layers.0.residual_group` is "/layers.0/residual_group/"), its op and its count
    among that module's ops ("/layers.0/residual_group/blocks.1/attn/MatMul_2"), and drop the
    exporter's per-node metadata.

    The exporter's own names carry counters over the whole graph, which shift between two tiles
    where one decomposition emits another number of nodes; the FP16/BF16 plan carries its ranges
    between the graphs at two tiles by node name (`precision.corresponding_tensors`), and the
    sensitivity search groups nodes by module path (`precision.node_blocks`)."""
    counts: dict[tuple[str, str], int] = {}
    for node in model.graph.node:
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == _NAME_SCOPES), None) or []
        modules = [scope for scope in scopes[:-1] if scope]
        parts = [scope[len(parent) + 1 :] if parent and scope.startswith(parent + ".") else scope for parent, scope in zip(["", *modules], modules)]
        path = "/" + "".join(f"{part}/" for part in parts)
        count = counts.get((path, node.op_type), 0)
        counts[(path, node.op_type)] = count + 1
        node.name = f"{path}{node.op_type}" + (f"_{count}" if count else "")
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]


def plain_ops(model: onnx.ModelProto) -> None:
    """Rewrite what the dynamo exporter writes and its consumers do not take:

    - CastLike (how it casts a Python scalar to a tensor's type) becomes the Cast to the static
      target type, which onnxsim folds on constants (a CastLike on a constant it leaves, and the
      FP16 converter does not follow its target, which left FP32 Clip bounds on FP16 inputs);
    - an int32 GatherND index (advanced indexing with an int32 index: DAT gathers its bias table
      with one) gets a Cast to int64, the only index type GatherND takes;
    - SplitToSequence read by SequenceAt at constant positions (`chunk`, `split`: Restormer)
      becomes one Split: TensorRT parses no sequence ops.
    """
    graph = model.graph
    if not any(node.op_type in ("CastLike", "GatherND", "SplitToSequence") for node in graph.node):
        return
    types = tensor_types(model)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"})
    value_readers = readers(graph)
    split_outputs: dict[str, str] = {}  # SequenceAt output -> the Split output it becomes
    nodes = []
    for node in graph.node:
        if node.op_type == "SequenceAt" and node.output[0] in split_outputs:
            continue
        if node.op_type == "SplitToSequence":
            split = _sequence_split(node, types, constants, value_readers[node.output[0]], split_outputs)
            if split:
                nodes.extend(split)
                continue
        nodes.extend(_plain_node(node, types))
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = split_outputs.get(name, name)
    del graph.node[:]
    graph.node.extend(nodes)


def _plain_node(node: onnx.NodeProto, types: dict[str, TensorType]) -> list[onnx.NodeProto]:
    """`node` as plain ops: a CastLike as its Cast, an int32 GatherND index cast to int64 first."""
    if node.op_type == "CastLike":
        target = types[node.input[1]].elem_type
        del node.input[1:]
        node.op_type = "Cast"
        node.attribute.append(onnx.helper.make_attribute("to", target))
    elif node.op_type == "GatherND" and types[node.input[1]].elem_type == onnx.TensorProto.INT32:
        cast = onnx.helper.make_node("Cast", [node.input[1]], [f"{node.input[1]}_int64"], name=f"{node.name}_indices", to=onnx.TensorProto.INT64)
        node.input[1] = cast.output[0]
        return [cast, node]
    return [node]


def _sequence_split(
    node: onnx.NodeProto, types: dict[str, TensorType], constants: dict[str, np.ndarray], readers: list[onnx.NodeProto], split_outputs: dict[str, str]
) -> list[onnx.NodeProto] | None:
    """The Split a SplitToSequence amounts to (its sizes' Constant, then the Split), its SequenceAt
    readers' outputs mapped to the Split's in `split_outputs`; None where it is not that (other
    readers, computed positions)."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    axis, keepdims = attributes.get("axis", 0), attributes.get("keepdims", 1)
    if len(node.input) < 2 or node.input[1] not in constants or not keepdims:
        return None
    if not all(r.op_type == "SequenceAt" and r.input[1] in constants for r in readers):
        return None
    split = constants[node.input[1]]
    if split.ndim == 0:
        size, chunk = types[node.input[0]].shape[axis], int(split)
        sizes = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])
    else:
        sizes = [int(v) for v in split]
    outputs = [f"{node.output[0]}_{i}" for i in range(len(sizes))]
    for reader in readers:
        split_outputs[reader.output[0]] = outputs[int(constants[reader.input[1]]) % len(sizes)]
    sizes_name = f"{node.output[0]}_sizes"
    return [
        onnx.helper.make_node("Constant", [], [sizes_name], value=numpy_helper.from_array(np.array(sizes, dtype=np.int64))),
        onnx.helper.make_node("Split", [node.input[0], sizes_name], outputs, name=node.name, axis=axis),
    ]
