"""Export a zoo CIFAR-10 network to ONNX: BatchNorm folded, dynamic batch, preprocessing built in.

The exported graph takes ``input``: float32 RGB images in [0, 1], shape
(batch, 3, 32, 32), and returns ``logits`` (batch, 10).  Normalisation is
part of the graph (before the first Conv, so never a fault target).  The
preprocessing (32x32 RGB scaled to [0, 1], NCHW) is stored under
``onnxflip.preprocess``, so data sources need no options for these models.
"""

from __future__ import annotations

import copy
import json
import os

import onnx
import torch
from torch import nn

from onnxflip.data import CLASSES, PREPROCESS_METADATA_KEY, Preprocess
from onnxflip.data.sources import MODEL_METADATA_KEY
from onnxflip.errors import OnnxflipError
from onnxflip.modelio import save_model
from onnxflip.runtime.session import runtime_proto

__all__ = ["MODEL_METADATA_KEY", "export_onnx", "fold_batchnorm_torch"]


def _fused(layers: list[nn.Module]) -> list[nn.Module]:
    """The layers with each Conv2d -> BatchNorm2d pair replaced by one Conv2d."""
    fused: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d) and fused and isinstance(fused[-1], nn.Conv2d):
            fused[-1] = torch.nn.utils.fusion.fuse_conv_bn_eval(fused[-1], layer)
            continue
        fused.append(layer)
    return fused


def fold_batchnorm_torch(model: nn.Module) -> nn.Module:
    """A copy of the model in eval mode with every Conv2d -> BatchNorm2d pair of an nn.Sequential (at any depth:
    a VGG's features, a ResNet's or MobileNet's blocks) fused into one Conv2d.  A BatchNorm2d anywhere else is
    an error: the export would keep it."""
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        if isinstance(module, nn.Sequential):
            layers = _fused(list(module))
            module._modules.clear()
            for i, layer in enumerate(layers):
                module.add_module(str(i), layer)
    left = [name for name, module in folded.named_modules() if isinstance(module, nn.BatchNorm2d)]
    if left:
        raise OnnxflipError(f"BatchNorm2d {', '.join(left)} does not follow a Conv2d in an nn.Sequential: "
                            "cannot fold it")
    return folded


def export_onnx(model: nn.Module, path: str | os.PathLike[str], *, info: dict | None = None) -> onnx.ModelProto:
    """Export with the dynamo exporter and write the model atomically; returns the proto."""
    folded = fold_batchnorm_torch(model)
    example = torch.rand(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        folded,
        (example,),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    proto = runtime_proto(program.model_proto)
    meta = {
        "input": "RGB images in [0, 1], float32, NCHW (batch, 3, 32, 32); normalisation is in the graph",
        "classes": list(CLASSES),
        **(info or {}),
    }
    del proto.metadata_props[:]
    proto.metadata_props.add(key=MODEL_METADATA_KEY, value=json.dumps(meta))
    proto.metadata_props.add(key=PREPROCESS_METADATA_KEY, value=Preprocess.parse("cifar10").to_json())
    save_model(proto, path)
    return proto
