"""Export a zoo model to ONNX: BatchNorm folded, dynamic batch, preprocessing built in.

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
from onnxflip.modelio import save_model
from onnxflip.runtime.session import runtime_proto
from onnxflip.zoo.vgg import VGG

__all__ = ["MODEL_METADATA_KEY", "export_onnx", "fold_batchnorm_torch"]


def fold_batchnorm_torch(model: VGG) -> VGG:
    """A copy of the model with every Conv -> BatchNorm pair fused into one Conv."""
    folded = copy.deepcopy(model).eval()
    layers = list(folded.features)
    fused: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
            fused.append(torch.nn.utils.fusion.fuse_conv_bn_eval(layer, layers[i + 1]))
            i += 2
            continue
        fused.append(layer)
        i += 1
    folded.features = nn.Sequential(*fused)
    return folded


def export_onnx(model: VGG, path: str | os.PathLike[str], *, info: dict | None = None) -> onnx.ModelProto:
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
