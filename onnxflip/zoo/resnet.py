"""ResNet-20 for 32x32 CIFAR-10 images (He, Zhang, Ren and Sun 2016, "Deep residual learning for image
recognition", section 4.2).

A 3x3 conv of 16 channels, then three stages of three basic blocks (two 3x3
convs each) at 16, 32 and 64 channels on 32x32, 16x16 and 8x8 maps, global
average pooling and one Linear: 19 convs + 1 Linear, 0.27M parameters at
width 1.  Shortcuts are the paper's option A for CIFAR-10: the identity, and
where a stage starts, the input subsampled by 2 and zero-padded to the new
channel count, so shortcuts have no parameters.  Each block ends in
``ReLU(residual + shortcut)``.  Channel counts scale with a width multiplier;
the model normalises its input (RGB in [0, 1], NCHW) itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onnxflip.zoo.configs import RESNET20_BLOCKS, RESNET20_STAGES
from onnxflip.zoo.layers import CifarNet, conv_bn, scaled

__all__ = ["BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    """ReLU(BN(Conv(ReLU(BN(Conv(x))))) + shortcut(x)), the shortcut of option A."""

    def __init__(self, channels: int, out: int, *, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(*conv_bn(channels, out, stride=stride), nn.ReLU(inplace=True),
                                      *conv_bn(out, out))
        self.relu = nn.ReLU(inplace=True)
        self.stride = stride
        self.extra = out - channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class ResNet(CifarNet):
    """Normalise -> Conv/BN/ReLU -> basic blocks in stages -> global average pool -> Linear."""

    def __init__(self, *, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        channels = scaled(RESNET20_STAGES[0], width)
        self.stem = nn.Sequential(*conv_bn(3, channels), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        for stage, stage_channels in enumerate(RESNET20_STAGES):
            out = scaled(stage_channels, width)
            for i in range(RESNET20_BLOCKS):
                blocks.append(BasicBlock(channels, out, stride=2 if stage > 0 and i == 0 else 1))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(self.normalise(x)))))

