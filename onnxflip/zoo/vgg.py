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

__all__ = ["CONFIGS", "MEAN", "STD", "VGG", "build_vgg"]

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class VGG(nn.Module):
    """Normalise -> conv/BN/ReLU stacks with max-pools -> Linear/ReLU/Linear."""

    def __init__(self, config: list[int | str], *, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(STD).view(1, 3, 1, 1))
        layers: list[nn.Module] = []
        channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = max(8, round(int(item) * width))
            layers += [
                nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, channels),
            nn.ReLU(inplace=True),
            nn.Linear(channels, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.inv_std
        return self.classifier(self.features(x))


def build_vgg(name: str, *, width: float = 1.0) -> VGG:
    """A freshly initialised VGG by name (vgg11, vgg13, vgg16 or vgg19)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(CONFIGS)}")
    if not width > 0:
        raise ValueError(f"width must be positive, not {width}")
    return VGG(CONFIGS[name], width=width)
