"""The CUDA kernel without ONNX Runtime: FlipBits on device memory through the library's C entry point.

``onnxflip_cuda_flip_bits`` takes device pointers and a CUDA stream, so GPU
code (torch, CuPy) can run the very kernel ONNX Runtime's CUDA provider runs.
Its parameters are passed by name: the library's contract lists them, in
order and with their C types (:data:`~onnxflip.runtime.contract.CUDA_ENTRY`).
In ``fixed`` mode (run = 0) it gives the same bits as :func:`onnxflip.flip_bits`
on the CPU for the same seed and stream.
"""

from __future__ import annotations

from onnxflip.bits import field_mask
from onnxflip.errors import OnnxflipError
from onnxflip.faults import FaultModel, WordCounts, resolve_probabilities, stored_words
from onnxflip.runtime.contract import COUNT_NAMES, CUDA_ENTRY, element_type, entry_values

__all__ = ["cuda_flip_bits_raw", "flip_bits_torch", "has_cuda_kernels"]


def has_cuda_kernels() -> bool:
    """Whether the installed library was built with its CUDA kernels."""
    return CUDA_ENTRY.function is not None


def cuda_flip_bits_raw(x_ptr: int, y_ptr: int, count: int, onnx_type: int, *, p01: float, p10: float, seed: int,
                       stream: int = 0, run: int = 0, mask: int, nonfinite: str = "keep", s0: float = 0.0,
                       s1: float = 0.0, stuck_seed: int | None = None, ecc: str = "none", on_detected: str = "keep",
                       counts_ptr: int = 0, cuda_stream: int = 0) -> None:
    """Y = FlipBits(X) on device pointers (``counts_ptr``: device int64[3] for the word counts, or 0;
    ``stuck_seed``: keys the stuck cells, default ``seed``); raises OnnxflipError with the CUDA error on failure.
    The rates are rounded to float32 as the operator's inputs are, so the same rates draw the same faults."""
    if not has_cuda_kernels():
        raise OnnxflipError("the FlipBits library was built without CUDA kernels")
    values = entry_values(x_ptr, y_ptr, count, onnx_type, p01=p01, p10=p10, seed=seed, stream=stream, run=run,
                          mask=mask, nonfinite=nonfinite, s0=s0, s1=s1, stuck_seed=stuck_seed, ecc=ecc,
                          on_detected=on_detected, counts_ptr=counts_ptr)
    code = CUDA_ENTRY.call({**values, "cuda_stream": cuda_stream})
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
