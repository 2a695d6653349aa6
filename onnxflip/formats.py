"""Storage formats: the number format in which a model's values sit in memory.

* ``float32`` is native: FlipBits acts on the tensors the kernels read.
* ``float16``, ``bfloat16`` and ``float64`` are emulated: the graph computes
  in float32, and every stored value is cast to the format where it is
  written, flipped there and cast back; weights and biases are held as
  initializers of that format.  ONNX Runtime's CPU provider has no bfloat16
  or float64 Conv, and runs a float16 graph's convolutions in float32 anyway
  (its optimiser removes the Casts and uses its float32 NCHWc kernels), so
  emulation is what the CPU computes in every case, made explicit.
* ``int8`` takes a QDQ model (``onnxflip quantize``) and flips the int8
  tensors between QuantizeLinear and DequantizeLinear, the int8 weights and
  the int32 quantised biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.runtime.contract import ElementType, element_type

__all__ = ["FORMATS", "StorageFormat", "is_qdq", "require_format_fits", "storage_format"]

_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class StorageFormat:
    name: str  # also the name of the element type FlipBits flips (for int8: of activations and weights)
    emulated: bool  # computed in float32, cast at each stored value

    @property
    def element_type(self) -> ElementType:
        return element_type(self.name)

    @property
    def dtype(self) -> ir.DataType:
        return ir.DataType(self.element_type.onnx_type)

    @property
    def numpy_dtype(self) -> np.dtype:
        return self.element_type.dtype


FORMATS = {
    name: StorageFormat(name, emulated)
    for name, emulated in (("float32", False), ("float16", True), ("bfloat16", True), ("float64", True), ("int8", False))
}


def storage_format(name: str) -> StorageFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise OnnxflipError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}") from None


def is_qdq(model: ir.Model) -> bool:
    """Whether the graph is quantised in QDQ form."""
    return any(node.op_type in _QDQ_OPS for node in model.graph)


def require_format_fits(model: ir.Model, fmt: StorageFormat) -> None:
    """Refuse a format the model cannot be injected in."""
    qdq = is_qdq(model)
    if fmt.name == "int8" and not qdq:
        raise OnnxflipError(
            "format int8 needs a QDQ-quantised model (QuantizeLinear/DequantizeLinear nodes); "
            "make one with `onnxflip quantize`"
        )
    if fmt.name != "int8" and qdq:
        raise OnnxflipError(f"the model is quantised (QDQ); use --format int8, not {fmt.name}")
