"""Injected inference against clean inference, side by side in one run: where the flips are placed.

For each case, images/s of one `LocalRunner` trial at p = 1e-5 (weights and
biases flipped and made constants for the trial, a session built, then
every batch run with new activation flips: what `onnxflip evaluate` does per
trial) against a plain ONNX Runtime loop over the same batches of the clean
model (its session built once, outside the timing, as in bench_evaluate.py).
They alternate: the best of --repeats of each, and the median and range of
the ratios of the passes run side by side in one repeat.  int8 has two clean references: the
QDQ model as ONNX Runtime runs it by default (on x86 without VNNI its
uint8 x int8 kernels saturate, see onnxflip/graph/passes/qlinear.py) and the same model
in the exact integer form the injected one uses (keep_integer_kernels, no flips).

Cases: the shipped VGG-11 int8 with activation sites only and with all
targets, each in the placement `inject` writes now (uint8 storage,
channels-last integer ops, onnxflip.graph.passes.qlinear) and in the earlier one
(FlipBits between QuantizeLinear and DequantizeLinear, which ONNX Runtime
cannot fuse); the shipped VGG-11 float32 with all targets.  Then the share
of each op type in ONNX Runtime's per-node profile of one batch, and the op
counts of the graph ONNX Runtime runs, for each injected model (for float32
that is the injected model as `inject` writes it, FlipBits between layout
reorders; a float32 trial runs FlipBits on the NCHWc tensors instead, whose
profile benchmarks/bench_nchwc.py prints).

Usage: python benchmarks/bench_placement.py [--data DIR] [--samples 10000] [--batch-size 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import tempfile
import time

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxflip import make_session
from onnxflip.campaign.trials import LocalRunner, TrialSettings
from onnxflip.data import load_split
from onnxflip.data.base import ArraySource
from onnxflip.graph.config import control_input_name
from onnxflip.graph.inject import plan_sites
from onnxflip.graph.passes import InsertFlipBitsPass, StoreInFormatPass
from onnxflip.graph.passes.materialize import materialize_parameters
from onnxflip.graph.passes.qlinear import keep_integer_kernels
from onnxflip.metrics import metric_from_spec
from onnxflip.modelio import load_model
from onnxflip.runtime.session import runtime_bytes, session_options

MODELS = pathlib.Path(__file__).resolve().parent.parent / "models"
P = 1e-5


def earlier_placement(model: ir.Model, settings: TrialSettings) -> ir.Model:
    """FlipBits on the int8 tensors between Q and DQ only, as `inject` wrote int8 models before the qlinear passes."""
    config = settings.injection()
    prepared, fmt, sites = plan_sites(model, config)
    return ir.passes.Sequential(StoreInFormatPass(fmt, sites), InsertFlipBitsPass(config, sites))(prepared).model


def clean_references() -> dict[pathlib.Path, dict[str, ort.InferenceSession]]:
    int8, float32 = MODELS / "vgg11_int8.onnx", MODELS / "vgg11.onnx"
    return {
        int8: {"clean (ORT default)": make_session(load_model(int8)),
               "clean (exact integer)": make_session(keep_integer_kernels(load_model(int8)))},
        float32: {"clean": make_session(load_model(float32))},
    }


def cases(images: np.ndarray, labels: np.ndarray, batch: int) -> list[tuple[str, pathlib.Path, LocalRunner]]:
    result = []
    source = ArraySource({"input": images}, labels)
    top1 = metric_from_spec("top1")
    for fmt, name in (("int8", "vgg11_int8"), ("float32", "vgg11")):
        path = MODELS / f"{name}.onnx"
        model = load_model(path)
        target_sets = [("activations",), ("activations", "weights", "biases")] if fmt == "int8" else [
            ("activations", "weights", "biases")]
        for targets in target_sets:
            settings = TrialSettings(format=fmt, targets=targets, batch_size=batch)
            label = f"{name}, {'all targets' if len(targets) == 3 else 'activations'}"
            result.append((label, path, LocalRunner(model, source, top1, settings)))
            if fmt == "int8":
                earlier = LocalRunner(earlier_placement(model, settings), source, top1, settings)
                result.append((f"{label}, earlier placement", path, earlier))
    return result


def plain_pass(session: ort.InferenceSession, images: np.ndarray, batch: int) -> np.ndarray:
    """The predicted classes."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[start : start + batch]})[0].argmax(axis=1)
                           for start in range(0, len(images), batch)])


