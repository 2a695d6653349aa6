"""Storage formats: the number format in which a model's values sit in memory.

* ``float32`` is native: FlipBits acts on the tensors the kernels read.
* ``float16``, ``bfloat16`` and ``float64`` store every value in the format:
  it is cast to the format where it is written, flipped there and cast back;
  weights and biases are held as initializers of that format.  How the graph
  computes between the stored values is the *compute* (:data:`COMPUTES`,
  ``--compute``):

  - ``native`` (the default) computes as the format computes
    (:mod:`onnxflip.graph.passes.compute_in_format`): float64 in float64
    throughout (the ops ONNX Runtime's CPU provider has no float64 kernel for
    written in float64 ops it has, :mod:`onnxflip.graph.passes.lower_float64`),
    so a flipped value up to 2^1023 stays finite; float16 and bfloat16 with
    every op's result rounded to the format, accumulated in float32 as GPU
    kernels do, so a result beyond the format's range overflows as it would.
  - ``float32`` is the emulation: computed in float32, the format met only
    where a value is stored (a float64 value beyond float32's range becomes
    inf there; a float16 sum beyond 65504 between two stored values does not).
* ``int8`` takes a quantised model and flips its stored integers as they are:
  in a QDQ model (``onnxflip quantize``, ONNX Runtime's QDQ quantiser) the
  int8 tensors between QuantizeLinear and DequantizeLinear, the int8 weights
  and the int32 quantised biases; in a model of integer operators
  (QOperator's QLinearConv/QLinearMatMul, ``quantize_dynamic``'s
  MatMulInteger) their int8/uint8 weights and activations, int32 biases and
  the float tensors they keep (dynamic quantisation's float biases).

A model may already store its values in a format (a float16 export, or a
model ``onnxflip convert`` wrote: its values pass through the format where
they are stored): then that format is native, its activations and parameters are flipped as
they are, and any other format is refused rather than mislabelled (convert
the float32 original instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.graph.stored import COMPUTE_OPS, all_nodes, quantised_form
from onnxflip.runtime.contract import ElementType, element_type

__all__ = [
    "COMPUTES",
    "COMPUTE_METADATA_KEY",
    "FORMATS",
    "FORMAT_METADATA_KEY",
    "StorageFormat",
    "converted_compute",
    "converted_format",
    "describe_compute",
    "is_qdq",
    "is_quantised",
    "model_format",
    "native_float_type",
    "require_format_fits",
    "storage_format",
]

_BFLOAT16_CAST_OPSET = 13  # the first opset whose Cast takes bfloat16
FORMAT_METADATA_KEY = "onnxflip.format"  # the format `onnxflip convert` stored a model's values in
COMPUTE_METADATA_KEY = "onnxflip.compute"  # the compute `onnxflip convert` wrote a model's graph in
COMPUTES = ("native", "float32")  # as the format computes; float32 with the format met where values are stored


@dataclass(frozen=True)
class StorageFormat:
    name: str  # also the name of the element type FlipBits flips (for int8: of activations and weights)
    emulated: bool  # a float32 graph stores it through a cast at each site (how it computes: COMPUTES)

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
    """Whether the graph is quantised in QDQ form (QuantizeLinear/DequantizeLinear around float operators)."""
    return quantised_form(model.graph) == "qdq"


def is_quantised(model: ir.Model) -> bool:
    """Whether the graph is quantised, in QDQ form or with integer operators."""
    return quantised_form(model.graph) is not None


_FLOAT_TYPES = {f.dtype: f for f in FORMATS.values() if f.name != "int8"}


def native_float_type(model: ir.Model) -> ir.DataType:
    """The float type the model computes in: that of its first Conv/Gemm/MatMul (float32 if none is known)."""
    for node in all_nodes(model.graph):
        if node.op_type not in COMPUTE_OPS:
            continue
        for value in (node.outputs[0], *node.inputs[:2]):
            if value is not None and value.dtype in _FLOAT_TYPES:
                return value.dtype
    return ir.DataType.FLOAT


def converted_format(model: ir.Model) -> str | None:
    """The format ``convert`` stored the model's values in, where that is not float32 (a float32 conversion only
    folds BatchNorm); None otherwise."""
    converted = model.metadata_props.get(FORMAT_METADATA_KEY, "float32")
    return None if converted == "float32" else converted


def converted_compute(model: ir.Model) -> str | None:
    """The compute ``convert`` wrote the model's graph in (None for a model it did not write; a model it wrote
    before the compute was recorded computes in float32)."""
    if converted_format(model) is None:
        return model.metadata_props.get(COMPUTE_METADATA_KEY)
    return model.metadata_props.get(COMPUTE_METADATA_KEY, "float32")


def written_compute(model: ir.Model, fmt: str) -> str | None:
    """The compute of a model ``convert`` wrote in ``fmt`` (the only one it computes); None for any other."""
    return converted_compute(model) if converted_format(model) == fmt else None


def describe_compute(fmt: str, compute: str) -> str:
    """How a format's values are computed, in words (results and summaries say it)."""
    if fmt in ("float32", "int8"):
        return f"{fmt}, as stored" if fmt == "float32" else "int8 as ONNX Runtime's quantised kernels compute it"
    if compute == "float32":
        return f"float32 (emulated: values stored in {fmt} where written, computed in float32 between)"
    if fmt == "float64":
        return "float64 throughout (native)"
    return f"{fmt} (native: every op's result rounded to {fmt}, sums accumulated in float32 as GPU kernels do)"


def model_format(model: ir.Model) -> str:
    """The format a clean model stores its values in: the one ``convert`` stored it in, int8 for a quantised
    graph, else the float type it computes in."""
    converted = converted_format(model)
    if converted is not None:
        return converted
    return "int8" if is_quantised(model) else _FLOAT_TYPES[native_float_type(model)].name


def require_format_fits(model: ir.Model, fmt: StorageFormat) -> StorageFormat:
    """Refuse a format the model cannot be injected in; the format as applied to this model.

    For a float32 model, the format itself.  For a model that computes in
    another float type, only that type's format fits, and it is native (not
    emulated): the values are flipped as stored.
    """
    converted = converted_format(model)
    if converted is not None:  # its values already pass through the format where they are stored
        if fmt.name != converted:
            raise OnnxflipError(f"the model is converted to {converted} (onnxflip convert): its values are stored in "
                                f"{converted}; use --format {converted}, or the original model for {fmt.name}")
        return StorageFormat(converted, False)
    qdq = is_quantised(model)
    native = native_float_type(model)
    if not qdq and native != ir.DataType.FLOAT:
        stored = _FLOAT_TYPES[native]
        if fmt.name != stored.name:
            raise OnnxflipError(
                f"the model stores its values in {stored.name}; use --format {stored.name}, or inject a "
                f"float32 copy of the model to study {fmt.name}"
            )
        return StorageFormat(stored.name, False)
    if fmt.name == "int8" and not qdq:
        raise OnnxflipError(
            "format int8 needs a quantised model (QDQ, QOperator or dynamic); make one with `onnxflip quantize`"
        )
    if fmt.name != "int8" and qdq:
        raise OnnxflipError(f"the model is quantised; use --format int8, not {fmt.name}")
    opset = model.opset_imports.get("", 0)
    if fmt.emulated and fmt.dtype == ir.DataType.BFLOAT16 and opset < _BFLOAT16_CAST_OPSET:
        raise OnnxflipError(f"format bfloat16 needs ONNX opset {_BFLOAT16_CAST_OPSET} or newer (Cast to bfloat16); "
                            f"the model uses opset {opset}")
    return fmt
