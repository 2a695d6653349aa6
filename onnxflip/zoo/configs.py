"""The zoo's model names and configurations: plain data, readable without torch."""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "CONFIGS", "DEPTH", "LANGUAGE_MODEL", "MOBILENET_HEAD", "MOBILENET_STAGES",
           "MOBILENET_STEM", "MOBILENET_STEM_STRIDE", "MODELS", "NETWORK_NAMES", "PAPER_NAMES", "RESNET20_BLOCKS", "RESNET20_STAGES",
           "VGG_MODELS", "WEIGHT_LAYERS", "default_width", "network"]

# torchvision.models.vgg.cfgs, by the paper's names.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
VGG_MODELS: tuple[str, ...] = tuple(CONFIGS)  # the paper's networks: reproduce's depth series
PAPER_NAMES = {"vgg11": "VGG-A", "vgg13": "VGG-B", "vgg16": "VGG-D", "vgg19": "VGG-E"}
# The paper's depth of each VGG (weight layers): the depth series of the reproduction; the other architectures are
# compared with it by their WEIGHT_LAYERS.
DEPTH = {"vgg11": 11, "vgg13": 13, "vgg16": 16, "vgg19": 19}

# The zoo's CIFAR-10 networks beyond VGG (onnxflip.zoo.resnet, onnxflip.zoo.mobilenet), with what they are.
ARCHITECTURES = {
    "resnet20": "ResNet-20, He et al. 2016's CIFAR-10 network: 3 stages of 3 basic blocks, option A shortcuts",
    "mobilenetv2s": "a small MobileNetV2 for 32x32 images: inverted residuals of depthwise-separable "
                    "convolutions, ReLU6",
}
MODELS: tuple[str, ...] = (*VGG_MODELS, *ARCHITECTURES)
# Weight layers (Conv and Linear) on each network's longest path, the paper's measure of depth: the VGGs' DEPTH
# (their names: the zoo's smaller head has one Linear layer fewer), ResNet-20's 19 convolutions and one Linear
# (option A shortcuts hold none), the MobileNetV2's 40 convolutions (13 of them depthwise) and one Linear.
WEIGHT_LAYERS = {**DEPTH, "resnet20": 20, "mobilenetv2s": 41}
NETWORK_NAMES = {"vgg": "VGG", "resnet20": "ResNet-20", "mobilenetv2s": "MobileNetV2"}


def network(model: str) -> str:
    """The architecture a zoo model belongs to, as the reproduction judges the paper's findings: "vgg" for the
    four VGGs (one depth series), else the model itself."""
    return "vgg" if model in VGG_MODELS else model

# ResNet-20: the channels of its three stages (16, 32, 64 at width 1) and the basic blocks in each.
RESNET20_STAGES: tuple[int, ...] = (16, 32, 64)
RESNET20_BLOCKS = 3
# The small MobileNetV2: a 3x3 stem conv of MOBILENET_STEM channels and stride MOBILENET_STEM_STRIDE, then
# (expansion t, output channels c, blocks n, stride of the first s) per stage, as in Sandler et al. 2018's
# Table 2, cut after the 96-channel stage and with stride 1 where ImageNet's network halves a 112-pixel map
# (the 24-channel stage); a 1x1 conv of MOBILENET_HEAD channels before the pooling.
MOBILENET_STEM = 32
MOBILENET_STEM_STRIDE = 2  # the stem halves the 32x32 image, as ImageNet's network's stem halves its input
MOBILENET_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
)
MOBILENET_HEAD = 512

# The channel width multiplier `zoo train` uses unless given: the VGGs are trained at a quarter of their width,
# the other architectures at their own (already small) width.
_DEFAULT_WIDTH = {**dict.fromkeys(VGG_MODELS, 0.25), **dict.fromkeys(ARCHITECTURES, 1.0)}


def default_width(model: str) -> float:
    """The width multiplier a zoo model trains at unless told otherwise."""
    if model not in _DEFAULT_WIDTH:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    return _DEFAULT_WIDTH[model]


# The small byte-level language model (onnxflip.zoo.lm), trained on the Python standard library's source.
LANGUAGE_MODEL = "lm"
