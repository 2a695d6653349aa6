"""What every data source is built from: the model inputs it feeds, batches, the class-balanced order, and
samples held in memory.

:class:`InputSpec` describes a model input (or output); :func:`model_inputs`
lists the inputs a caller feeds; a :class:`DataSource` yields
:class:`Batch` es of them; :func:`balanced_order` is the one class-balanced
order every source's ``subset`` takes its samples in; :class:`ArraySource`
holds samples as arrays.  The kinds of source (:mod:`~onnxflip.data.npz`,
:mod:`~onnxflip.data.cifar10`, :mod:`~onnxflip.data.imagefolder`) build on
this module, and :mod:`~onnxflip.data.sources` chooses among them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import onnx
import onnx_ir as ir

from onnxflip.errors import OnnxflipError
from onnxflip.graph.inputs import data_inputs

if TYPE_CHECKING:
    from onnxflip.data.preprocess import Preprocess

__all__ = [
    "ArraySource",
    "Batch",
    "DataSource",
    "InputSpec",
    "balanced_order",
    "check_arrays",
    "model_inputs",
    "model_outputs",
]


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

    preprocess: Preprocess | None  # how images became inputs (an image source's); None: arrays fed as they are

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
    """The inputs a caller feeds (graph inputs that are not initializers, :func:`~onnxflip.graph.inputs.data_inputs`),
    as specs."""
    if isinstance(model, onnx.ModelProto):
        stored = {i.name for i in model.graph.initializer}
        return [_spec_from_proto(v) for v in model.graph.input if v.name not in stored]
    return [_spec_from_ir(v) for v in data_inputs(model)]


def model_outputs(model: ir.Model | onnx.ModelProto) -> list[InputSpec]:
    """The model's outputs, in order."""
    if isinstance(model, onnx.ModelProto):
        return [_spec_from_proto(v) for v in model.graph.output]
    return [_spec_from_ir(v) for v in model.graph.outputs]


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
                 constants: dict[str, np.ndarray] | None = None, preprocess: Preprocess | None = None) -> None:
        """``feeds``: one array per input, the first axis the sample; ``constants``: inputs without a sample axis
        (a Loop's trip count), fed as they are with every batch; ``preprocess``: how they were made from images
        (an image source's cache), None for arrays given as they are."""
        sizes = {len(a) for a in feeds.values()} | ({len(labels)} if labels is not None else set())
        if not feeds or len(sizes) != 1:
            raise OnnxflipError(f"{name}: the arrays hold different numbers of samples ({sorted(sizes)})")
        self.feeds = feeds
        self.labels = labels
        self.name = name
        self.constants = dict(constants or {})
        self.preprocess = preprocess

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
                           constants=self.constants, preprocess=self.preprocess)

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
