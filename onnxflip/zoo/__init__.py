"""The model zoo: the VGG networks of the paper, adapted to CIFAR-10."""

from __future__ import annotations

from onnxflip.zoo.vgg import CONFIGS, VGG, build_vgg

__all__ = ["CONFIGS", "VGG", "build_vgg"]
