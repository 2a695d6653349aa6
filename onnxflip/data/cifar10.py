"""CIFAR-10 loading: an ImageFolder tree or the official pickle batches.

Accepted layouts for a data folder ``DIR``:

* ImageFolder: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` with the
  ten CIFAR-10 class folders (``airplane`` ... ``truck``);
* the official Python release: ``DIR/data_batch_1`` ... ``DIR/test_batch``,
  or the same files inside ``DIR/cifar-10-batches-py/``.

The folder is the ``--data`` option, else the ``ONNXFLIP_DATA`` environment
variable, else ``DEFAULT_DATA_DIR``.  Decoded splits are kept in memory, so
a sweep decodes the test set once per process.  ``cifar10_source`` serves
the pickle layout as a data source (``open_source`` reads the ImageFolder
layout as any ImageFolder tree).
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import pickle
from dataclasses import dataclass

import numpy as np

from onnxflip.data.base import InputSpec, balanced_order
from onnxflip.data.imagefolder import ImageSource
from onnxflip.data.preprocess import Preprocess
from onnxflip.errors import OnnxflipError

__all__ = [
    "CLASSES",
    "DEFAULT_DATA_DIR",
    "Split",
    "cifar10_source",
    "download",
    "load_split",
    "pickle_folder",
    "resolve_data_dir",
]

logger = logging.getLogger(__name__)

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
DEFAULT_DATA_DIR = pathlib.Path("~/.cache/onnxflip/cifar10")
DATA_ENV_VAR = "ONNXFLIP_DATA"
_PICKLE_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
_LAYOUTS_HELP = (
    "expected an ImageFolder tree (train/<class>/*.jpg, test/<class>/*.jpg) "
    "or the official cifar-10-batches-py folder (data_batch_1..5, test_batch)"
)


@dataclass(frozen=True)
class Split:
    """One split of CIFAR-10: uint8 images (N, 32, 32, 3) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int) -> Split:
        """The first ``count`` examples, with every class kept in proportion."""
        if count > len(self):
            raise OnnxflipError(
                f"asked for {count} samples but the split has only {len(self)}"
            )
        keep = np.sort(balanced_order(self.labels, len(self))[:count])
        return Split(self.images[keep], self.labels[keep])

    def as_float_nchw(self) -> np.ndarray:
        """Images as float32 NCHW in [0, 1], the input onnxflip models take."""
        return np.ascontiguousarray(self.images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> pathlib.Path:
    """The data folder: the argument, else $ONNXFLIP_DATA, else the default."""
    chosen = data_dir or os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_DIR
    path = pathlib.Path(chosen).expanduser()
    if path.is_file():
        raise OnnxflipError(f"{path} is a file; this needs a data folder ({_LAYOUTS_HELP})")
    if not path.is_dir():
        raise OnnxflipError(f"data folder {path} does not exist: give --data DIR (or ${DATA_ENV_VAR}), or add "
                            f"--download to fetch the official CIFAR-10 release into it (needs internet); "
                            f"{_LAYOUTS_HELP}")
    return path


def download(data_dir: str | os.PathLike[str] | None) -> pathlib.Path:
    """Fetch the official CIFAR-10 release with torchvision into the data folder (needs internet)."""
    chosen = pathlib.Path(data_dir or os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_DIR).expanduser()
    if pickle_folder(chosen) is not None:
        return chosen
    import torchvision

    chosen.mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            torchvision.datasets.CIFAR10(str(chosen), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - network and archive errors alike
        raise OnnxflipError(f"downloading CIFAR-10 into {chosen} failed: {exc}") from None
    return chosen


def load_split(data_dir: str | os.PathLike[str] | None, split: str) -> Split:
    """Load the ``train`` or ``test`` split from a folder in either layout."""
    if split not in _PICKLE_FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = resolve_data_dir(data_dir).resolve()
    return _load_cached(root, split)


@functools.lru_cache(maxsize=4)
def _load_cached(root: pathlib.Path, split: str) -> Split:
    pickles = pickle_folder(root)
    if pickles is not None:
        logger.info("reading CIFAR-10 %s split from pickles in %s", split, pickles)
        return _read_pickles(pickles, split)
    if (root / split).is_dir():
        logger.info("reading CIFAR-10 %s split from image folder %s", split, root / split)
        return _read_image_folder(root / split)
    raise OnnxflipError(f"{root} holds no CIFAR-10 {split} split; {_LAYOUTS_HELP}")


def pickle_folder(root: pathlib.Path) -> pathlib.Path | None:
    """The folder holding the official pickle batches under ``root``, if any."""
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file():
            return candidate
    return None


def _read_pickles(folder: pathlib.Path, split: str) -> Split:
    images, labels = [], []
    for name in _PICKLE_FILES[split]:
        path = folder / name
        try:
            with path.open("rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            images.append(data.transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except FileNotFoundError:
            raise OnnxflipError(f"CIFAR-10 batch file {path} is missing") from None
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
            raise OnnxflipError(f"{path} is not a CIFAR-10 batch file ({exc})") from None
    return _checked(np.concatenate(images), np.concatenate(labels), folder)


def _read_image_folder(folder: pathlib.Path) -> Split:
    from PIL import Image, UnidentifiedImageError

    present = sorted(p.name for p in folder.iterdir() if p.is_dir())
    missing = [c for c in CLASSES if c not in present]
    if missing:
        raise OnnxflipError(
            f"{folder} lacks class folder(s) {', '.join(missing)}; {_LAYOUTS_HELP}"
        )
    images, labels = [], []
    for label, cls in enumerate(CLASSES):
        for path in sorted((folder / cls).iterdir()):
            if not path.is_file():
                continue
            try:
                with Image.open(path) as img:
                    pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise OnnxflipError(f"cannot read image {path}: {exc}") from None
            if pixels.shape != (32, 32, 3):
                raise OnnxflipError(f"image {path} is {pixels.shape[1]}x{pixels.shape[0]}, not 32x32")
            images.append(pixels)
            labels.append(label)
    if not images:
        raise OnnxflipError(f"{folder} holds no images; {_LAYOUTS_HELP}")
    return _checked(np.stack(images), np.asarray(labels, dtype=np.int64), folder)


def _checked(images: np.ndarray, labels: np.ndarray, where: pathlib.Path) -> Split:
    if images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise OnnxflipError(f"{where}: images of shape {images.shape[1:]} do not look like CIFAR-10")
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise OnnxflipError(f"{where}: labels outside 0..9")
    images.setflags(write=False)
    labels.setflags(write=False)
    return Split(images, labels)


def cifar10_source(root: pathlib.Path, *, split: str, spec: InputSpec, preprocess: Preprocess):
    """A split of the pickle layout as a data source: the decoded uint8 images, preprocessed batch by batch."""
    data = load_split(root, split)
    return ImageSource(range(len(data)), data.labels, load=functools.partial(_pixels, data.images, preprocess),
                       spec=spec, preprocess=preprocess, name=f"{root} ({split})", classes=CLASSES)


def _pixels(images: np.ndarray, preprocess: Preprocess, index: int) -> np.ndarray:
    if preprocess.resize in (None, 32, (32, 32)) and preprocess.crop in (None, 32, (32, 32)):
        return images[index]
    from PIL import Image

    return preprocess.image(Image.fromarray(images[index]))
