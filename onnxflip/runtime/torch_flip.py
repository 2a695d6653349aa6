"""FlipBits as a torch operator: the kernel's flips on a CPU or CUDA tensor, with a straight-through gradient.

``flip_tensor`` runs the library's C entry points on the tensor's memory
(:mod:`onnxflip.runtime.host` on the CPU, :mod:`onnxflip.runtime.cuda` on a
GPU, on torch's current stream): for the same element type, probability,
bits, seed, stream and run it draws the flips a FlipBits node with that
seed and stream draws at its run ``run`` (``fixed`` mode: run 0).
``flip_tensor_ste`` is the same forward with an identity backward (the
straight-through estimator, Bengio, Leonard and Courville 2013,
arXiv:1308.3432): the gradient at the flipped values passes to the clean
tensor unchanged.
"""

from __future__ import annotations

import torch

from onnxflip.bits import field_mask
from onnxflip.errors import OnnxflipError
from onnxflip.faults import resolve_probabilities
from onnxflip.runtime.contract import element_type
from onnxflip.runtime.cuda import cuda_flip_bits_raw, has_cuda_kernels
from onnxflip.runtime.host import cpu_flip_bits_raw

__all__ = ["flip_tensor", "flip_tensor_ste"]

_RUNS = 1 << 32  # the kernel's run counter is 32 bits wide: run r and r + 2^32 draw the same flips


def flip_tensor(tensor: torch.Tensor, *, p: float, bits: str | int = "all", seed: int, stream: int = 0,
                run: int = 0) -> torch.Tensor:
    """A copy of a CPU or CUDA tensor in which every bit of ``bits`` (a field name or a mask, see
    :mod:`onnxflip.bits`) flips with probability ``p``: the flips of a FlipBits node with this seed and stream
    at its run ``run``.  No gradient; see :func:`flip_tensor_ste`."""
    etype = element_type(str(tensor.dtype).removeprefix("torch."))  # torch names dtypes as the contract does
    prob = resolve_probabilities(p, None, None)[0]
    source = tensor.detach().contiguous()
    out = torch.empty_like(source)
    settings = {"p01": prob, "p10": prob, "seed": seed, "stream": stream, "run": run % _RUNS,
                "mask": field_mask(etype, bits)}
    if source.is_cuda:
        if not has_cuda_kernels():
            raise OnnxflipError("flips on a CUDA tensor need the FlipBits library built with its CUDA kernels")
        cuda_flip_bits_raw(source.data_ptr(), out.data_ptr(), source.numel(), etype.onnx_type, **settings,
                           cuda_stream=torch.cuda.current_stream(source.device).cuda_stream)
    elif source.device.type == "cpu":
        cpu_flip_bits_raw(source.data_ptr(), out.data_ptr(), source.numel(), etype.onnx_type, **settings)
    else:
        raise OnnxflipError(f"FlipBits runs on CPU and CUDA tensors, not on {source.device.type} ones")
    return out


class _FlipBitsSTE(torch.autograd.Function):
    """Forward: :func:`flip_tensor`; backward: the identity."""

    @staticmethod
    def forward(ctx, tensor, p, bits, seed, stream, run):
        return flip_tensor(tensor, p=p, bits=bits, seed=seed, stream=stream, run=run)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None, None


def flip_tensor_ste(tensor: torch.Tensor, *, p: float, bits: str | int = "all", seed: int, stream: int = 0,
                    run: int = 0) -> torch.Tensor:
    """:func:`flip_tensor` with a straight-through gradient: d out / d tensor is the identity."""
    return _FlipBitsSTE.apply(tensor, p, bits, seed, stream, run)
