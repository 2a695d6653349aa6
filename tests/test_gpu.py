"""The CUDA kernel: loads without a GPU; on a GPU, the same bits as the CPU kernel (marked gpu)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TYPE_NAMES, FlipBitsNode, popcount, random_array, raw

from onnxflip import OnnxflipError, flip_bits
from onnxflip.bits import element_type, field_mask
from onnxflip.runtime.cuda import cuda_flip_bits_raw, has_cuda_kernels


def _gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _gpu_available(), reason="needs an NVIDIA GPU with a working CUDA driver")
needs_cuda_build = pytest.mark.skipif(not has_cuda_kernels(), reason="library built without CUDA kernels")


@needs_cuda_build
def test_cuda_entry_point_fails_cleanly_where_there_is_no_gpu():
    if _gpu_available():
        pytest.skip("a GPU is present: the GPU tests cover the entry point")
    # Zero elements: nothing to launch, success; real work: a CUDA error, reported, not a crash.
    cuda_flip_bits_raw(0, 0, 0, 1, p01=0.1, p10=0.1, seed=1, mask=0xFFFFFFFF)
    with pytest.raises(OnnxflipError, match="CUDA error"):
        cuda_flip_bits_raw(1 << 20, 2 << 20, 16, 1, p01=0.1, p10=0.1, seed=1, mask=0xFFFFFFFF)
    with pytest.raises(OnnxflipError, match="invalid"):
        cuda_flip_bits_raw(0, 0, 0, 1, p01=2.0, p10=0.1, seed=1, mask=0xFFFFFFFF)


def _to_torch(array: np.ndarray):
    import torch

    width = array.dtype.itemsize * 8
    signed = {8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}[width]
    bits = torch.from_numpy(raw(array).view(f"i{width // 8}") if width > 8 else raw(array).copy())
    dtype = getattr(torch, element_type(array.dtype).name)  # torch names its dtypes as the contract does
    return bits.to(signed).cuda().view(dtype)


def _from_torch(tensor, like: np.ndarray) -> np.ndarray:
    import torch

    width = like.dtype.itemsize * 8
    signed = {8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}[width]
    return tensor.view(signed).cpu().numpy().view(like.dtype)


def _cuda(x: np.ndarray, **kwargs) -> np.ndarray:
    from onnxflip.runtime.cuda import flip_bits_torch

    return _from_torch(flip_bits_torch(_to_torch(x), **kwargs), x)


CASES = [(p, sym, masked) for p in (0.0, 1e-6, 1e-3, 0.5, 1.0) for sym in (True, False) for masked in (False, True)]


@needs_gpu
@needs_cuda_build
@pytest.mark.gpu
@pytest.mark.parametrize("type_name", TYPE_NAMES)
@pytest.mark.parametrize(("p", "symmetric", "masked"), CASES)
def test_cuda_bits_equal_cpu_bits(type_name, p, symmetric, masked):
    x = random_array(type_name, 1 << 20, seed=3)
    etype = element_type(type_name)
    bits = field_mask(etype, "sign") | field_mask(etype, "low:3" if not etype.is_float else "mantissa") if masked else "all"
    probs = {"p": p} if symmetric else {"p01": p, "p10": p / 3}
    cpu = flip_bits(x, bits=bits, seed=11, stream=5, **probs)
    gpu = _cuda(x, bits=bits, seed=11, stream=5, **probs)
    assert np.array_equal(raw(cpu), raw(gpu))


@needs_gpu
@needs_cuda_build
@pytest.mark.gpu
@pytest.mark.parametrize("p", [1e-4, 1e-2])
def test_cuda_flip_count_is_binomial(p):
    x = random_array("float32", 1 << 22, seed=4)
    y = _cuda(x, p=p, seed=2)
    trials = x.size * 32
    assert abs(popcount(raw(x) ^ raw(y)) - trials * p) <= 4.5 * math.sqrt(trials * p * (1 - p))


FAULT_CASES = [  # (p, s0, s1, ecc, on_detected)
    (0.0, 0.02, 0.01, "none", "keep"),
    (1e-3, 0.01, 0.01, "none", "keep"),
    (1e-3, 0.0, 0.0, "secded", "keep"),
    (3e-3, 1e-3, 1e-3, "secded", "zero"),
    (3e-3, 1e-3, 0.0, "secded64", "keep"),
]


@needs_gpu
@needs_cuda_build
@pytest.mark.gpu
@pytest.mark.parametrize("type_name", TYPE_NAMES)
@pytest.mark.parametrize(("p", "s0", "s1", "ecc", "on_detected"), FAULT_CASES)
def test_cuda_stuck_cells_and_ecc_equal_cpu(type_name, p, s0, s1, ecc, on_detected):
    x = random_array(type_name, (1 << 18) + 5, seed=6)  # a partial block and, with secded64, a partial word
    settings = {"p01": p, "p10": p / 2, "s0": s0, "s1": s1, "ecc": ecc, "on_detected": on_detected, "seed": 13,
                "stream": 2, "return_counts": True}
    cpu, cpu_counts = flip_bits(x, **settings)
    gpu, gpu_counts = _cuda_counts(x, **settings)
    assert np.array_equal(raw(cpu), raw(gpu)) and cpu_counts == gpu_counts


def _cuda_counts(x: np.ndarray, **kwargs):
    from onnxflip.runtime.cuda import flip_bits_torch

    out, counts = flip_bits_torch(_to_torch(x), **kwargs)
    return _from_torch(out, x), counts


@needs_gpu
@needs_cuda_build
@pytest.mark.gpu
def test_cuda_stuck_map_ignores_the_run_counter():
    import torch

    etype = element_type("float32")
    zeros = torch.zeros(1 << 16, dtype=torch.float32, device="cuda")
    maps = []
    for run in (0, 7):
        out = torch.empty_like(zeros)
        cuda_flip_bits_raw(zeros.data_ptr(), out.data_ptr(), zeros.numel(), etype.onnx_type, p01=0.0, p10=0.0, seed=3,
                           run=run, mask=etype.all_bits, s1=0.01)
        torch.cuda.synchronize()
        maps.append(out.cpu().numpy())
    assert popcount(raw(maps[0])) > 0 and np.array_equal(raw(maps[0]), raw(maps[1]))


@needs_gpu
@needs_cuda_build
@pytest.mark.gpu
@pytest.mark.parametrize("type_name", ["float32", "float16", "int8"])
def test_cuda_per_run_bits_equal_cpu_run_by_run(type_name):
    """per_run randomness: the CPU kernel's k-th run of a session draws what the CUDA entry point draws for
    run k (and runs differ from each other)."""
    import torch

    x = random_array(type_name, (1 << 16) + 3, seed=8)
    etype = element_type(type_name)
    node = FlipBitsNode(type_name, stream=4, randomness="per_run")
    device_x = _to_torch(x)
    outputs = []
    for run in range(3):
        cpu = node(x, p01=1e-2, p10=3e-3, seed=21)
        out = torch.empty_like(device_x)
        cuda_flip_bits_raw(device_x.data_ptr(), out.data_ptr(), x.size, etype.onnx_type, p01=1e-2, p10=3e-3,
                           seed=21, stream=4, run=run, mask=etype.all_bits)
        torch.cuda.synchronize()
        gpu = _from_torch(out, x)
        assert np.array_equal(raw(cpu), raw(gpu)), f"run {run}"
        outputs.append(raw(gpu))
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[1], outputs[2])
