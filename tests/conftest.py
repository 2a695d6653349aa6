"""Shared helpers: FlipBits sessions over one node, and bit counting."""

from __future__ import annotations

import numpy as np
import pytest

from onnxflip import make_session
from onnxflip.bits import element_type, field_mask
from onnxflip.flip import flipbits_node_model, run_flipbits_session

TYPE_NAMES = [
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "float8_e4m3fn",
    "float8_e5m2",
    "int8",
    "uint8",
    "int16",
    "int32",
]


def raw(array: np.ndarray) -> np.ndarray:
    """The array's bits as unsigned integers of the same width."""
    return np.ascontiguousarray(array).view(np.dtype(f"u{array.dtype.itemsize}"))


def popcount(bits: np.ndarray) -> int:
    return int(np.bitwise_count(bits).sum())


def random_array(type_name: str, size: int, seed: int = 0) -> np.ndarray:
    """Random bit patterns of a type (NaNs and infinities included for floats)."""
    etype = element_type(type_name)
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << etype.width, size=size, dtype=np.uint64)
    return bits.astype(f"u{etype.width // 8}").view(etype.dtype)


class FlipBitsNode:
    """A one-node FlipBits session whose probabilities and seed are inputs."""

    def __init__(self, type_name: str, *, bits="all", stream=0, randomness="fixed", nonfinite="keep", threads=None):
        etype = element_type(type_name)
        model = flipbits_node_model(
            etype, mask=field_mask(etype, bits), stream=stream, randomness=randomness, nonfinite=nonfinite
        )
        self.mask = field_mask(etype, bits)
        self.session = make_session(model.SerializeToString(), threads=threads)

    def __call__(self, x: np.ndarray, *, p01: float = 0.0, p10: float = 0.0, seed: int = 0) -> np.ndarray:
        return run_flipbits_session(self.session, x, p01=p01, p10=p10, seed=seed)


@pytest.fixture(params=TYPE_NAMES)
def type_name(request) -> str:
    return request.param
