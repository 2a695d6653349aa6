"""Where inputs come from: data sources yielding batches of named input arrays (and labels).

``open_source`` picks the kind from the path: CIFAR-10 (either layout), an
ImageFolder tree, or an ``.npz`` file.  The CIFAR-10 loader of earlier
versions (``load_split``, ``Split``, ``download``, ``resolve_data_dir``) is
still reachable here.
"""

from __future__ import annotations

from onnxflip.data.base import ArraySource, Batch, DataSource, InputSpec, model_inputs
from onnxflip.data.cifar10 import CLASSES, DEFAULT_DATA_DIR, Split, download, load_split, resolve_data_dir
from onnxflip.data.preprocess import PREPROCESS_METADATA_KEY, Preprocess
from onnxflip.data.sources import open_source

__all__ = [
    "CLASSES",
    "DEFAULT_DATA_DIR",
    "PREPROCESS_METADATA_KEY",
    "ArraySource",
    "Batch",
    "DataSource",
    "InputSpec",
    "Preprocess",
    "Split",
    "download",
    "load_split",
    "model_inputs",
    "open_source",
    "resolve_data_dir",
]
