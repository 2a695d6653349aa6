"""Clean CIFAR-10 test accuracy of the shipped zoo networks and their int8 versions, with ONNX Runtime.

Usage: python benchmarks/zoo_accuracy.py [--data ../shared/cifar10] [--models models]
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import onnx

from onnxflip import make_session
from onnxflip.data import load_split
from onnxflip.zoo.configs import MODELS


def accuracy(path: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> float:
    session = make_session(path)
    name = session.get_inputs()[0].name
    right = 0
    for start in range(0, len(images), 1000):
        (logits,) = session.run(None, {name: images[start : start + 1000]})
        right += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    return right / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/cifar10")
    parser.add_argument("--models", default="models")
    args = parser.parse_args()
    split = load_split(args.data, "test")
    images, labels = split.as_float_nchw(), split.labels
    print(f"{'model':<12} {'width':>5} {'params':>9} {'train min':>9} {'float32':>8} {'int8':>8} {'diff':>6}")
    for name in MODELS:
        path = pathlib.Path(args.models) / f"{name}.onnx"
        if not path.is_file():
            continue
        meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["onnxflip.model"])
        fp = accuracy(path, images, labels)
        int8_path = path.with_name(f"{path.stem}_int8.onnx")
        q = accuracy(int8_path, images, labels) if int8_path.is_file() else float("nan")
        print(f"{path.stem:<12} {meta['width']:>5} {meta['parameters']:>9,} {meta['train_seconds'] / 60:>9.1f} "
              f"{fp:>8.4f} {q:>8.4f} {100 * (q - fp):>+6.2f}")


if __name__ == "__main__":
    main()
