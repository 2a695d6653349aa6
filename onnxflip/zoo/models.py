"""Build any of the zoo's CIFAR-10 networks by name (:data:`onnxflip.zoo.configs.MODELS`)."""

from __future__ import annotations

from torch import nn

from onnxflip.zoo.configs import CONFIGS, MODELS

__all__ = ["build_model"]


def build_model(name: str, *, width: float = 1.0) -> nn.Module:
    """A freshly initialised zoo network: a VGG (vgg11, vgg13, vgg16, vgg19), resnet20 or mobilenetv2s, its
    channel counts scaled by ``width``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if not width > 0:
        raise ValueError(f"width must be positive, not {width}")
    if name in CONFIGS:
        from onnxflip.zoo.vgg import VGG

        return VGG(CONFIGS[name], width=width)
    if name == "resnet20":
        from onnxflip.zoo.resnet import ResNet

        return ResNet(width=width)
    from onnxflip.zoo.mobilenet import MobileNetV2

    return MobileNetV2(width=width)
