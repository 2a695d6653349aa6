"""The ray executor against the local one: a reproduce grid's wall time, and what Ray costs per task.

1. ``grid``: the reproduce grid (default vgg11,vgg13 x float32,int8, no extra
   cells) run from nothing with the local executor, then with the ray
   executor on a local Ray of ``--workers`` CPUs; the wall time of each, and
   whether every cell's results.json holds the same numbers (seconds aside).
2. ``overhead``: per task, on the same Ray: a no-op actor call, one after
   another (Ray's round trip); and a trial of VGG-11 on ``--tiny-samples``
   samples sent one after another, its wall time in the driver minus the
   trial's own time in the worker (dispatch, the outcome's way back).  Also
   the time to start the workers and the first trial of an experiment on
   each worker (the runner rebuilt from the object store, its clean pass).

Usage: python benchmarks/bench_ray.py --data DIR [--models vgg11,vgg13] [--formats float32,int8] [--samples N]
       [--precision 0.2] [--budget 10m] [--workers 2] [--out results/bench_ray] [--skip-grid] [--ray-first]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import time

from onnxflip.campaign.design import Budget, SearchSettings
from onnxflip.campaign.executors import RayExecutor
from onnxflip.campaign.reproduce import GridSpec, run_grid
from onnxflip.campaign.trials import LocalRunner, TrialSettings
from onnxflip.data.sources import open_source
from onnxflip.metrics import metric_from_spec
from onnxflip.modelio import load_model


def numbers(data):
    if isinstance(data, dict):
        return {k: numbers(v) for k, v in data.items()
                if k not in ("seconds", "wall_seconds", "wall_seconds_this_run", "command")}
    if isinstance(data, list):
        return [numbers(v) for v in data]
    return data


def grid(args, spec: GridSpec, executor, out: pathlib.Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    run_grid(spec, models_dir=pathlib.Path(args.models_dir), data_dir=args.data, out=out, executor=executor)
    return time.perf_counter() - began


def compare(local: pathlib.Path, on_ray: pathlib.Path) -> list[str]:
    """The cells whose results differ beyond their seconds, with what differs."""
    differ = []
    for cell in sorted((local / "cells").iterdir()):
        a = numbers(json.loads((cell / "results.json").read_text()))
        b = numbers(json.loads((on_ray / "cells" / cell.name / "results.json").read_text()))
        if a != b:
            keys = sorted(k for k in a if a.get(k) != b.get(k))
            differ.append(f"{cell.name}: {', '.join(keys)} (samples per trial {a['design']['samples_per_trial']} "
                          f"vs {b['design']['samples_per_trial']}; trials {a['evaluations']} vs {b['evaluations']})")
    return differ


def rounds(folder: pathlib.Path) -> dict:
    """Each cell's search replayed from its recorded trials (no model runs): the batches it asked for one after
    another, i.e. how many trials a cluster could have run at once."""
    from onnxflip.campaign.design import search_midpoint
    from onnxflip.campaign.results import outcomes_from

    class Replay:
        def __init__(self, data: dict) -> None:
            self.samples, self.floor = data["samples"], data["floor"]
            self.recorded = {(o.p, o.trial, o.samples): o for o in outcomes_from(data)}
            self.batches: list[int] = []

        def run(self, p, trials, samples):
            self.batches.append(len(trials))
            return [self.recorded[(p, t, samples)] for t in trials]

    found = {}
    for cell in sorted((folder / "cells").iterdir()):
        data = json.loads((cell / "results.json").read_text())
        search = data["experiment"]["search"]
        settings = SearchSettings(low=search["low"], high=search["high"], precision=search["precision"],
                                  pilot_samples=search["pilot_samples"])
        replay = Replay(data)
        search_midpoint(replay, settings, clock=lambda: 0.0)
        found[cell.name] = {"rounds": len(replay.batches), "trials": sum(replay.batches),
                            "largest_batch": max(replay.batches)}
    return found


def overhead(args, executor: RayExecutor) -> dict:
    ray = executor.ray
    actor = executor.actors[0]
    ray.get(actor.pid.remote())
    calls = []
    for _ in range(args.tasks):
        began = time.perf_counter()
        ray.get(actor.pid.remote())
        calls.append(time.perf_counter() - began)
    began = time.perf_counter()
    ray.get([a.pid.remote() for _ in range(args.tasks) for a in executor.actors])
    batched = (time.perf_counter() - began) / (args.tasks * len(executor.actors))

    model = load_model(pathlib.Path(args.models_dir) / "vgg11.onnx")
    source = open_source(args.data, model=model).subset(args.tiny_samples).cached(2 << 30)
    runner = LocalRunner(model, source, metric_from_spec("top1"), TrialSettings(targets=("activations",)))
    local = [runner.trial(1e-5, t, args.tiny_samples).seconds for t in range(args.tasks)]
    gaps, first = [], []
    with executor.bind(runner) as trials:
        for t in range(len(executor.actors)):  # the first trial on each worker rebuilds the runner
            began = time.perf_counter()
            (outcome,) = trials.run(1e-5, [t], args.tiny_samples)
            first.append(time.perf_counter() - began)
        for t in range(args.tasks):
            began = time.perf_counter()
            (outcome,) = trials.run(1e-5, [t], args.tiny_samples)
            gaps.append(time.perf_counter() - began - outcome.seconds)
    return {"noop_ms": 1e3 * statistics.median(calls), "noop_batched_ms": 1e3 * batched,
            "trial_overhead_ms": 1e3 * statistics.median(gaps), "tiny_trial_local_ms": 1e3 * statistics.median(local),
            "first_trial_on_a_worker_ms": 1e3 * statistics.median(first), "tasks": args.tasks,
            "tiny_samples": args.tiny_samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", default="vgg11,vgg13")
    parser.add_argument("--formats", default="float32,int8")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--precision", type=float, default=0.2)
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=100, help="tasks per overhead measurement")
    parser.add_argument("--tiny-samples", type=int, default=10)
    parser.add_argument("--out", default="results/bench_ray")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--ray-first", action="store_true", help="run the grid on Ray before the local run")
    args = parser.parse_args()

    spec = GridSpec(models=tuple(args.models.split(",")), formats=tuple(args.formats.split(",")), extras=False,
                    samples=args.samples, target_sets=(),  # the grid as measured: activations cells only
                    search=SearchSettings(precision=args.precision, budget=Budget.parse(args.budget)))
    out = pathlib.Path(args.out)
    report = {"grid": {"models": spec.models, "formats": spec.formats, "samples": args.samples or "all",
                       "precision": args.precision, "budget": args.budget, "cells": len(spec.cells())}}
    if not args.skip_grid and not args.ray_first:
        report["local_s"] = grid(args, spec, None, out / "local")
        print(f"local executor: {report['local_s']:.1f} s", flush=True)
    began = time.perf_counter()
    with RayExecutor(num_cpus=args.workers, workers=args.workers) as executor:
        report["ray_start_s"] = time.perf_counter() - began
        if not args.skip_grid:
            report["ray_s"] = grid(args, spec, executor, out / "ray")
            print(f"ray executor: {report['ray_s']:.1f} s", flush=True)
        report["overhead"] = overhead(args, executor)
    if not args.skip_grid:
        if args.ray_first:
            report["local_s"] = grid(args, spec, None, out / "local")
        report["ratio"] = report["ray_s"] / report["local_s"]
        report["cells_that_differ"] = compare(out / "local", out / "ray")
        report["rounds"] = rounds(out / "local")
        for executor in ("local", "ray"):
            trials = [t for cell in sorted((out / executor / "cells").iterdir())
                      for t in json.loads((cell / "results.json").read_text())["trials"]]
            report[f"{executor}_trials"] = len(trials)
            report[f"{executor}_trial_seconds_median"] = statistics.median(t["seconds"] for t in trials)
            report[f"{executor}_samples_evaluated"] = sum(t["samples"] for t in trials)
        print(f"local {report['local_s']:.1f} s, ray ({args.workers} workers) {report['ray_s']:.1f} s: ratio "
              f"{report['ratio']:.2f}; {len(report['cells_that_differ'])} cells differ", flush=True)
    print(json.dumps(report, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_ray.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
