"""VGG-A/B/D/E (VGG-11/13/16/19) with batch norm, for 32x32 CIFAR-10 images.

The feature extractor follows torchvision's configurations 'A', 'B', 'D' and
'E'; channel counts are scaled by a width multiplier.  Five max-pools bring
32x32 down to 1x1, so the head is a small MLP (C -> C -> 10) instead of the
ImageNet 4096-wide classifier.  Input normalisation is part of the model: it
takes RGB images in [0, 1], NCHW.
"""

from __future__ import annotations

import torch
from torch import nn

from onnxflip.zoo.configs import CONFIGS
from onnxflip.zoo.layers import MEAN, STD, CifarNet, conv_bn, scaled

__all__ = ["CONFIGS", "MEAN", "STD", "VGG", "build_vgg"]


class VGG(CifarNet):
    """Normalise -> conv/BN/ReLU stacks with max-pools -> Linear/ReLU/Linear."""

    def __init__(self, config: list[int | str], *, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = scaled(int(item), width)
            layers += [*conv_bn(channels, out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, channels),
            nn.ReLU(inplace=True),
            nn.Linear(channels, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalise(x)))


def build_vgg(name: str, *, width: float = 1.0) -> VGG:
    """A freshly initialised VGG by name (vgg11, vgg13, vgg16 or vgg19)."""
    from onnxflip.zoo.models import build_model

    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(CONFIGS)}")
    return build_model(name, width=width)
