"""The FlipBits operator's contract, as the library states it: element types, enums, attributes, inputs,
and the library's C entry points (FlipBits on host or device memory without ONNX Runtime) with their parameters.

Built once from :func:`onnxflip.runtime.library.operator_contract` (the
JSON the library exports from ``custom_ops/contract.h``); every other part
of onnxflip asks this module, so Python never mirrors a C++ table.  The
NumPy dtype of a type comes from its ONNX code.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from onnxflip.errors import OnnxflipError
from onnxflip.runtime.library import load_library, operator_contract

__all__ = [
    "ATTRIBUTE_DEFAULTS",
    "COUNT_NAMES",
    "CPU_ENTRY",
    "CUDA_ENTRY",
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
    "EntryPoint",
    "element_type",
    "entry_values",
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

# The C types the contract names for the entries' parameters (pointers travel as addresses).
_C_TYPES = {"const void*": ctypes.c_void_p, "void*": ctypes.c_void_p, "int64_t*": ctypes.c_void_p,
            "int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
            "uint64_t": ctypes.c_uint64, "double": ctypes.c_double}


@dataclass(frozen=True)
class EntryPoint:
    """A C entry point of the library: its name and its parameters (name, C type) in the order of its signature.
    Callers pass values by parameter name, so Python never mirrors the signature by position."""

    name: str
    parameters: tuple[tuple[str, str], ...]

    @functools.cached_property
    def function(self):
        """The entry bound with ctypes; None where the library lacks it (the CUDA entry of a CPU-only build)."""
        try:
            fn = getattr(load_library(), self.name)
        except AttributeError:
            return None
        if not self.parameters:
            raise OnnxflipError(f"the FlipBits library does not describe its {self.name} parameters (built by an "
                                "older onnxflip); rebuild it")
        fn.restype = ctypes.c_int
        fn.argtypes = [_C_TYPES[c_type] for _, c_type in self.parameters]
        return fn

    def arguments(self, values: dict[str, object]) -> list[object]:
        """The entry's arguments in the order the contract lists its parameters, from a value per parameter name."""
        missing = [name for name, _ in self.parameters if name not in values]
        if missing:
            raise OnnxflipError(f"the FlipBits library's {self.name} takes {', '.join(missing)}, which this onnxflip "
                                "does not give; reinstall onnxflip and its library together")
        return [values[name] for name, _ in self.parameters]

    def call(self, values: dict[str, object]) -> int:
        """Call the entry with a value per parameter name; returns its status code."""
        if self.function is None:
            raise OnnxflipError(f"the FlipBits library has no {self.name} (it was built without it)")
        return self.function(*self.arguments(values))


def _entry(key: str, name: str) -> EntryPoint:
    # A library older than the entry's description lists no parameters (it then has to be rebuilt for the entry).
    entry = _CONTRACT.get(key, {"name": name, "parameters": []})
    return EntryPoint(entry["name"], tuple((p["name"], p["c_type"]) for p in entry["parameters"]))


# onnxflip_cpu_flip_bits: the CPU kernel on host memory; onnxflip_cuda_flip_bits: the CUDA kernel on device memory.
CPU_ENTRY: EntryPoint = _entry("cpu_entry", "onnxflip_cpu_flip_bits")
CUDA_ENTRY: EntryPoint = _entry("cuda_entry", "onnxflip_cuda_flip_bits")

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


def entry_values(x_ptr: int, y_ptr: int, count: int, onnx_type: int, *, p01: float, p10: float, seed: int,
                 stream: int = 0, run: int = 0, mask: int, nonfinite: str = "keep", s0: float = 0.0, s1: float = 0.0,
                 stuck_seed: int | None = None, ecc: str = "none", on_detected: str = "keep",
                 counts_ptr: int = 0) -> dict[str, object]:
    """The values the flip entries (:data:`CPU_ENTRY`, :data:`CUDA_ENTRY`) share, by parameter name, with the enum
    settings as the library's codes; ``stuck_seed`` None keys the stuck cells by ``seed``, as the operator does."""
    return {"x": x_ptr, "y": y_ptr, "count": count, "onnx_type": onnx_type, "p01": p01, "p10": p10, "seed": seed,
            "stream_id": stream, "run": run, "mask": mask, "nonfinite": enum_code("nonfinite", nonfinite), "s0": s0,
            "s1": s1, "stuck_seed": seed if stuck_seed is None else stuck_seed, "ecc": enum_code("ecc", ecc),
            "on_detected": enum_code("on_detected", on_detected), "counts": counts_ptr or None}
