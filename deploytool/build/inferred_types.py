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


def tensor_types(model: onnx.ModelProto, *, strict: bool = False) -> dict[str, TensorType]:
    """Every named tensor's type after shape inference: graph inputs and outputs, intermediate
    values and initializers."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=strict)
    types: dict[str, TensorType] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim) if tensor.HasField("shape") else None
        types[value.name] = TensorType(tensor.elem_type, shape)
    for init in model.graph.initializer:
        types[init.name] = TensorType(init.data_type, tuple(init.dims))
    return types
