"""float32 trials with FlipBits on ONNX Runtime's NCHWc tensors, against the plain placement and the clean model.

The shipped VGG-11 in float32, activation sites only and all targets.  Per
case, three passes over the same batches alternate in every repeat: the
clean model (a plain ONNX Runtime loop, its session built once, as in
bench_placement.py), one `LocalRunner` trial at p = 1e-5 as `evaluate` runs
it now (activation FlipBits on the blocked NCHWc tensors of the graph ONNX
Runtime optimised, onnxflip/runtime/nchwc.py), and the same trial in the
plain placement (FlipBits between a ReorderOutput and a ReorderInput, as
before; made here by giving the runner no blocked template).  Prints the
best images/s of each, the paired median and range of clean time / trial
time over the repeats, the accuracies, and ONNX Runtime's per-node profile
shares of one batch in the session each trial runs.

Usage: python benchmarks/bench_nchwc.py [--data DIR] [--samples 10000] [--batch-size 500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import pathlib
import tempfile
import time
from unittest import mock

import numpy as np

from onnxflip import make_session
from onnxflip.campaign import trials
from onnxflip.campaign.trials import LocalRunner, TrialSettings, mix_seed
from onnxflip.data import load_split
from onnxflip.data.base import ArraySource
from onnxflip.metrics import metric_from_spec
from onnxflip.modelio import load_model
from onnxflip.runtime.nchwc import nchwc_block_size

MODEL = pathlib.Path(__file__).resolve().parent.parent / "models" / "vgg11.onnx"
P = 1e-5
CASES = {"activations": ("activations",), "all targets": ("activations", "weights", "biases")}


def runner(source: ArraySource, targets: tuple[str, ...], batch: int, *, blocked: bool) -> LocalRunner:
    """A runner whose template is made (by a first trial) with or without FlipBits on NCHWc tensors."""
    made = LocalRunner(load_model(MODEL), source, metric_from_spec("top1"),
                       TrialSettings(format="float32", targets=targets, batch_size=batch))
    plain = contextlib.nullcontext() if blocked else mock.patch.object(trials, "blocked_template", return_value=None)
    with plain:
        made.trial(P, 0, batch)
    return made


def clean_pass(session, images: np.ndarray, batch: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[s : s + batch]})[0].argmax(axis=1)
                           for s in range(0, len(images), batch)])


def profile_shares(made: LocalRunner, images: np.ndarray, batch: int) -> tuple[dict[str, float], float]:
    """Percent of kernel time per op type, and kernel ms per batch, over three runs of one batch in the session
    the trial runs."""
    with tempfile.TemporaryDirectory() as tmp:
        options = trials.session_options

        def profiled(**kwargs):
            opts = options(**kwargs)
            opts.enable_profiling = True
            opts.profile_file_prefix = str(pathlib.Path(tmp) / "profile")
            return opts

        with mock.patch.object(trials, "session_options", profiled):
            trial = made._session(P, P, mix_seed(0, 0))
        rates = (P, P, 0.0, 0.0)
        for b in range(3):
            made._outputs(trial.session, trial.inputs, {"input": images[:batch]}, b, rates)
        events = json.loads(pathlib.Path(trial.session.end_profiling()).read_text())
    times: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"]
    total = sum(times.values())
    return {op: round(100 * t / total, 1) for op, t in times.most_common() if t / total >= 0.005}, total / 3000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/cifar10")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    split = load_split(args.data, "test").subset(args.samples)
    images, labels, n, batch = split.as_float_nchw(), split.labels, args.samples, args.batch_size
    source = ArraySource({"input": images}, labels)
    clean = make_session(load_model(MODEL))
    print(f"{n} images, batch {batch}, one trial at p = {P:g}, {args.repeats} repeats, NCHWc block "
          f"{nchwc_block_size()}")
    print(f"clean accuracy {float((clean_pass(clean, images, batch) == labels).mean()):.4f}")
    for label, targets in CASES.items():
        runners = {"blocked": runner(source, targets, batch, blocked=True),
                   "plain": runner(source, targets, batch, blocked=False)}
        seconds: dict[str, list[float]] = collections.defaultdict(list)
        accuracy = {}
        for _ in range(args.repeats):
            start = time.perf_counter()
            clean_pass(clean, images, batch)
            seconds["clean"].append(time.perf_counter() - start)
            for name, made in runners.items():
                start = time.perf_counter()
                accuracy[name] = made.trial(P, 0, n).score
                seconds[name].append(time.perf_counter() - start)
        clean_s = np.array(seconds["clean"])
        print(f"float32, {label}: clean {n / clean_s.min():.0f} images/s")
        for name in runners:
            ratios = clean_s / np.array(seconds[name])
            print(f"    {name}: {n / min(seconds[name]):.0f} images/s, accuracy {accuracy[name]:.4f}, vs clean: "
                  f"best {clean_s.min() / min(seconds[name]):.2f}x, paired median {np.median(ratios):.2f}x "
                  f"(range {ratios.min():.2f}-{ratios.max():.2f}x)")
        for name, made in runners.items():
            shares, ms = profile_shares(made, images, batch)
            print(f"    {name} profile (% of {ms:.0f} ms kernel time per batch): {shares}")


if __name__ == "__main__":
    main()
