"""Data sources: batches of ``{model input name: array}`` plus optional labels.

A ``DataSource`` (:mod:`onnxflip.data.base`, with the model input specs and
the in-memory :class:`ArraySource`) knows its size, iterates in order
without holding more than a few batches, gives class-balanced nested
subsets, and can be decoded once into memory (``cached``) when it fits.
``open_source`` picks the kind from the path:

* a file ending in ``.npz``: one array per model input (``npz.py``);
* a CIFAR-10 folder of the official pickles (``cifar10.py``);
* an ImageFolder tree ``DIR/<class>/*`` or ``DIR/{train,val,test}/<class>/*``,
  or a flat folder of unlabelled images (``imagefolder.py``).  The CIFAR-10
  ImageFolder layout is such a tree.

With a model, the inputs are checked against its inputs (names, shapes,
dtypes) before anything runs, and the preprocessing spec stored in its
metadata is used unless one is given.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxflip.data import cifar10, imagefolder, npz
from onnxflip.data.base import (
    DataSource,
    InputSpec,
    model_inputs,
)
from onnxflip.data.cifar10 import resolve_data_dir
from onnxflip.data.preprocess import Preprocess, from_metadata
from onnxflip.errors import OnnxflipError

__all__ = [
    "MODEL_METADATA_KEY",
    "check_labels",
    "image_input",
    "match_classes",
    "model_class_names",
    "open_source",
    "resolve_data",
]

logger = logging.getLogger(__name__)

MODEL_METADATA_KEY = "onnxflip.model"  # JSON: what the model is (its class names in output order, ...)


def _metadata(model: ir.Model | onnx.ModelProto) -> dict[str, str]:
    if isinstance(model, onnx.ModelProto):
        return {p.key: p.value for p in model.metadata_props}
    return dict(model.metadata_props)


# --- choosing the kind ----------------------------------------------------------------------------


def image_input(specs: list[InputSpec] | None, *, where: str) -> InputSpec:
    """The one float image input an image source feeds (``input``, float32, any shape without a model)."""
    if specs is None:
        return InputSpec("input", None, np.dtype(np.float32))
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise OnnxflipError(
            f"{where} feeds one image input but the model takes {len(specs)} ({names}); "
            "give an .npz with one array per input"
        )
    spec = specs[0]
    if spec.dtype.kind != "f" or (spec.shape is not None and len(spec.shape) != 4):
        raise OnnxflipError(
            f"{where} holds images but the model's input {spec.name!r} is {spec.describe()}, not a 4-D float image "
            "batch; give an .npz"
        )
    return spec


def check_labels(source: DataSource, output: InputSpec, *, where: str) -> None:
    """Labels must index the classes of ``output`` (its last axis, when fixed): call it before any work when
    the metric reads labels (a label-free metric may run a 4-class model on 10-class data)."""
    labels = getattr(source, "labels", None)
    if labels is None or len(labels) == 0 or not output.shape:
        return
    classes = output.shape[-1]
    if isinstance(classes, int) and int(labels.max()) >= classes:
        raise OnnxflipError(
            f"{where} has labels up to {int(labels.max())} but the model's output {output.name!r} has {classes} classes"
        )
    names = getattr(source, "classes", None)
    if isinstance(classes, int) and names and len(names) != classes:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        logger.warning("%s has %d class folders (%s) but the model's output %r has %d classes: its labels are "
                       "their sorted order; check --data", where, len(names), shown, output.name, classes)


def model_class_names(model: ir.Model | onnx.ModelProto) -> tuple[str, ...] | None:
    """The class names a model records (``onnxflip.model`` metadata, key ``classes``, in output order), or None."""
    text = _metadata(model).get(MODEL_METADATA_KEY)
    if text is None:
        return None
    try:
        names = json.loads(text).get("classes")
    except (ValueError, AttributeError):
        return None
    return tuple(str(n) for n in names) if isinstance(names, list) and names else None


def match_classes(source: DataSource, model_classes: Sequence[str] | None, *, where: str) -> DataSource:
    """The source with its class folders matched to the model's classes by name (case aside), so that label i
    is the model's output i whatever folders the data has; a folder that is none of the model's classes is an
    error.  Without class names (the model records none and --classes is not given), the source as it is."""
    folders = getattr(source, "classes", None)
    if not folders or not model_classes or tuple(folders) == tuple(model_classes):
        return source
    index = {name.lower(): i for i, name in enumerate(model_classes)}
    unknown = [f for f in folders if f.lower() not in index]
    if unknown:
        shown = ", ".join(model_classes[:6]) + (", ..." if len(model_classes) > 6 else "")
        raise OnnxflipError(f"{where}: class folder {unknown[0]!r} is none of the model's classes ({shown}); "
                            "name the folders as the classes, or give the model's class names with --classes")
    mapping = np.array([index[f.lower()] for f in folders], dtype=np.int64)
    logger.info("%s: %d class folders matched to the model's classes by name", where, len(folders))
    return source.relabelled(mapping, tuple(model_classes))


def resolve_data(data: str | os.PathLike[str] | None) -> pathlib.Path:
    """Where the data is: a file given as it is (an .npz), else the data folder
    (:func:`~onnxflip.data.cifar10.resolve_data_dir`: the argument, $ONNXFLIP_DATA or the default)."""
    if data is not None and pathlib.Path(data).expanduser().is_file():
        return pathlib.Path(data).expanduser()
    return resolve_data_dir(data)


def open_source(
    path: str | os.PathLike[str],
    *,
    model: ir.Model | onnx.ModelProto | None = None,
    preprocess: Preprocess | None = None,
    split: str = "test",
) -> DataSource:
    """The data at ``path`` as a source for ``model``, checked against its inputs before any work.

    ``preprocess`` applies to image sources; without it, the model's
    ``onnxflip.preprocess`` metadata is used, else scaling to [0, 1] at the
    model's input size.  ``split`` picks ``train``, ``val`` or ``test`` in
    trees that have them (``test`` falls back to ``val`` and back).
    """
    root = pathlib.Path(path).expanduser()
    specs = model_inputs(model) if model is not None else None
    if root.is_file():
        if root.suffix.lower() != ".npz":
            raise OnnxflipError(f"data file {root} is not an .npz; give an .npz, an ImageFolder folder or CIFAR-10")
        source: DataSource = npz.open_npz(root, specs=specs)
    elif not root.is_dir():
        raise OnnxflipError(f"data path {root} does not exist")
    else:
        if preprocess is None and model is not None:
            preprocess = from_metadata(_metadata(model))
        spec = image_input(specs, where=str(root))
        preprocess = (preprocess or Preprocess()).for_input(spec.shape)
        if cifar10.pickle_folder(root) is not None:
            source = cifar10.cifar10_source(root, split=split, spec=spec, preprocess=preprocess)
        else:
            source = imagefolder.open_image_folder(root, split=split, spec=spec, preprocess=preprocess)
    return source
