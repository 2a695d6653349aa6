"""The CUDA kernel without ONNX Runtime: FlipBits on device memory through the library's C entry point.

``onnxflip_cuda_flip_bits`` takes device pointers and a CUDA stream, so GPU
code (torch, CuPy) can run the very kernel ONNX Runtime's CUDA provider runs.
Its parameters are passed by name: the library's contract lists them, in
order and with their C types (:data:`~onnxflip.runtime.contract.CUDA_ENTRY_PARAMETERS`).
In ``fixed`` mode (run = 0) it gives the same bits as :func:`onnxflip.flip_bits`
on the CPU for the same seed and stream.
"""

from __future__ import annotations

import ctypes
import functools

from onnxflip.bits import field_mask
from onnxflip.errors import OnnxflipError
from onnxflip.faults import FaultModel, WordCounts, resolve_probabilities, stored_words
from onnxflip.runtime.contract import COUNT_NAMES, CUDA_ENTRY_NAME, CUDA_ENTRY_PARAMETERS, element_type, enum_code
from onnxflip.runtime.library import load_library

__all__ = ["cuda_flip_bits_raw", "entry_arguments", "flip_bits_torch", "has_cuda_kernels"]


# The C types the contract names for the entry's parameters (pointers travel as addresses).
_C_TYPES = {"const void*": ctypes.c_void_p, "void*": ctypes.c_void_p, "int64_t*": ctypes.c_void_p,
            "int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
            "uint64_t": ctypes.c_uint64, "double": ctypes.c_double}


@functools.cache
def _entry():
    try:
        fn = getattr(load_library(), CUDA_ENTRY_NAME)
    except AttributeError:
        return None
    if not CUDA_ENTRY_PARAMETERS:
        raise OnnxflipError(f"the FlipBits library does not describe its {CUDA_ENTRY_NAME} parameters (built by an "
                            "older onnxflip); rebuild it")
    fn.restype = ctypes.c_int
    fn.argtypes = [_C_TYPES[c_type] for _, c_type in CUDA_ENTRY_PARAMETERS]
    return fn


def entry_arguments(values: dict[str, object]) -> list[object]:
    """The entry's arguments in the order the contract lists its parameters, from a value per parameter name."""
    missing = [name for name, _ in CUDA_ENTRY_PARAMETERS if name not in values]
    if missing:
        raise OnnxflipError(f"the FlipBits library's {CUDA_ENTRY_NAME} takes {', '.join(missing)}, which this onnxflip "
                            "does not give; reinstall onnxflip and its library together")
    return [values[name] for name, _ in CUDA_ENTRY_PARAMETERS]


def has_cuda_kernels() -> bool:
    """Whether the installed library was built with its CUDA kernels."""
    return _entry() is not None


def cuda_flip_bits_raw(x_ptr: int, y_ptr: int, count: int, onnx_type: int, *, p01: float, p10: float, seed: int,
                       stream: int = 0, run: int = 0, mask: int, nonfinite: str = "keep", s0: float = 0.0,
                       s1: float = 0.0, stuck_seed: int | None = None, ecc: str = "none", on_detected: str = "keep",
                       counts_ptr: int = 0, cuda_stream: int = 0) -> None:
    """Y = FlipBits(X) on device pointers (``counts_ptr``: device int64[3] for the word counts, or 0;
    ``stuck_seed``: keys the stuck cells, default ``seed``); raises OnnxflipError with the CUDA error on failure.
    The rates are rounded to float32 as the operator's inputs are, so the same rates draw the same faults."""
    fn = _entry()
    if fn is None:
        raise OnnxflipError("the FlipBits library was built without CUDA kernels")
    code = fn(*entry_arguments({
        "x": x_ptr, "y": y_ptr, "count": count, "onnx_type": onnx_type, "p01": p01, "p10": p10, "seed": seed,
        "stream_id": stream, "run": run, "mask": mask, "nonfinite": enum_code("nonfinite", nonfinite), "s0": s0,
        "s1": s1, "stuck_seed": seed if stuck_seed is None else stuck_seed, "ecc": enum_code("ecc", ecc),
        "on_detected": enum_code("on_detected", on_detected), "counts": counts_ptr or None,
        "cuda_stream": cuda_stream}))
    if code == -1:
        raise OnnxflipError("invalid FlipBits settings for the CUDA kernel")
    if code != 0:
        raise OnnxflipError(f"CUDA error {code} in FlipBits")


def flip_bits_torch(tensor, *, p: float | None = None, p01: float | None = None, p10: float | None = None,
                    bits: str | int = "all", seed: int = 0, stream: int = 0, nonfinite: str = "keep",
                    s0: float = 0.0, s1: float = 0.0, stuck_seed: int | None = None, ecc: str = "none",
                    on_detected: str = "keep", return_counts: bool = False):
    """A copy of a CUDA torch tensor with the faults of :func:`onnxflip.flip_bits` applied by the CUDA kernel,
    on torch's current stream; with ``return_counts``, ``(tensor, WordCounts)``."""
    import torch

    if not tensor.is_cuda:
        raise OnnxflipError("flip_bits_torch takes a CUDA tensor; use onnxflip.flip_bits for host arrays")
    # torch names its dtypes as the contract names the element types (torch.float32, torch.float8_e4m3fn, ...).
    etype = element_type(str(tensor.dtype).removeprefix("torch."))
    prob01, prob10 = resolve_probabilities(p, p01, p10)
    FaultModel(p01=prob01, p10=prob10, nonfinite=nonfinite, s0=s0, s1=s1, ecc=ecc, on_detected=on_detected)  # checks
    words = stored_words(ecc, etype, tensor.numel())  # checks that ecc fits the type
    source = tensor.contiguous()
    out = torch.empty_like(source)
    counts = torch.zeros(len(COUNT_NAMES), dtype=torch.int64, device=source.device) if return_counts else None
    cuda_flip_bits_raw(source.data_ptr(), out.data_ptr(), source.numel(), etype.onnx_type, p01=prob01, p10=prob10,
                       seed=seed, stream=stream, mask=field_mask(etype, bits), nonfinite=nonfinite, s0=s0, s1=s1,
                       stuck_seed=stuck_seed, ecc=ecc, on_detected=on_detected, counts_ptr=counts.data_ptr() if return_counts else 0,
                       cuda_stream=torch.cuda.current_stream().cuda_stream)
    if not return_counts:
        return out
    return out, WordCounts.from_output(counts.cpu().numpy(), words=words)
