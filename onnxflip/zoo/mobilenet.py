"""A small MobileNetV2 for 32x32 CIFAR-10 images (Sandler, Howard, Zhu, Zhmoginov and Chen 2018,
"MobileNetV2: inverted residuals and linear bottlenecks").

A 3x3 conv with stride 2, as ImageNet's MobileNetV2 begins (32 -> 16), then
inverted residual blocks: a 1x1 expansion conv (``t`` times the channels), a
3x3 depthwise conv, each followed by BatchNorm and ReLU6, and a 1x1
projection conv with BatchNorm and no activation (the linear bottleneck);
where a block keeps its shape, its input is added to its output.  The stages
(:data:`onnxflip.zoo.configs.MOBILENET_STAGES`) stop at 96 channels and halve
the map twice more (16 -> 8 -> 4), then a 1x1 conv, global average pooling
and one Linear: 0.60M parameters at width 1.  The strided stem keeps the
expanded 32x32 maps out of the network: on a CPU, a training step takes
about a fifth of the time it takes without it.
Channel counts scale with a width multiplier; the model normalises its
input (RGB in [0, 1], NCHW) itself.
"""

from __future__ import annotations

import torch
from torch import nn

from onnxflip.zoo.configs import MOBILENET_HEAD, MOBILENET_STAGES, MOBILENET_STEM, MOBILENET_STEM_STRIDE
from onnxflip.zoo.layers import CifarNet, conv_bn, scaled

__all__ = ["InvertedResidual", "MobileNetV2"]


class InvertedResidual(nn.Module):
    """[1x1 Conv/BN/ReLU6 ->] 3x3 depthwise Conv/BN/ReLU6 -> 1x1 Conv/BN, plus the input where shapes agree."""

    def __init__(self, channels: int, out: int, *, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = channels * expansion
        expand = [*conv_bn(channels, hidden, kernel=1), nn.ReLU6(inplace=True)] if expansion != 1 else []
        self.body = nn.Sequential(*expand, *conv_bn(hidden, hidden, stride=stride, groups=hidden),
                                  nn.ReLU6(inplace=True), *conv_bn(hidden, out, kernel=1))
        self.residual = stride == 1 and channels == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(CifarNet):
    """Normalise -> Conv/BN/ReLU6 -> inverted residual stages -> 1x1 Conv/BN/ReLU6 -> global average pool ->
    Linear."""

    def __init__(self, *, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        channels = scaled(MOBILENET_STEM, width)
        self.stem = nn.Sequential(*conv_bn(3, channels, stride=MOBILENET_STEM_STRIDE), nn.ReLU6(inplace=True))
        blocks: list[nn.Module] = []
        for expansion, stage_channels, count, stride in MOBILENET_STAGES:
            out = scaled(stage_channels, width)
            for i in range(count):
                blocks.append(InvertedResidual(channels, out, stride=stride if i == 0 else 1, expansion=expansion))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        head = scaled(MOBILENET_HEAD, width)
        self.head = nn.Sequential(*conv_bn(channels, head, kernel=1), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.head(self.blocks(self.stem(self.normalise(x))))))

