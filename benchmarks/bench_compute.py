"""A format computed natively against its float32 emulation: midpoints and trial cost, side by side.

For each cell (model, format), runs ``onnxflip evaluate MODEL --format F
--compute C --targets activations --midpoint`` with C = native and C =
float32, as a user would (a fresh process each), and prints the midpoint, its
interval, the trials, the wall time and the mean time of a trial.  The MLP
(3072-512-256-10, ReLU) is trained here on the training split for a few
epochs (never committed): ONNX Runtime's CPU provider runs every op of it in
float64 (Gemm, Relu), so its native float64 needs no rewrite; the shipped
MobileNetV2 needs its float64 Conv and pools written in other ops
(:mod:`onnxflip.graph.passes.lower_float64`).

With ``--timing MODELS``, instead: the time of one run of each model
injected (p = 0) in float32, and in float16 and float64 with each compute,
on one batch of 500 test images, the median of 5 runs after a warm-up, side
by side in one process.

Usage: python benchmarks/bench_compute.py [--data ../shared/cifar10] [--cells mlp:float64,mobilenetv2s:float64]
       [--precision 0.2] [--budget 180s] [--out results/bench-compute]
       python benchmarks/bench_compute.py --timing vgg11,resnet20,mobilenetv2s
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np


def train_mlp(data: str, path: pathlib.Path, *, epochs: int = 4, seed: int = 0) -> pathlib.Path:
    """A 3072-512-256-10 MLP on the training split, exported in float32 (opset 17)."""
    import torch

    from onnxflip.data import load_split

    split = load_split(data, "train")
    raw = torch.from_numpy(split.as_float_nchw()).reshape(len(split), -1)
    mean, std = raw.mean(0), raw.std(0)
    x = (raw - mean) / (std + 1e-6)
    y = torch.from_numpy(np.asarray(split.labels, np.int64))
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3072, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(256):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            optimiser.step()

    class Normalised(torch.nn.Module):  # the images as the data source gives them, normalised inside
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, images):
            return self.net((images.flatten(1) - self.mean) / (self.std + 1e-6))

    model = Normalised().eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    return path


def timing(models: list[str], data: str) -> None:
    """One run's time per (format, compute), at p = 0, 500 images."""
    from onnxflip.data import load_split
    from onnxflip.graph.config import InjectionConfig
    from onnxflip.graph.inject import insert_flipbits
    from onnxflip.modelio import load_model
    from onnxflip.runtime.session import make_session

    images = load_split(data, "test").as_float_nchw()[:500]
    cells = [("float32", "native"), ("float16", "float32"), ("float16", "native"), ("float64", "float32"),
             ("float64", "native")]
    for name in models:
        model = load_model(f"models/{name}.onnx")
        times = {}
        for fmt, compute in cells:
            session = make_session(insert_flipbits(model, config=InjectionConfig(format=fmt, compute=compute)))
            feeds = {session.get_inputs()[0].name: images}
            session.run(None, feeds)
            runs = []
            for _ in range(5):
                began = time.perf_counter()
                session.run(None, feeds)
                runs.append(time.perf_counter() - began)
            times[(fmt, compute)] = float(np.median(runs))
        base = times[("float32", "native")]
        print(f"{name}: " + "; ".join(f"{f} {c} {t * 1e3:.0f} ms ({t / base:.2f}x)" for (f, c), t in times.items()),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/cifar10")
    parser.add_argument("--cells", default="mlp:float64,mobilenetv2s:float64")
    parser.add_argument("--precision", type=float, default=0.2)
    parser.add_argument("--budget", default="180s")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/bench-compute"))
    parser.add_argument("--timing", default=None, help="comma-separated shipped models: time one run instead")
    args = parser.parse_args()
    if args.timing:
        timing(args.timing.split(","), args.data)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for cell in args.cells.split(","):
        name, fmt = cell.split(":")
        model = train_mlp(args.data, args.out / "mlp.onnx") if name == "mlp" else pathlib.Path(f"models/{name}.onnx")
        for compute in ("native", "float32"):
            out = args.out / f"{name}-{fmt}-{compute}"
            command = [sys.executable, "-m", "onnxflip.cli", "evaluate", str(model), "--data", args.data,
                       "--format", fmt, "--compute", compute, "--targets", "activations", "--midpoint",
                       "--precision", str(args.precision), "--budget", args.budget, "--out", str(out), "--overwrite"]
            began = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - began
            result = json.loads((out / "results.json").read_text())
            mid = result["midpoint"]
            trial = np.mean([t["seconds"] for t in result["trials"] if t["p"] > 0])
            span = f"[{mid['low']:.3g}, {mid['high']:.3g}]" if mid.get("low") else "(no interval)"
            print(f"{name} {fmt} compute {compute}: clean {result['clean_score']:.4f}, midpoint {mid['p']:.3g} {span}, "
                  f"{result['evaluations']} trials of {result['design']['samples_per_trial']} samples, "
                  f"{trial:.2f} s per trial, {wall:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()
