"""What the zoo's CIFAR-10 networks share: normalisation in the model, Conv -> BatchNorm pairs, channel widths."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MEAN", "STD", "CifarNet", "conv_bn", "scaled"]

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class CifarNet(nn.Module):
    """A network that takes RGB images in [0, 1], NCHW, and normalises them itself (buffers ``mean`` and
    ``inv_std``), so the exported graph needs no preprocessing beyond scaling to [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(STD).view(1, 3, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


def conv_bn(channels: int, out: int, *, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free Conv2d ("same" padding) and its BatchNorm2d, to be placed next to each other in an
    nn.Sequential: :func:`onnxflip.zoo.export.fold_batchnorm_torch` folds such pairs."""
    return [nn.Conv2d(channels, out, kernel_size=kernel, stride=stride, padding=kernel // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out)]


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, at least 8."""
    return max(8, round(channels * width))
