"""``flip_bits``: the FlipBits kernel applied to a NumPy array, through ONNX Runtime."""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxflip.bits import field_mask, mask_to_attribute
from onnxflip.errors import OnnxflipError
from onnxflip.runtime.contract import (
    DOMAIN,
    INPUT_NAMES,
    INPUTS,
    NONFINITE_POLICIES,
    OP_TYPE,
    OP_VERSION,
    ElementType,
    element_type,
)
from onnxflip.runtime.session import IR_VERSION, make_session

__all__ = [
    "flip_bits",
    "flipbits_node_model",
    "resolve_probabilities",
    "run_flipbits_session",
]

ONNX_OPSET = 21


def resolve_probabilities(p: float | None, p01: float | None, p10: float | None) -> tuple[float, float]:
    """(p01, p10) from either a symmetric ``p`` or the two directions (a missing one is 0)."""
    if p is not None and (p01 is not None or p10 is not None):
        raise OnnxflipError("give either p, or p01 and/or p10, not both")
    pair = (p, p) if p is not None else (p01 or 0.0, p10 or 0.0)
    for name, value in zip(("p01", "p10"), pair):
        if not (isinstance(value, (int, float, np.floating)) and 0.0 <= float(value) <= 1.0) or math.isnan(value):
            raise OnnxflipError(f"{name if p is None else 'p'} = {value} is not a probability in [0, 1]")
    return float(pair[0]), float(pair[1])


def flipbits_node_model(etype: ElementType, *, mask: int, stream: int, randomness: str, nonfinite: str) -> onnx.ModelProto:
    """A one-node model Y = FlipBits(X, p01, p10, seed) for one element type."""
    node = helper.make_node(
        OP_TYPE,
        list(INPUT_NAMES),
        ["Y"],
        domain=DOMAIN,
        bitmask=mask_to_attribute(mask),
        stream=stream,
        randomness=randomness,
        nonfinite=nonfinite,
    )
    graph = helper.make_graph(
        [node],
        "flip_bits",
        [
            helper.make_tensor_value_info(name, etype.onnx_type, None) if code is None
            else helper.make_tensor_value_info(name, code, [])
            for name, code in INPUTS
        ],
        [helper.make_tensor_value_info("Y", etype.onnx_type, None)],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, OP_VERSION)],
        ir_version=IR_VERSION,
    )


@functools.lru_cache(maxsize=64)
def _session(type_name: str, mask: int, stream: int, randomness: str, nonfinite: str, threads: int | None) -> ort.InferenceSession:
    model = flipbits_node_model(element_type(type_name), mask=mask, stream=stream, randomness=randomness, nonfinite=nonfinite)
    return make_session(model, threads=threads)


def flip_bits(
    array: np.ndarray,
    *,
    p: float | None = None,
    p01: float | None = None,
    p10: float | None = None,
    bits: str | int = "all",
    seed: int = 0,
    stream: int = 0,
    nonfinite: str = "keep",
    threads: int | None = None,
) -> np.ndarray:
    """A copy of ``array`` with bits flipped as FlipBits flips them, in ``fixed`` mode.

    ``p`` flips every allowed bit with that probability; ``p01``/``p10`` give
    the 0->1 and 1->0 probabilities separately.  ``bits`` names the field that
    may change (see :mod:`onnxflip.bits`).  The result depends only on the
    array, the settings, ``seed`` and ``stream``, never on ``threads``.
    """
    arr = np.asarray(array)
    etype = element_type(arr.dtype)
    prob01, prob10 = resolve_probabilities(p, p01, p10)
    if nonfinite not in NONFINITE_POLICIES:
        raise OnnxflipError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, not {nonfinite!r}")
    session = _session(etype.name, field_mask(etype, bits), int(stream), "fixed", nonfinite, threads)
    return run_flipbits_session(session, arr, p01=prob01, p10=prob10, seed=seed)


def run_flipbits_session(session: ort.InferenceSession, array: np.ndarray, *, p01: float, p10: float, seed: int) -> np.ndarray:
    """Run a session of :func:`flipbits_node_model` on an array of any supported type."""
    etype = element_type(array.dtype)
    source = np.ascontiguousarray(array)
    out = np.empty_like(source)
    binding = session.io_binding()
    x_name, p01_name, p10_name, seed_name = INPUT_NAMES
    binding.bind_ortvalue_input(x_name, _wrap(source, etype))
    binding.bind_cpu_input(p01_name, np.array(p01, dtype=np.float32))
    binding.bind_cpu_input(p10_name, np.array(p10, dtype=np.float32))
    binding.bind_cpu_input(seed_name, np.array(seed, dtype=np.int64))
    binding.bind_ortvalue_output("Y", _wrap(out, etype))
    session.run_with_iobinding(binding)
    return out


def _wrap(array: np.ndarray, etype: ElementType) -> ort.OrtValue:
    """An OrtValue over the array's own memory; bfloat16 and float8 travel as raw integers."""
    raw = array.view(np.dtype(f"u{etype.width // 8}"))
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, etype.onnx_type)
