"""``flip_bits``: the FlipBits kernel applied to a NumPy array, through ONNX Runtime."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnx.helper import tensor_dtype_to_np_dtype

from onnxflip.bits import field_mask, mask_to_attribute
from onnxflip.faults import FaultModel, WordCounts, resolve_probabilities, stored_words
from onnxflip.runtime.contract import (
    COUNT_NAMES,
    DOMAIN,
    INPUT_NAMES,
    INPUTS,
    OP_TYPE,
    OP_VERSION,
    OUTPUTS,
    ElementType,
    element_type,
)
from onnxflip.runtime.session import IR_VERSION, make_session

__all__ = [
    "as_ortvalue",
    "flip_bits",
    "flipbits_node_model",
    "run_flipbits_session",
]

ONNX_OPSET = 21


def flipbits_node_model(etype: ElementType, *, mask: int, stream: int, randomness: str, nonfinite: str,
                        ecc: str = "none", on_detected: str = "keep", counts: bool = False) -> onnx.ModelProto:
    """A one-node model Y = FlipBits(X, p01, p10, seed, s0, s1) for one element type; with ``counts``, the
    node's second output (the words read corrected, detected and silently wrong) is a graph output too."""
    outputs = [name for name, _ in OUTPUTS][: 2 if counts else 1]
    node = helper.make_node(
        OP_TYPE,
        list(INPUT_NAMES),
        outputs,
        domain=DOMAIN,
        bitmask=mask_to_attribute(mask),
        stream=stream,
        randomness=randomness,
        nonfinite=nonfinite,
        ecc=ecc,
        on_detected=on_detected,
    )
    graph = helper.make_graph(
        [node],
        "flip_bits",
        [  # X of any shape; the controls are scalars, or empty for "absent"
            helper.make_tensor_value_info(name, etype.onnx_type if code is None else code, None)
            for name, code in INPUTS
        ],
        [
            helper.make_tensor_value_info(name, etype.onnx_type, None) if code is None
            else helper.make_tensor_value_info(name, code, [len(COUNT_NAMES)])
            for name, code in OUTPUTS[: len(outputs)]
        ],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, OP_VERSION)],
        ir_version=IR_VERSION,
    )


@functools.lru_cache(maxsize=64)
def _session(type_name: str, mask: int, stream: int, randomness: str, nonfinite: str, ecc: str, on_detected: str,
             counts: bool, threads: int | None) -> ort.InferenceSession:
    model = flipbits_node_model(element_type(type_name), mask=mask, stream=stream, randomness=randomness,
                                nonfinite=nonfinite, ecc=ecc, on_detected=on_detected, counts=counts)
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
    s0: float = 0.0,
    s1: float = 0.0,
    stuck_seed: int | None = None,
    ecc: str = "none",
    on_detected: str = "keep",
    return_counts: bool = False,
    threads: int | None = None,
) -> np.ndarray | tuple[np.ndarray, WordCounts]:
    """A copy of ``array`` with the faults FlipBits applies, in ``fixed`` mode.

    ``p`` flips every allowed bit with that probability; ``p01``/``p10`` give
    the 0->1 and 1->0 probabilities separately.  ``bits`` names the field that
    may change (see :mod:`onnxflip.bits`; the mask 0: none, a site protected whole).  ``s0``/``s1`` stick cells at 0/1
    (after the flips), the same cells for the same ``stuck_seed`` (default:
    ``seed``) and ``stream``; ``ecc`` (``none``, ``secded``, ``secded64``) stores the
    values in SECDED words, and ``on_detected`` (``keep``, ``zero``) says what
    a detected, uncorrectable word reads (see :mod:`onnxflip.faults`).  With
    ``return_counts``, returns ``(array, WordCounts)``.  The result depends
    only on the array, the settings, ``seed`` and ``stream``, never on
    ``threads``.
    """
    arr = np.asarray(array)
    etype = element_type(arr.dtype)
    prob01, prob10 = resolve_probabilities(p, p01, p10)
    FaultModel(p01=prob01, p10=prob10, nonfinite=nonfinite, s0=s0, s1=s1, ecc=ecc, on_detected=on_detected)  # checks
    words = stored_words(ecc, etype, arr.size)  # checks that ecc fits the type
    mask = 0 if isinstance(bits, int) and bits == 0 else field_mask(etype, bits)  # 0: a site protected whole
    session = _session(etype.name, mask, int(stream), "fixed", nonfinite, ecc, on_detected,
                       bool(return_counts), threads)
    out = run_flipbits_session(session, arr, p01=prob01, p10=prob10, seed=seed, s0=float(s0), s1=float(s1),
                               stuck_seed=stuck_seed)
    if not return_counts:
        return out
    flipped, counts = out
    return flipped, WordCounts.from_output(counts, words=words)


def run_flipbits_session(session: ort.InferenceSession, array: np.ndarray, *, p01: float, p10: float, seed: int,
                         s0: float = 0.0, s1: float = 0.0,
                         stuck_seed: int | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Run a session of :func:`flipbits_node_model` on an array of any supported type; returns Y, or
    (Y, counts) when the model has the counts output.  ``stuck_seed`` None binds an empty stuck_seed: the
    stuck cells follow ``seed``."""
    source = np.ascontiguousarray(array)
    out = np.empty_like(source)
    binding = session.io_binding()
    x_name = INPUT_NAMES[0]
    binding.bind_ortvalue_input(x_name, as_ortvalue(source))
    stuck = np.zeros(0) if stuck_seed is None else stuck_seed  # empty: absent
    for (name, code), value in zip(INPUTS[1:], (p01, p10, seed, s0, s1, stuck), strict=True):
        binding.bind_cpu_input(name, np.array(value, dtype=tensor_dtype_to_np_dtype(code)))
    y_name, counts_name = (name for name, _ in OUTPUTS)
    binding.bind_ortvalue_output(y_name, as_ortvalue(out))
    with_counts = len(session.get_outputs()) > 1
    counts = np.zeros(len(COUNT_NAMES), dtype=np.int64)
    if with_counts:
        binding.bind_ortvalue_output(counts_name, ort.OrtValue.ortvalue_from_numpy(counts))
    session.run_with_iobinding(binding)
    return (out, counts) if with_counts else out


def as_ortvalue(array: np.ndarray) -> ort.OrtValue:
    """An OrtValue over a contiguous array's own memory, of the array's element type (bfloat16 and float8
    travel as raw integers); the array must outlive it."""
    etype = element_type(array.dtype)
    raw = array.view(np.dtype(f"u{etype.width // 8}"))
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, etype.onnx_type)
