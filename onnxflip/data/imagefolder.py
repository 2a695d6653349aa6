"""Images streamed from disk: an ImageFolder tree, or any list of images decoded on demand.

Layouts of ``DIR``: ``DIR/<class>/*`` (labels are the class folders in sorted
order, as torchvision's ``ImageFolder`` numbers them), ``DIR/{train,val,test}/<class>/*``,
or images directly in ``DIR`` (no labels).  Files are found recursively
under each class folder and kept when their suffix is an image one.

Decoding, resizing and cropping run on worker threads (PIL releases the
GIL); at most ``PREFETCH_BATCHES`` batches are decoded ahead of the one
being used, so memory is bounded by a few batches whatever the set's size.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from onnxflip.data.base import ArraySource, Batch, InputSpec, balanced_order
from onnxflip.data.preprocess import Preprocess
from onnxflip.errors import OnnxflipError

__all__ = ["IMAGE_SUFFIXES", "PREFETCH_BATCHES", "ImageSource", "find_images", "open_image_folder"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
PREFETCH_BATCHES = 2
_LAYOUT_HELP = "expected DIR/<class>/*.jpg, DIR/{train,val,test}/<class>/*.jpg or images in DIR"


def _workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


class ImageSource:
    """Images loaded one by one by ``load(item)`` (uint8 RGB (H, W, 3), resized and cropped), batched and
    normalised by ``preprocess`` into the input ``spec``."""

    def __init__(
        self,
        items: Sequence,
        labels: np.ndarray | None,
        *,
        load: Callable[[object], np.ndarray],
        spec: InputSpec,
        preprocess: Preprocess,
        name: str,
        classes: tuple[str, ...] | None = None,
        workers: int | None = None,
    ) -> None:
        self.items = items
        self.labels = labels
        self.load = load
        self.spec = spec
        self.preprocess = preprocess
        self.name = name
        self.classes = classes
        self.workers = workers or _workers()

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"ImageSource({self.name!r}, {len(self)} images)"

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def subset(self, count: int) -> ImageSource:
        if count < 1 or count > len(self):
            raise OnnxflipError(f"asked for {count} samples but {self.name} holds {len(self)} images")
        keep = balanced_order(self.labels, len(self))[:count]
        return ImageSource(
            [self.items[i] for i in keep], self.labels[keep] if self.labels is not None else None,
            load=self.load, spec=self.spec, preprocess=self.preprocess, name=self.name, classes=self.classes,
            workers=self.workers,
        )

    def relabelled(self, mapping: np.ndarray, classes: tuple[str, ...]) -> ImageSource:
        """The same images with label i read as ``mapping[i]``, of classes ``classes``."""
        labels = mapping[self.labels] if self.labels is not None else None
        if labels is not None:
            labels.setflags(write=False)
        return ImageSource(self.items, labels, load=self.load, spec=self.spec, preprocess=self.preprocess,
                           name=self.name, classes=classes, workers=self.workers)

    def _assemble(self, pixels: list[np.ndarray], start: int) -> np.ndarray:
        shapes = {p.shape for p in pixels}
        if len(shapes) != 1:
            raise OnnxflipError(
                f"{self.name}: images differ in size after preprocessing ({', '.join(map(str, sorted(shapes)))}); "
                "give a resize and crop in the preprocessing spec"
            )
        array = self.preprocess.array(np.stack(pixels), dtype=self.spec.dtype)
        if not self.spec.matches(array):
            raise OnnxflipError(
                f"{self.name}: image {self.items[start]} becomes {tuple(array.shape[1:])} after preprocessing, "
                f"but the model's input {self.spec.name!r} is {self.spec.describe()}"
            )
        return array

    def batches(self, batch_size: int) -> Iterator[Batch]:
        from tqdm import tqdm

        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        starts = iter(range(0, len(self), batch_size))
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="onnxflip-decode")
        pending: collections.deque[tuple[int, list[Future]]] = collections.deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                chunk = self.items[start : start + batch_size]
                pending.append((start, [pool.submit(self.load, item) for item in chunk]))

        bar = tqdm(total=len(self), unit="img", desc=self.name, disable=None, leave=False)
        try:
            for _ in range(1 + PREFETCH_BATCHES):
                submit()
            while pending:
                start, futures = pending.popleft()
                pixels = [f.result() for f in futures]
                feeds = {self.spec.name: self._assemble(pixels, start)}
                labels = self.labels[start : start + len(pixels)] if self.labels is not None else None
                bar.update(len(pixels))
                yield Batch(feeds, labels)
                submit()  # once the caller is done with this batch: PREFETCH_BATCHES decode while it works
        finally:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)

    def cached(self, max_bytes: int) -> ImageSource | ArraySource:
        """All images decoded once into one array when it fits in ``max_bytes``, else this streaming source."""
        first = next(self.subset(1).batches(1)).feeds[self.spec.name]
        needed = first.nbytes * len(self)
        if needed > max_bytes:
            logger.info("%s: %d images need %.2f GB, more than %.2f GB: streaming from disk at every pass",
                        self.name, len(self), needed / 1e9, max_bytes / 1e9)
            return self
        array = np.empty((len(self), *first.shape[1:]), dtype=first.dtype)
        for i, batch in enumerate(self.batches(256)):
            chunk = batch.feeds[self.spec.name]
            array[i * 256 : i * 256 + len(chunk)] = chunk
        return ArraySource({self.spec.name: array}, self.labels, name=self.name, preprocess=self.preprocess)


def find_images(folder: pathlib.Path) -> list[pathlib.Path]:
    """Image files under ``folder``, recursively, in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(pathlib.Path(dirpath) / f for f in sorted(filenames)
                     if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))
    return found


def _pick_split(root: pathlib.Path, split: str) -> pathlib.Path:
    present = [s for s in SPLITS if (root / s).is_dir()]
    if not present:
        return root
    if split in present:
        return root / split
    fallback = {"test": "val", "val": "test"}.get(split)
    if fallback in present:
        logger.info("%s has no %s split: using %s", root, split, fallback)
        return root / fallback
    raise OnnxflipError(f"{root} has split folder(s) {', '.join(present)} but no {split!r}")


def load_image(path: pathlib.Path, preprocess: Preprocess) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return preprocess.image(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise OnnxflipError(f"cannot read image {path}: {exc}") from None
    except OnnxflipError as exc:
        raise OnnxflipError(f"{path}: {exc}") from None


def open_image_folder(root: pathlib.Path, *, split: str, spec: InputSpec, preprocess: Preprocess) -> ImageSource:
    """The images of an ImageFolder tree (or a flat folder of images) as a streaming source."""
    folder = _pick_split(root, split)
    if folder == root and root.name in SPLITS and root.name != split:
        logger.warning("%s is a %s split, read here as the %s data; give its parent to read the %s split", root,
                       root.name, split, split)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[pathlib.Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = find_images(folder / cls)
        files.extend(found)
        labels.extend([label] * len(found))
    if not files:
        flat = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)]
        if not flat:
            raise OnnxflipError(f"{folder} holds no images ({_LAYOUT_HELP})")
        logger.info("%s: %d images without class folders, so without labels", folder, len(flat))
        files, label_array = flat, None
    else:
        label_array = np.asarray(labels, dtype=np.int64)
        label_array.setflags(write=False)
        logger.info("%s: %d images in %d classes", folder, len(files), len(classes))
    return ImageSource(files, label_array, load=functools.partial(load_image, preprocess=preprocess), spec=spec,
                       preprocess=preprocess, name=str(folder), classes=tuple(classes) if label_array is not None else None)
