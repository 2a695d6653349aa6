"""Data sources: batches of ``{model input name: array}`` plus optional labels.

A ``DataSource`` knows its size, iterates in order without holding more
than a few batches, gives class-balanced nested subsets, and can be decoded
once into memory (``cached``) when it fits.  ``open_source`` picks the kind
from the path:

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import onnx
import onnx_ir as ir

from onnxflip.data.preprocess import Preprocess, from_metadata
from onnxflip.errors import OnnxflipError

__all__ = [
    "ArraySource",
    "Batch",
    "DataSource",
    "InputSpec",
    "balanced_order",
    "check_arrays",
    "check_labels",
    "match_classes",
    "model_class_names",
    "model_inputs",
    "model_outputs",
    "open_source",
    "resolve_data",
]

logger = logging.getLogger(__name__)

MODEL_METADATA_KEY = "onnxflip.model"  # JSON: what the model is (its class names in output order, ...)


@dataclass(frozen=True)
class Batch:
    """Inputs ready for ONNX Runtime, and int64 labels (batch,) or None."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(a for a in self.feeds.values() if a.ndim))


@runtime_checkable
class DataSource(Protocol):
    """Where a campaign's inputs come from."""

    def __len__(self) -> int: ...

    @property
    def has_labels(self) -> bool: ...

    def subset(self, count: int) -> DataSource:
        """The first ``count`` samples in a class-balanced order; subset(a) is a prefix of subset(b) for a < b."""
        ...

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """The samples in order, ``batch_size`` at a time (the last batch may be shorter)."""
        ...

    def cached(self, max_bytes: int) -> DataSource:
        """The same samples decoded once and held in memory if they fit in ``max_bytes``, else ``self``."""
        ...


# --- model inputs and outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """A model input or output: name, shape (an int per fixed axis, a name or None per free one), dtype."""

    name: str
    shape: tuple[int | str | None, ...] | None
    dtype: np.dtype

    def describe(self) -> str:
        if self.shape is None:
            return f"any shape, {self.dtype}"
        dims = ", ".join(str(d) if d is not None else "?" for d in self.shape)
        return f"({dims}{',' if len(self.shape) == 1 else ''}) {self.dtype}"

    def matches(self, array: np.ndarray) -> bool:
        """Same dtype and rank, and equal on every fixed axis but the first (the batch)."""
        if array.dtype != self.dtype:
            return False
        if self.shape is None:
            return True
        if array.ndim != len(self.shape):
            return False
        return all(not isinstance(d, int) or d == n for d, n in zip(self.shape[1:], array.shape[1:]))


def _spec_from_proto(value: onnx.ValueInfoProto) -> InputSpec:
    tensor = value.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    if not tensor.HasField("shape"):
        return InputSpec(value.name, None, dtype)
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
    return InputSpec(value.name, dims, dtype)


def _spec_from_ir(value: ir.Value) -> InputSpec:
    dtype = np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)
    if value.shape is None:
        return InputSpec(value.name, None, dtype)
    dims = tuple(d if isinstance(d, int) else (d.value if d.value else None) for d in value.shape)
    return InputSpec(value.name, dims, dtype)


def model_inputs(model: ir.Model | onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller feeds: graph inputs that are not initializers."""
    if isinstance(model, onnx.ModelProto):
        stored = {i.name for i in model.graph.initializer}
        return [_spec_from_proto(v) for v in model.graph.input if v.name not in stored]
    return [_spec_from_ir(v) for v in model.graph.inputs if v.name not in model.graph.initializers]


def model_outputs(model: ir.Model | onnx.ModelProto) -> list[InputSpec]:
    """The model's outputs, in order."""
    if isinstance(model, onnx.ModelProto):
        return [_spec_from_proto(v) for v in model.graph.output]
    return [_spec_from_ir(v) for v in model.graph.outputs]


def _metadata(model: ir.Model | onnx.ModelProto) -> dict[str, str]:
    if isinstance(model, onnx.ModelProto):
        return {p.key: p.value for p in model.metadata_props}
    return dict(model.metadata_props)


def check_arrays(arrays: dict[str, np.ndarray], specs: list[InputSpec], *, where: str) -> None:
    """Every model input present with a matching shape and dtype; one line naming the first that is not."""
    for spec in specs:
        if spec.name not in arrays:
            held = ", ".join(sorted(arrays)) or "nothing"
            raise OnnxflipError(
                f"{where} has no array for model input {spec.name!r} (expected {spec.describe()}); it holds {held}"
            )
        array = arrays[spec.name]
        if not spec.matches(array):
            raise OnnxflipError(
                f"{where}: input {spec.name!r} is {tuple(array.shape)} {array.dtype}, "
                f"but the model expects {spec.describe()}"
            )


# --- in-memory arrays -----------------------------------------------------------------------------


def balanced_order(labels: np.ndarray | None, count: int) -> np.ndarray:
    """Indices interleaving the classes: every class's first sample (in the order they come), then every
    class's second, ...; without labels, 0..count-1."""
    if labels is None:
        return np.arange(count)
    rank = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        where = np.flatnonzero(labels == cls)
        rank[where] = np.arange(len(where))
    return np.argsort(rank, kind="stable")


def _check_count(count: int, size: int) -> None:
    if count < 1 or count > size:
        raise OnnxflipError(f"asked for {count} samples but the data holds {size}")


class ArraySource:
    """Samples held in memory as one array per input (npz files, cached sources)."""

    def __init__(self, feeds: dict[str, np.ndarray], labels: np.ndarray | None, *, name: str = "arrays",
                 constants: dict[str, np.ndarray] | None = None) -> None:
        """``feeds``: one array per input, the first axis the sample; ``constants``: inputs without a sample axis
        (a Loop's trip count), fed as they are with every batch."""
        sizes = {len(a) for a in feeds.values()} | ({len(labels)} if labels is not None else set())
        if not feeds or len(sizes) != 1:
            raise OnnxflipError(f"{name}: the arrays hold different numbers of samples ({sorted(sizes)})")
        self.feeds = feeds
        self.labels = labels
        self.name = name
        self.constants = dict(constants or {})

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def __repr__(self) -> str:
        return f"ArraySource({self.name!r}, {len(self)} samples)"

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def subset(self, count: int) -> ArraySource:
        _check_count(count, len(self))
        keep = balanced_order(self.labels, len(self))[:count]
        labels = self.labels[keep] if self.labels is not None else None
        return ArraySource({k: v[keep] for k, v in self.feeds.items()}, labels, name=self.name,
                           constants=self.constants)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            labels = self.labels[start:stop] if self.labels is not None else None
            yield Batch({**{k: v[start:stop] for k, v in self.feeds.items()}, **self.constants}, labels)

    def cached(self, max_bytes: int) -> ArraySource:
        return self

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.feeds.values())


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
    from onnxflip.data.cifar10 import resolve_data_dir

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
    from onnxflip.data import cifar10, imagefolder, npz

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
