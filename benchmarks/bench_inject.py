"""Throughput of a VGG on ONNX Runtime CPU: clean vs injected (activations + weights + biases, p=1e-5), per format.

"in-graph": one session, weight flips recomputed by FlipBits at every run.
"per-trial": weights and biases flipped once per trial and made constants
(what `onnxflip evaluate` runs), activations flipped in the graph.
Usage: python benchmarks/bench_inject.py MODEL.onnx [--int8 MODEL_INT8.onnx] [--batch 100] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxflip import make_session
from onnxflip.faults import FaultModel
from onnxflip.graph.config import InjectionConfig, control_input_name
from onnxflip.graph.inject import convert_format, insert_flipbits
from onnxflip.graph.passes.materialize import materialize_parameters
from onnxflip.graph.sites import TARGETS
from onnxflip.modelio import load_model


def session(model: ir.Model, threads: int | None) -> ort.InferenceSession:
    return make_session(model, threads=threads)


def throughput(sess: ort.InferenceSession, feeds: dict, batch: int, seconds: float) -> float:
    sess.run(None, feeds)
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        sess.run(None, feeds)
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--int8", help="QDQ model for the int8 row")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    x = np.random.default_rng(0).random((args.batch, 3, 32, 32), dtype=np.float32)
    controls = {control_input_name(t, k): np.array(1e-5, np.float32) for t in TARGETS for k in ("p01", "p10")}
    act = {k: v for k, v in controls.items() if k.startswith("onnxflip_activations")}
    print(f"batch {args.batch}, threads {args.threads or 'default'}; images/s (ratio to clean)")
    print(f"{'format':<9} {'clean':>9} {'in-graph':>16} {'per-trial':>16}")
    formats = ["float32", "float16", "bfloat16", "float64"] + (["int8"] if args.int8 else [])
    for fmt in formats:
        source = load_model(args.int8 if fmt == "int8" else args.model)
        clean = source if fmt == "int8" else convert_format(source, format=fmt)
        config = InjectionConfig(format=fmt, activations=FaultModel(randomness="fixed"))
        injected = insert_flipbits(source, config=config)
        base = throughput(session(clean, args.threads), {"input": x}, args.batch, args.seconds)
        graph = throughput(session(injected, args.threads), {"input": x, **controls}, args.batch, args.seconds)
        trial = throughput(session(materialize_parameters(injected, controls), args.threads), {"input": x, **act},
                           args.batch, args.seconds)
        print(f"{fmt:<9} {base:>9.0f} {graph:>9.0f} ({graph / base:.2f}) {trial:>9.0f} ({trial / base:.2f})")


if __name__ == "__main__":
    main()
