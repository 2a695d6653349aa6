"""The FlipBits operator's contract, as the library states it: element types, enums, attributes, inputs,
and the parameters of the library's CUDA entry point.

Built once from :func:`onnxflip.runtime.library.operator_contract` (the
JSON the library exports from ``custom_ops/contract.h``); every other part
of onnxflip asks this module, so Python never mirrors a C++ table.  The
NumPy dtype of a type comes from its ONNX code.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from onnxflip.errors import OnnxflipError
from onnxflip.runtime.library import operator_contract

__all__ = [
    "ATTRIBUTE_DEFAULTS",
    "COUNT_NAMES",
    "CUDA_ENTRY_NAME",
    "CUDA_ENTRY_PARAMETERS",
    "DOMAIN",
    "ECC_CODES",
    "ECC_MODES",
    "ELEMENT_TYPES",
    "INPUTS",
    "INPUT_NAMES",
    "NONFINITE_POLICIES",
    "ON_DETECTED",
    "OP_TYPE",
    "OP_VERSION",
    "OUTPUTS",
    "RANDOMNESS",
    "ElementType",
    "element_type",
    "enum_code",
    "is_flipbits",
]


@dataclass(frozen=True)
class ElementType:
    """An element type FlipBits takes: name, ONNX code, NumPy dtype and bit layout."""

    name: str
    onnx_type: int
    dtype: np.dtype
    width: int
    exponent_bits: int = 0
    mantissa_bits: int = 0
    has_inf: bool = False

    @property
    def is_float(self) -> bool:
        return self.exponent_bits > 0

    @property
    def all_bits(self) -> int:
        return (1 << self.width) - 1


_CONTRACT = operator_contract()

DOMAIN: str = _CONTRACT["domain"]
OP_TYPE: str = _CONTRACT["op_type"]
OP_VERSION: int = _CONTRACT["version"]
ELEMENT_TYPES: tuple[ElementType, ...] = tuple(
    ElementType(t["name"], t["onnx_type"], np.dtype(tensor_dtype_to_np_dtype(t["onnx_type"])), t["width"],
                t["exponent_bits"], t["mantissa_bits"], t["has_inf"])
    for t in _CONTRACT["element_types"]
)
_ENUMS: dict[str, dict[str, int]] = _CONTRACT["enums"]
RANDOMNESS: tuple[str, ...] = tuple(_ENUMS["randomness"])
NONFINITE_POLICIES: tuple[str, ...] = tuple(_ENUMS["nonfinite"])
ECC_MODES: tuple[str, ...] = tuple(_ENUMS["ecc"])
ON_DETECTED: tuple[str, ...] = tuple(_ENUMS["on_detected"])
# The counts output's entries, in index order: words read corrected, detected (not corrected), silently wrong.
COUNT_NAMES: tuple[str, ...] = tuple(sorted(_ENUMS["counts"], key=_ENUMS["counts"].get))
# ECC mode -> element width -> (data bits, check bits) of the word a value is stored in.
ECC_CODES = MappingProxyType({
    mode: MappingProxyType({int(width): tuple(bits) for width, bits in widths.items()})
    for mode, widths in _CONTRACT["ecc_codes"].items()
})
ATTRIBUTE_DEFAULTS = MappingProxyType({a["name"]: a["default"] for a in _CONTRACT["attributes"]})
# (name, ONNX type code, or None for the element type T of X), in input order.
INPUTS: tuple[tuple[str, int | None], ...] = tuple(
    (i["name"], None if i["onnx_type"] == "T" else i["onnx_type"]) for i in _CONTRACT["inputs"]
)
INPUT_NAMES: tuple[str, ...] = tuple(name for name, _ in INPUTS)
OUTPUTS: tuple[tuple[str, int | None], ...] = tuple(
    (o["name"], None if o["onnx_type"] == "T" else o["onnx_type"]) for o in _CONTRACT["outputs"]
)
# The C entry point that runs the kernel on device memory: its name, and its parameters (name, C type) in order.
# Empty for a library older than the entry's description (it then has to be rebuilt for the entry).
_CUDA_ENTRY: dict = _CONTRACT.get("cuda_entry", {"name": "onnxflip_cuda_flip_bits", "parameters": []})
CUDA_ENTRY_NAME: str = _CUDA_ENTRY["name"]
CUDA_ENTRY_PARAMETERS: tuple[tuple[str, str], ...] = tuple((p["name"], p["c_type"]) for p in _CUDA_ENTRY["parameters"])

_BY_NAME = {t.name: t for t in ELEMENT_TYPES}
_BY_ONNX = {t.onnx_type: t for t in ELEMENT_TYPES}
_BY_DTYPE = {t.dtype: t for t in ELEMENT_TYPES}


def element_type(key: str | int | np.dtype | type) -> ElementType:
    """Look up an element type by name, ONNX type code or NumPy dtype."""
    found = None
    if isinstance(key, str) and key in _BY_NAME:
        found = _BY_NAME[key]
    elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        found = _BY_ONNX.get(int(key))
    else:
        try:
            found = _BY_DTYPE.get(np.dtype(key))
        except TypeError:
            found = None
    if found is None:
        raise OnnxflipError(f"FlipBits does not support element type {key!r}; supported: {', '.join(_BY_NAME)}")
    return found


def is_flipbits(node) -> bool:
    """Whether a graph node (onnx_ir's or ONNX's) is the FlipBits operator."""
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def enum_code(attribute: str, name: str) -> int:
    """The code the library gives a value of an enum attribute (``randomness``, ``nonfinite``, ``ecc``,
    ``on_detected``)."""
    codes = _ENUMS[attribute]
    if name not in codes:
        raise OnnxflipError(f"{attribute} must be one of {', '.join(codes)}, not {name!r}")
    return codes[name]
