"""Noisy training: FlipBits in a torch model's forward pass, with a straight-through gradient.

With ``weights`` as target, every step computes with flipped copies of the
Conv2d and Linear parameters; with ``activations``, the outputs of the layers
whose ONNX export is an activation site flip::

    Conv(x, W, b) -> Conv(x, FlipBits(W), FlipBits(b))     (and Linear alike)
    ReLU(x)       -> FlipBits(ReLU(x))                     (and ReLU6, MaxPool2d; the logits too)

The activation sites mirror :func:`onnxflip.graph.sites.find_sites` on the
exported model: there, in a float graph, the outputs of the ops in
``DEFAULT_ACTIVATION_OPS`` (Relu and MaxPool in a zoo VGG, Relu in ResNet-20,
Clip, ReLU6's export, in the small MobileNetV2) and the graph output are
sites; BatchNorm is folded into the Conv before it, so ``Conv -> BatchNorm
-> ReLU`` is one write, the ReLU's.  In ResNet-20 the residual sum is read
only by the ReLU after it, which is the write; the global average pool is
exported as ReduceMean, no site, so it does not flip in training either.  The
small MobileNetV2's linear bottlenecks (a projection Conv with no activation,
and the residual Add after it) are no sites by default, so they do not flip
either.  Depthwise convolutions are Conv2d: their weights are weight sites.  The weight sites differ in
one respect: training flips the Conv weights as torch holds them, before
BatchNorm is folded into them, and the BatchNorm parameters never flip.

Backward, FlipBits is the identity (the straight-through estimator, Bengio,
Leonard and Courville 2013, arXiv:1308.3432): the gradient computed at the
flipped values updates the clean ones.

The flips are the FlipBits kernel's own (:mod:`onnxflip.runtime.torch_flip`):
a tensor flipped with seed ``s``, stream ``k`` and run ``r`` gets the flips a
FlipBits node with that seed and stream draws at its run ``r``.  In training
the seed is the training seed, each site has its own stream (the weight
sites first, in parameter order, then the activation sites in forward
order, the logits last, whatever the targets) and the run is the training
step, so every step draws new flips and a resumed run draws what the
uninterrupted one would have.

``NoiseSettings`` is readable without torch; ``noisy_forward`` needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnxflip.bits import field_mask
from onnxflip.errors import OnnxflipError
from onnxflip.faults import resolve_probabilities
from onnxflip.graph.sites import DEFAULT_ACTIVATION_OPS
from onnxflip.runtime.contract import element_type

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ACTIVATION_LAYERS", "NOISE_TARGETS", "WEIGHT_LAYERS", "NoiseSettings", "activation_sites",
           "noisy_forward", "weight_sites"]

NOISE_TARGETS = ("weights", "activations", "all")
# torch.nn layers by name: those whose parameters are weight sites, and those whose output is an activation site
# (the zoo's layers whose ONNX export is an op of DEFAULT_ACTIVATION_OPS).
WEIGHT_LAYERS = ("Conv2d", "Linear")
_EXPORTED_AS = {"ReLU": "Relu", "ReLU6": "Clip", "MaxPool2d": "MaxPool"}
ACTIVATION_LAYERS = tuple(layer for layer, op in _EXPORTED_AS.items() if op in DEFAULT_ACTIVATION_OPS)


@dataclass(frozen=True)
class NoiseSettings:
    """Bit flips in training: every allowed bit of a target's float32 values flips with probability ``p`` at
    every step (0: no noise); ``targets``: ``weights``, ``activations`` or ``all``; ``bits``: the bits that may
    flip (a field name or a mask, see :mod:`onnxflip.bits`).  It checks itself when made."""

    p: float = 0.0
    targets: str = "all"
    bits: str | int = "all"

    def __post_init__(self) -> None:
        resolve_probabilities(self.p, None, None)
        if self.targets not in NOISE_TARGETS:
            raise OnnxflipError(f"noise targets must be one of {', '.join(NOISE_TARGETS)}, not {self.targets!r}")
        field_mask(element_type("float32"), self.bits)

    @property
    def enabled(self) -> bool:
        return self.p > 0.0

    @property
    def weights(self) -> bool:
        return self.enabled and self.targets in ("weights", "all")

    @property
    def activations(self) -> bool:
        return self.enabled and self.targets in ("activations", "all")

    def to_json(self) -> dict:
        return {"p": self.p, "targets": self.targets, "bits": self.bits}

    @classmethod
    def from_json(cls, data: dict) -> NoiseSettings:
        return cls(p=data["p"], targets=data["targets"], bits=data["bits"])


def _layers(names: tuple[str, ...]) -> tuple[type, ...]:
    """The torch.nn classes of these names."""
    from torch import nn

    return tuple(getattr(nn, name) for name in names)


def weight_sites(model: nn.Module) -> list[str]:
    """The names of the parameters (weights and biases) of the model's WEIGHT_LAYERS, in parameter order."""
    owners = {name for name, module in model.named_modules() if isinstance(module, _layers(WEIGHT_LAYERS))}
    return [name for name, _ in model.named_parameters() if name.rpartition(".")[0] in owners]


def activation_sites(model: nn.Module) -> list[nn.Module]:
    """The model's ACTIVATION_LAYERS, in module order (the zoo networks register them in forward order, each
    used once); the logits come on top."""
    return [module for module in model.modules() if isinstance(module, _layers(ACTIVATION_LAYERS))]


@contextlib.contextmanager
def _flipped_outputs(modules: list[nn.Module], flip: Callable[[torch.Tensor, int], torch.Tensor],
                     first_stream: int) -> Iterator[None]:
    """Forward hooks that replace each module's output by ``flip(output, stream)``, removed on exit."""
    handles = [module.register_forward_hook(lambda _m, _args, out, stream=first_stream + i: flip(out, stream))
               for i, module in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def noisy_forward(model: nn.Module, noise: NoiseSettings, *, seed: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``forward(x, step) -> logits``: the model's forward pass with the flips of ``noise`` at training step
    ``step`` (the model's own forward when the noise is off).  Outside a call the model is untouched: its
    parameters stay clean, and evaluation and export see no flips."""
    if not noise.enabled:
        return lambda x, step: model(x)
    import torch

    from onnxflip.runtime.cuda import has_cuda_kernels
    from onnxflip.runtime.torch_flip import flip_tensor_ste

    weights = weight_sites(model)
    activations = activation_sites(model)
    logits_stream = len(weights) + len(activations)
    if any(p.is_cuda for p in model.parameters()) and not has_cuda_kernels():
        raise OnnxflipError("noise on --device cuda needs the FlipBits library built with its CUDA kernels")

    def forward(x: torch.Tensor, step: int) -> torch.Tensor:
        def flip(tensor: torch.Tensor, stream: int) -> torch.Tensor:
            return flip_tensor_ste(tensor, p=noise.p, bits=noise.bits, seed=seed, stream=stream, run=step)

        if noise.weights:
            params = dict(model.named_parameters())
            flipped = {name: flip(params[name], stream) for stream, name in enumerate(weights)}
        else:
            flipped = {}
        if not noise.activations:
            return torch.func.functional_call(model, flipped, (x,), strict=False)
        with _flipped_outputs(activations, flip, len(weights)):
            logits = torch.func.functional_call(model, flipped, (x,), strict=False)
        return flip(logits, logits_stream)

    return forward
