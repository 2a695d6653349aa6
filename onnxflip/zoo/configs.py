"""The zoo's VGG configurations by name: plain data, readable without torch."""

from __future__ import annotations

__all__ = ["CONFIGS", "LANGUAGE_MODEL", "MODELS", "PAPER_NAMES"]

# torchvision.models.vgg.cfgs, by the paper's names.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
MODELS: tuple[str, ...] = tuple(CONFIGS)
PAPER_NAMES = {"vgg11": "VGG-A", "vgg13": "VGG-B", "vgg16": "VGG-D", "vgg19": "VGG-E"}

# The small byte-level language model (onnxflip.zoo.lm), trained on the Python standard library's source.
LANGUAGE_MODEL = "lm"
