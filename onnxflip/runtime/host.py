"""The CPU kernel without ONNX Runtime: FlipBits on host memory through the library's C entry point.

``onnxflip_cpu_flip_bits`` takes host pointers, so code that holds its own
buffers (a torch tensor's ``data_ptr()``) runs the very fault code ONNX
Runtime's CPU kernel runs, on the calling thread, without a session.  For
the same element type, settings, ``seed``, ``stream`` and ``run`` it draws
the same faults as the operator at that run (``fixed`` mode: run 0).
"""

from __future__ import annotations

from onnxflip.errors import OnnxflipError
from onnxflip.runtime.contract import CPU_ENTRY, entry_values

__all__ = ["cpu_flip_bits_raw"]


def cpu_flip_bits_raw(x_ptr: int, y_ptr: int, count: int, onnx_type: int, *, p01: float, p10: float, seed: int,
                      stream: int = 0, run: int = 0, mask: int, nonfinite: str = "keep", s0: float = 0.0,
                      s1: float = 0.0, stuck_seed: int | None = None, ecc: str = "none", on_detected: str = "keep",
                      counts_ptr: int = 0) -> None:
    """Y = FlipBits(X) on host pointers of ``count`` elements (``y_ptr`` may be ``x_ptr``: in place;
    ``counts_ptr``: host int64[3] for the word counts, or 0; ``stuck_seed``: keys the stuck cells, default
    ``seed``).  The rates are rounded to float32 as the operator's inputs are, so the same rates draw the same
    faults.  The caller keeps the buffers alive and sized; invalid settings raise OnnxflipError."""
    values = entry_values(x_ptr, y_ptr, count, onnx_type, p01=p01, p10=p10, seed=seed, stream=stream, run=run,
                          mask=mask, nonfinite=nonfinite, s0=s0, s1=s1, stuck_seed=stuck_seed, ecc=ecc,
                          on_detected=on_detected, counts_ptr=counts_ptr)
    if CPU_ENTRY.call(values) != 0:
        raise OnnxflipError("invalid FlipBits settings for the CPU kernel")
