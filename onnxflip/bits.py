"""Bit fields of the element types FlipBits works on, as masks.

A field is named by a string: ``all``, ``sign``, ``exponent`` or ``mantissa``
for floating-point types; ``all``, ``sign``, ``low:K`` or ``high:K`` (the K
least or most significant bits) for integers; or given as an explicit mask
(an int, or a string such as ``0x7f80``).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from onnx import TensorProto

from onnxflip.errors import OnnxflipError

__all__ = ["FIELDS", "ElementType", "element_type", "field_mask", "mask_to_attribute"]

FIELDS = ("all", "sign", "exponent", "mantissa")


@dataclass(frozen=True)
class ElementType:
    """An element type's name, ONNX code, NumPy dtype and bit layout."""

    name: str
    onnx_type: int
    dtype: np.dtype
    width: int
    exponent_bits: int = 0
    mantissa_bits: int = 0

    @property
    def is_float(self) -> bool:
        return self.exponent_bits > 0

    @property
    def all_bits(self) -> int:
        return (1 << self.width) - 1


_TYPES = [
    ElementType("float16", TensorProto.FLOAT16, np.dtype(np.float16), 16, 5, 10),
    ElementType("bfloat16", TensorProto.BFLOAT16, np.dtype(ml_dtypes.bfloat16), 16, 8, 7),
    ElementType("float32", TensorProto.FLOAT, np.dtype(np.float32), 32, 8, 23),
    ElementType("float64", TensorProto.DOUBLE, np.dtype(np.float64), 64, 11, 52),
    ElementType("float8_e4m3fn", TensorProto.FLOAT8E4M3FN, np.dtype(ml_dtypes.float8_e4m3fn), 8, 4, 3),
    ElementType("float8_e5m2", TensorProto.FLOAT8E5M2, np.dtype(ml_dtypes.float8_e5m2), 8, 5, 2),
    ElementType("int8", TensorProto.INT8, np.dtype(np.int8), 8),
    ElementType("uint8", TensorProto.UINT8, np.dtype(np.uint8), 8),
    ElementType("int16", TensorProto.INT16, np.dtype(np.int16), 16),
    ElementType("int32", TensorProto.INT32, np.dtype(np.int32), 32),
]
_BY_NAME = {t.name: t for t in _TYPES}
_BY_ONNX = {t.onnx_type: t for t in _TYPES}
_BY_DTYPE = {t.dtype: t for t in _TYPES}


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


def field_mask(etype: ElementType | str | int | np.dtype, field: str | int = "all") -> int:
    """The mask of a named bit field (or an explicit mask, checked) for an element type."""
    t = etype if isinstance(etype, ElementType) else element_type(etype)
    if isinstance(field, (int, np.integer)) and not isinstance(field, bool):
        return _checked_mask(t, int(field))
    text = str(field).strip().lower()
    if text == "all":
        return t.all_bits
    if text == "sign":
        return 1 << (t.width - 1)
    if t.is_float and text == "exponent":
        return ((1 << t.exponent_bits) - 1) << t.mantissa_bits
    if t.is_float and text == "mantissa":
        return (1 << t.mantissa_bits) - 1
    if not t.is_float and text.startswith(("low:", "high:")):
        side, _, count = text.partition(":")
        k = _bit_count(count, t, text)
        return (1 << k) - 1 if side == "low" else ((1 << k) - 1) << (t.width - k)
    try:
        return _checked_mask(t, int(text, 0))
    except ValueError:
        pass
    names = "all, sign, exponent, mantissa" if t.is_float else "all, sign, low:K, high:K"
    raise OnnxflipError(f"unknown bit field {field!r} for {t.name}; use {names}, or a mask such as 0x7f")


def _bit_count(count: str, t: ElementType, text: str) -> int:
    if not count.isdigit() or not 1 <= int(count) <= t.width:
        raise OnnxflipError(f"bit field {text!r}: K must be a whole number from 1 to {t.width}")
    return int(count)


def _checked_mask(t: ElementType, mask: int) -> int:
    if mask <= 0 or mask & ~t.all_bits:
        raise OnnxflipError(f"mask {mask:#x} does not fit the {t.width} bits of {t.name}, or is empty")
    return mask


def mask_to_attribute(mask: int) -> int:
    """A mask as the signed 64-bit integer an ONNX attribute holds."""
    return mask - (1 << 64) if mask >= 1 << 63 else mask