def trial_model(evaluator: LocalRunner) -> ir.Model:
    """The model one trial at P runs (parameter flips as constants)."""
    controls = {}
    for target in ("weights", "biases"):
        if target in evaluator.targets:
            controls |= {control_input_name(target, "p01"): np.array(P, np.float32),
                         control_input_name(target, "p10"): np.array(P, np.float32)}
    return materialize_parameters(evaluator.injected, controls)


def profile_shares(model: ir.Model, batch: np.ndarray, feeds: dict) -> dict[str, float]:
    """Percent of kernel time per op type over three runs of one batch (ONNX Runtime's profiler)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(pathlib.Path(tmp) / "profile")
        session = ort.InferenceSession(runtime_bytes(model), options, providers=["CPUExecutionProvider"])
        for _ in range(3):
            session.run(None, {session.get_inputs()[0].name: batch, **feeds})
        events = json.loads(pathlib.Path(session.end_profiling()).read_text())
    times: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"]
    total = sum(times.values())
    return {op: round(100 * t / total, 1) for op, t in times.most_common() if t / total >= 0.005}


def optimised_ops(model: ir.Model) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options()
        options.optimized_model_filepath = str(pathlib.Path(tmp) / "optimised.onnx")
        ort.InferenceSession(runtime_bytes(model), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
    return dict(collections.Counter(n.op_type for n in nodes).most_common())


def paired(clean_s: list[float], trial_s: list[float]) -> str:
    """The ratios of the passes run side by side (clean time / injected time of the same repeat): their median
    and range, which a slow spell of the machine moves less than the best-of ratio."""
    ratios = np.array(clean_s) / np.array(trial_s)
    return f"paired median {np.median(ratios):.2f}x, range {ratios.min():.2f}-{ratios.max():.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/cifar10")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    split = load_split(args.data, "test").subset(args.samples)
    images, labels, n = split.as_float_nchw(), split.labels, args.samples
    print(f"{n} images, batch {args.batch_size}, one trial at p = {P:g}, best of {args.repeats}")
    references = clean_references()
    for label, path, evaluator in cases(images, labels, args.batch_size):
        accuracy = {name: float((plain_pass(session, images, args.batch_size) == labels).mean())
                    for name, session in references[path].items()}
        trial_accuracy = evaluator.trial(P, 0, n).score
        plain_s: dict[str, list[float]] = collections.defaultdict(list)
        trial_s = []
        for _ in range(args.repeats):
            for name, session in references[path].items():
                start = time.perf_counter()
                plain_pass(session, images, args.batch_size)
                plain_s[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            evaluator.trial(P, 0, n)
            trial_s.append(time.perf_counter() - start)
        ratios = ", ".join(f"{name} {n / min(times):.0f} images/s, accuracy {accuracy[name]:.4f} "
                           f"({min(times) / min(trial_s):.2f}x; {paired(times, trial_s)})"
                           for name, times in plain_s.items())
        print(f"{label}: injected {n / min(trial_s):.0f} images/s, accuracy {trial_accuracy:.4f}; {ratios}")
        model = trial_model(evaluator)
        activations = {control_input_name("activations", "p01"): np.array(P, np.float32),
                       control_input_name("activations", "p10"): np.array(P, np.float32)}
        print(f"    profile shares (%): {profile_shares(model, images[: args.batch_size], activations)}")
        print(f"    optimised graph: {optimised_ops(model)}")


if __name__ == "__main__":
    main()
