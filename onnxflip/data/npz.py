"""NumPy inputs: an ``.npz`` holding one array per model input name, plus an optional ``labels`` array.

Each array's first axis is the sample; any count of inputs and any dtype
(float images, int64 token ids, attention masks), exactly as the model takes
them; for a decoder with past key values, ``input_ids`` alone (the mask and
an empty past are made, see :mod:`onnxflip.data.decoder`).  An input the model declares as a scalar (a Loop's trip count) is a
0-d array, fed as it is with every batch.  ``labels`` are integer class indices, one per sample.  The file is
read into memory whole (for image sets larger than memory, use an
ImageFolder tree, which streams).

    np.savez("inputs.npz", input_ids=ids, attention_mask=mask, labels=y)
"""

from __future__ import annotations

import logging
import pathlib
import zipfile

import numpy as np

from onnxflip.data.base import ArraySource, InputSpec, check_arrays
from onnxflip.data.decoder import complete_arrays
from onnxflip.errors import OnnxflipError

__all__ = ["LABELS_KEY", "open_npz"]

logger = logging.getLogger(__name__)

LABELS_KEY = "labels"


def _read(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise OnnxflipError(f"cannot read {path} as an .npz file ({exc})") from None


def _labels(array: np.ndarray, path: pathlib.Path) -> np.ndarray:
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise OnnxflipError(f"{path}: labels must be integers of shape (samples,), not {array.shape} {array.dtype}")
    if len(array) and array.min() < 0:
        raise OnnxflipError(f"{path}: labels must be class indices >= 0")
    labels = array.astype(np.int64)
    labels.setflags(write=False)
    return labels


def open_npz(path: pathlib.Path, *, specs: list[InputSpec] | None) -> ArraySource:
    """The arrays of an .npz as a source, checked against the model's inputs (names, shapes, dtypes)."""
    arrays = _read(path)
    input_names = {s.name for s in specs} if specs is not None else set(arrays) - {LABELS_KEY}
    labels = None
    if LABELS_KEY in arrays and LABELS_KEY not in input_names:
        labels = _labels(arrays.pop(LABELS_KEY), path)
    if specs is not None:
        arrays = complete_arrays(arrays, specs, where=str(path))  # a decoder's mask and empty past
        check_arrays(arrays, specs, where=str(path))
        extra = sorted(set(arrays) - input_names)
        if extra:
            logger.warning("%s: ignoring array(s) %s, which are not model inputs", path, ", ".join(extra))
    feeds = {name: arrays[name] for name in sorted(input_names)}
    if not feeds:
        raise OnnxflipError(f"{path} holds no input arrays")
    scalar_inputs = {s.name for s in specs if s.shape is not None and len(s.shape) == 0} if specs is not None else set()
    for name, array in feeds.items():
        if array.ndim == 0 and name not in scalar_inputs:
            raise OnnxflipError(f"{path}: array {name!r} is a scalar; the first axis must be the sample")
        array.setflags(write=False)
    if specs is not None:
        feeds = {s.name: feeds[s.name] for s in specs}
    constants = {name: feeds.pop(name) for name in scalar_inputs}
    if not feeds:
        raise OnnxflipError(f"{path}: every input is a scalar; at least one must hold samples (first axis)")
    source = ArraySource(feeds, labels, name=str(path), constants=constants)
    if len(source) == 0:
        raise OnnxflipError(f"{path} holds no samples")
    return source
