"""Bit fields of the element types FlipBits works on, as masks.

A field is named by a string: ``all``, ``sign``, ``exponent`` or ``mantissa``
for floating-point types; ``all``, ``sign``, ``low:K`` or ``high:K`` (the K
least or most significant bits) for integers; or given as an explicit mask
(an int, or a string such as ``0x7f80``).
"""

from __future__ import annotations

import numpy as np

from onnxflip.errors import OnnxflipError
from onnxflip.runtime.contract import ElementType, element_type

# ElementType and element_type live in the operator's contract; re-exported for callers of onnxflip.bits.
__all__ = ["FIELDS", "ElementType", "element_type", "field_mask", "mask_to_attribute"]

FIELDS = ("all", "sign", "exponent", "mantissa")


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
