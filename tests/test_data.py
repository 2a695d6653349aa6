"""CIFAR-10 loading from both layouts, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_split, write_image_folder, write_pickle_folder

from onnxflip import OnnxflipError
from onnxflip.data import CLASSES, load_split, resolve_data_dir


@pytest.mark.parametrize("writer", [write_image_folder, write_pickle_folder], ids=["imagefolder", "pickles"])
def test_both_layouts_load_the_same_images_and_labels(tmp_path, writer):
    root = writer(tmp_path, {"train": 5, "test": 3})
    for split, per_class in (("train", 5), ("test", 3)):
        loaded = load_split(root, split)
        assert loaded.images.shape == (10 * per_class, 32, 32, 3) and loaded.images.dtype == np.uint8
        assert np.bincount(loaded.labels).tolist() == [per_class] * 10
        images, labels = synthetic_split(per_class, seed=len(split))
        order = np.lexsort((np.arange(len(labels)), labels))  # the image folder lists class by class
        if writer is write_image_folder:
            images, labels = images[order], labels[order]
        np.testing.assert_array_equal(loaded.labels, labels)
        np.testing.assert_array_equal(loaded.images, images)


# label_names of the official release's batches.meta, in label order
OFFICIAL_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_image_folder_labels_are_the_official_cifar_labels(tmp_path):
    from PIL import Image

    for label in (7, 2, 9, 0, 4, 1, 8, 3, 6, 5):  # folders created out of order
        folder = tmp_path / "test" / OFFICIAL_CLASSES[label]
        folder.mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 20 * label, np.uint8)).save(folder / "0.png")
    loaded = load_split(tmp_path, "test")
    assert loaded.labels.tolist() == [int(image[0, 0, 0]) // 20 for image in loaded.images]
    assert sorted(loaded.labels.tolist()) == list(range(10)) and list(CLASSES) == OFFICIAL_CLASSES


def test_float_images_and_balanced_subsets(tmp_path):
    split = load_split(write_pickle_folder(tmp_path, {"test": 4}), "test")
    x = split.as_float_nchw()
    assert x.shape == (40, 3, 32, 32) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    sub = split.subset(20)
    assert np.bincount(sub.labels).tolist() == [2] * 10
    with pytest.raises(OnnxflipError, match="only 40"):
        split.subset(41)


def test_environment_variable_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXFLIP_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    monkeypatch.delenv("ONNXFLIP_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(OnnxflipError, match="does not exist"):
        resolve_data_dir(None)


def test_missing_folder(tmp_path):
    with pytest.raises(OnnxflipError, match="does not exist"):
        load_split(tmp_path / "nowhere", "test")


def test_folder_in_neither_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(OnnxflipError, match=r"ImageFolder tree .* or the official cifar-10-batches-py"):
        load_split(tmp_path, "test")


def test_class_folder_missing(tmp_path):
    root = write_image_folder(tmp_path, {"test": 1})
    for f in (root / "test" / "frog").iterdir():
        f.unlink()
    (root / "test" / "frog").rmdir()
    with pytest.raises(OnnxflipError, match=r"lacks class folder.*frog"):
        load_split(root, "test")


def test_unreadable_image(tmp_path):
    root = write_image_folder(tmp_path / "d", {"test": 1})
    (root / "test" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(OnnxflipError, match=r"cannot read image .*broken\.png"):
        load_split(root, "test")


def test_broken_pickle(tmp_path):
    root = write_pickle_folder(tmp_path, {"test": 1})
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(OnnxflipError, match="not a CIFAR-10 batch file"):
        load_split(root, "test")


def test_download_goes_through_torchvision_into_the_data_folder(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision", reason="needs the zoo extra: pip install 'onnxflip[zoo]'")

    from onnxflip.data import download

    calls = []

    def fake(root, train, download):
        calls.append((root, train, download))
        if not train:
            write_pickle_folder(tmp_path / "cache", {"test": 1})

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake)
    root = download(tmp_path / "cache")
    assert calls == [(str(tmp_path / "cache"), True, True), (str(tmp_path / "cache"), False, True)]
    assert load_split(root, "test").labels.shape == (10,)
    calls.clear()
    download(tmp_path / "cache")
    assert calls == []  # already there
