"""The model zoo: the VGG networks of the paper, adapted to CIFAR-10, ResNet-20 and a small MobileNetV2 for
CIFAR-10, and a small byte-level language model (:mod:`onnxflip.zoo.lm`).

Training and export need torch, torchvision and onnxscript, the ``zoo``
extra (``pip install 'onnxflip[zoo]'``); the model names and configurations
are readable without them, and ``VGG``, ``build_vgg`` and ``build_model``
import torch only when asked for.
"""

from __future__ import annotations

import importlib
import importlib.util

from onnxflip.errors import OnnxflipError
from onnxflip.zoo.configs import ARCHITECTURES, CONFIGS, LANGUAGE_MODEL, MODELS, PAPER_NAMES, VGG_MODELS

__all__ = ["ARCHITECTURES", "CONFIGS", "EXTRA_MODULES", "LANGUAGE_MODEL", "MODELS", "PAPER_NAMES", "VGG", "VGG_MODELS",
           "build_model", "build_vgg", "require_extra"]

# What pyproject.toml's zoo extra installs (torch's ONNX exporter needs onnxscript).
EXTRA_MODULES = ("torch", "torchvision", "onnxscript")


def require_extra(purpose: str, *, modules: tuple[str, ...] = EXTRA_MODULES) -> None:
    """Raise a one-line error naming the zoo extra when a module ``purpose`` needs is not installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise OnnxflipError(f"{purpose} needs {', '.join(missing)}: pip install 'onnxflip[zoo]'")


def __getattr__(name: str):
    if name in ("VGG", "build_vgg"):
        return getattr(importlib.import_module("onnxflip.zoo.vgg"), name)
    if name == "build_model":
        return importlib.import_module("onnxflip.zoo.models").build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
