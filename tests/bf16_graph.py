"""A BF16 deploy graph made the way the plan's interface describes it, for tests of the runtimes.

`model_bf16.onnx` keeps `model.onnx`'s node names; the FP32 islands compute in float32, every
other node in bfloat16 (weights bfloat16), Cast nodes at the boundaries, graph input and output
float32. Made here from FP16's conversion with FLOAT16 retyped to BFLOAT16 and the weights
rounded from their FP32 values (not from FP16 ones, which would lose FP16's range).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from deploytool.build import precision
from deploytool.runtime.fileio import sha256_file
from deploytool.runtime.manifest import BF16_FILE, FP32_FILE, FileRecord, read_manifest

# normalisations and softmax, by op: the islands a BF16 plan keeps at the least
NORMALISATION_OPS = ("ReduceMean", "Pow", "Sqrt", "Div", "Softmax", "LayerNormalization", "Erf")


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def _retype_value_infos(graph: onnx.GraphProto) -> None:
    for info in [*graph.input, *graph.output, *graph.value_info]:
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type == TensorProto.FLOAT16:
            tensor_type.elem_type = TensorProto.BFLOAT16


def _retype_tensor(tensor: onnx.TensorProto, fp32_values: np.ndarray | None) -> None:
    values = fp32_values if fp32_values is not None else numpy_helper.to_array(tensor).astype(np.float32)
    tensor.ClearField("int32_data")
    tensor.data_type = TensorProto.BFLOAT16
    tensor.raw_data = to_bfloat16_bits(values).tobytes()


def _retype_nodes(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.BFLOAT16
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT16:
                _retype_tensor(attribute.t, None)


def bf16_graph(model: onnx.ModelProto, fp32_nodes: Iterable[str]) -> onnx.ModelProto:
    """`model` (FP32) in BF16 except `fp32_nodes` and the normalisation/softmax ops."""
    prepared = precision.prepare_conversion(model)
    fp32_weights = {init.name: numpy_helper.to_array(init) for init in prepared.graph.initializer}
    islands = set(fp32_nodes) | {node.name for node in prepared.graph.node if node.op_type in NORMALISATION_OPS}
    converted = precision.convert(prepared, islands, prepared=True)
    graph = converted.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT16:
            _retype_tensor(init, fp32_weights.get(init.name))
    _retype_value_infos(graph)
    _retype_nodes(graph)
    return converted


def add_bf16_graph(export_dir: Path, fp32_nodes: Iterable[str] = ()) -> Path:
    """Write `model_bf16.onnx` into an export and record it in the manifest's files."""
    model = onnx.load(export_dir / FP32_FILE)
    out = export_dir / BF16_FILE
    onnx.save(bf16_graph(model, fp32_nodes), out)
    manifest = read_manifest(export_dir)
    record = FileRecord(sha256=sha256_file(out), bytes=out.stat().st_size)
    dataclasses.replace(manifest, files={**manifest.files, BF16_FILE: record}).write(export_dir)
    return out


def export_tiny_bf16(model_id: str, out_dir: Path) -> Path:
    """A tiny export of `model_id` with its BF16 graph recorded (no FP16 graph)."""
    from tests.helpers import export_tiny

    export_tiny(model_id, out_dir, fp16=False)
    add_bf16_graph(out_dir)
    return out_dir
