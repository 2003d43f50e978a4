"""Inferred tensor types of an ONNX graph, the one place the export's passes get them from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx


@dataclass(frozen=True)
class TensorType:
    elem_type: int  # onnx.TensorProto data type
    shape: tuple[int | None, ...] | None  # None: no shape inferred; a None dim is not static

    @property
    def static(self) -> bool:
        return self.shape is not None and all(d is not None for d in self.shape)

    @property
    def elements(self) -> int:
        """Element count of a static tensor."""
        return int(np.prod(self.shape)) if self.static else 0

    @property
    def nbytes(self) -> int:
        return self.elements * onnx.helper.tensor_dtype_to_np_dtype(self.elem_type).itemsize if self.elem_type else 0


# Shape inference reads the values of small constants only (a Reshape's shape, a Resize's
# scales): larger float initializers are handed to it as typed graph inputs, without their data.
_WEIGHT_ELEMENTS = 64
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE})


@dataclass(frozen=True)
class HeldWeights:
    """What `without_weights` took out of a model, for `with_weights` to put back."""

    initializers: list[onnx.TensorProto]
    added_inputs: set[str]  # the typed inputs that stood for them
    order: list[str]  # every initializer's name, in the model's order


def without_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, HeldWeights]:
    """A copy of `model` whose large float initializers are typed graph inputs without their data,
    for ONNX's passes that serialize the model they are given (shape inference, the version
    converter): IPT's 460 MB of weights cost 4.8 s a shape inference, 0.01 s without. Returns
    the copy and what `with_weights` needs to put the weights back."""
    light = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if model.HasField(field):  # onnx's messages are proto2: a field set empty is still written
            setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.metadata_props.extend(model.metadata_props)
    light.functions.extend(model.functions)
    for field in ("name", "doc_string"):
        if model.graph.HasField(field):
            setattr(light.graph, field, getattr(model.graph, field))
    light.graph.node.extend(model.graph.node)
    light.graph.input.extend(model.graph.input)
    light.graph.output.extend(model.graph.output)
    inputs = {value.name for value in model.graph.input}
    held = HeldWeights([], set(), [init.name for init in model.graph.initializer])
    for init in model.graph.initializer:
        if init.data_type in _FLOAT_TYPES and int(np.prod(init.dims)) > _WEIGHT_ELEMENTS:
            held.initializers.append(init)
            if init.name not in inputs:  # an older graph lists its initializers as inputs too
                light.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
                held.added_inputs.add(init.name)
        else:
            light.graph.initializer.append(init)
    return light, held


def with_weights(light: onnx.ModelProto, held: HeldWeights) -> onnx.ModelProto:
    """`light` (a pass's result on `without_weights`' copy), changed in place: the weights back
    as initializers where they stood, the inputs that stood for them gone."""
    kept = [value for value in light.graph.input if value.name not in held.added_inputs]
    del light.graph.input[:]
    light.graph.input.extend(kept)
    by_name = {init.name: init for init in [*light.graph.initializer, *held.initializers]}
    position = {name: index for index, name in enumerate(held.order)}
    # initializers a pass added follow the model's own
    ordered = sorted(by_name.values(), key=lambda init: position.get(init.name, len(position)))
    del light.graph.initializer[:]
    light.graph.initializer.extend(ordered)
    return light


def _inferred_without_weights(model: onnx.ModelProto, *, strict: bool) -> onnx.GraphProto:
    """The graph after ONNX shape inference, run on `without_weights`' copy: its large float
    initializers are typed inputs in the graph returned."""
    light, _ = without_weights(model)
    return onnx.shape_inference.infer_shapes(light, strict_mode=strict).graph


def with_inferred_shapes(model: onnx.ModelProto, *, strict: bool = False) -> onnx.ModelProto:
    """`model`, changed in place, with the value_info and output types shape inference gives
    (what onnx.shape_inference.infer_shapes returns, without taking the weights through it)."""
    inferred = _inferred_without_weights(model, strict=strict)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.output)
    return model


def tensor_types(model: onnx.ModelProto, *, strict: bool = False) -> dict[str, TensorType]:
    """Every named tensor's type after shape inference: graph inputs and outputs, intermediate
    values and initializers."""
    inferred = _inferred_without_weights(model, strict=strict)
    types: dict[str, TensorType] = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim) if tensor.HasField("shape") else None
        types[value.name] = TensorType(tensor.elem_type, shape)
    for init in model.graph.initializer:
        types[init.name] = TensorType(init.data_type, tuple(init.dims))
    return types
