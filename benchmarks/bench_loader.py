"""Streaming ImageFolder loader against the evaluation it feeds, and its peak memory.

1. Images/s of one pass of the streaming ImageFolder source (decode, resize
   256, centre crop 224, normalise; decoding on worker threads), with no
   model run: the loader alone.
2. Peak resident memory of the process during that pass (``ru_maxrss``,
   measured before any model is loaded, so the high-water mark is the
   loader's), and the bound the design promises: a few batches.
3. Images/s of the model on the same batches already in memory: the clean
   model, and the model with FlipBits on every activation, weight and bias
   at p = 1e-5 (what an evaluation trial runs).

The loader is not the bottleneck when (1) is above (3).  Without ``--data``
the script writes ``--images`` JPEGs of ``--photo-size`` pixels (random
smooth pictures) to a temporary ImageFolder of 10 classes first; without
``--model`` it exports torchvision's ResNet-18 with random weights.

Usage: python benchmarks/bench_loader.py [--data DIR] [--model M.onnx] [--images 10000] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import tempfile
import time

import numpy as np

from onnxflip import make_session
from onnxflip.data import Preprocess, open_source
from onnxflip.faults import FaultModel
from onnxflip.graph.config import InjectionConfig
from onnxflip.graph.inject import insert_flipbits
from onnxflip.modelio import load_model, save_model


def rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def write_photos(root: pathlib.Path, count: int, size: tuple[int, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(folder / f"{i:06d}.jpg", quality=90)


def export_resnet18(path: pathlib.Path, size: int) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(torchvision.models.resnet18(weights=None).eval(), (torch.rand(2, 3, size, size),),
                                input_names=["input"], output_names=["logits"], dynamic_shapes=({0: batch},),
                                dynamo=True, optimize=True, verbose=False)
    save_model(program.model_proto, path)


def model_rate(session, batches: list[dict], images: int) -> float:
    session.run(None, batches[0])  # warm-up
    start = time.perf_counter()
    for feeds in batches:
        session.run(None, feeds)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, help="an ImageFolder tree (default: write one)")
    parser.add_argument("--model", type=pathlib.Path, help="an ONNX model taking (N, 3, 224, 224) (default: ResNet-18)")
    parser.add_argument("--images", type=int, default=10000, help="images to write (without --data)")
    parser.add_argument("--photo-size", type=int, nargs=2, default=(320, 256), metavar=("W", "H"))
    parser.add_argument("--size", type=int, default=224, help="crop size; resize is size * 8 / 7 (256 for 224)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--model-images", type=int, default=500, help="images the model throughput is measured on")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "photos"
            start = time.perf_counter()
            write_photos(data, args.images, tuple(args.photo_size))
            print(f"wrote {args.images} JPEGs of {args.photo_size[0]}x{args.photo_size[1]} "
                  f"in {time.perf_counter() - start:.0f} s")
        preprocess = Preprocess(resize=args.size * 8 // 7, crop=args.size, mean=(0.485, 0.456, 0.406),
                                std=(0.229, 0.224, 0.225), layout="NCHW")
        source = open_source(data, preprocess=preprocess)

        before, base_peak = current_rss_mib(), rss_mib()
        start = time.perf_counter()
        count = 0
        for batch in source.batches(args.batch_size):
            count += len(batch)
        loader_s = time.perf_counter() - start
        peak = rss_mib()
        batch_mib = args.batch_size * 3 * args.size**2 * 4 / 2**20

        model_path = args.model
        if model_path is None:
            model_path = tmp / "resnet18.onnx"
            export_resnet18(model_path, args.size)
        sample = source.subset(min(args.model_images, len(source))).cached(1 << 34)
        batches = [b.feeds for b in sample.batches(args.batch_size)]
        clean_rate = model_rate(make_session(str(model_path)), batches, len(sample))
        noisy = insert_flipbits(load_model(model_path), config=InjectionConfig(
            activations=FaultModel.symmetric(1e-5, randomness="per_run"),
            weights=FaultModel.symmetric(1e-5), biases=FaultModel.symmetric(1e-5)))
        noisy_rate = model_rate(make_session(noisy), batches, len(sample))

    print("| measure | value |\n| --- | --- |")
    print(f"| images | {count} ({args.size}x{args.size} after resize {args.size * 8 // 7} and crop) |")
    print(f"| loader, decode + preprocess | {count / loader_s:.0f} images/s ({source.workers} threads) |")
    print(f"| model, clean | {clean_rate:.0f} images/s |")
    print(f"| model, FlipBits at p = 1e-5 | {noisy_rate:.0f} images/s |")
    print(f"| peak memory during the loader pass | {peak:.0f} MiB (process at start {before:.0f} MiB, "
          f"earlier peak {base_peak:.0f} MiB; one batch = {batch_mib:.0f} MiB) |")
    verdict = "not the bottleneck" if count / loader_s > noisy_rate else "THE BOTTLENECK"
    print(f"\nthe loader is {verdict}: {count / loader_s:.0f} vs {noisy_rate:.0f} images/s")


if __name__ == "__main__":
    main()
