"""Trial cost against a warm clean pass, and the evaluation loop on the whole test set.

1. ``trial``: one trial (flipped weights and biases bound into the trial's own
   session, activations flipped in the graph when targeted) on N samples,
   against a warm ONNX Runtime pass of the clean model over the same batches,
   alternating, median of R repeats.  The issue's target: at most 1.25 at 500
   samples, targets weights and biases.  Also the ratio of the process's CPU
   time (all threads), which other work on a shared machine disturbs less.
   With ``--breakdown``, then the parts of a trial on the first batch, each
   timed alone (flipping the parameters; flipping, binding them and creating
   the session; the session's first pass), beside a warm clean pass.
2. ``loop``: the same on the whole test set at p = 1e-5, all targets (images/s).

Usage: python benchmarks/bench_evaluate.py MODEL.onnx --data DIR [--samples 500] [--targets weights,biases]
       [--format FMT] [--repeats 9] [--breakdown]
"""

from __future__ import annotations

import argparse
import statistics
import time

from onnxflip.campaign.trials import LocalRunner, TrialSettings, mix_seed, probabilities_for
from onnxflip.data.sources import open_source
from onnxflip.graph.passes.materialize import parameter_flips
from onnxflip.metrics import metric_from_spec
from onnxflip.modelio import load_model
from onnxflip.runtime.session import make_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--targets", default="weights,biases")
    parser.add_argument("--format", default="float32")
    parser.add_argument("--p", type=float, default=3e-6)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args()

    model = load_model(args.model)
    source = open_source(args.data, model=model).subset(args.samples).cached(2 << 30)
    settings = TrialSettings(format=args.format, targets=tuple(args.targets.split(",")), batch_size=args.batch_size)
    runner = LocalRunner(model, source, metric_from_spec("top1"), settings)
    clean = make_session(model)
    batches = list(source.batches(args.batch_size))

    def clean_pass() -> None:
        for batch in batches:
            clean.run(None, batch.feeds)

    clean_pass()
    runner.trial(args.p, 0, args.samples)
    clean_s, trial_s, clean_cpu, trial_cpu = [], [], [], []
    for t in range(args.repeats):
        began, cpu = time.perf_counter(), time.process_time()
        clean_pass()
        clean_s.append(time.perf_counter() - began)
        clean_cpu.append(time.process_time() - cpu)
        began, cpu = time.perf_counter(), time.process_time()
        runner.trial(args.p, 1 + t, args.samples)
        trial_s.append(time.perf_counter() - began)
        trial_cpu.append(time.process_time() - cpu)
    c, r = statistics.median(clean_s), statistics.median(trial_s)
    cpu_ratio = statistics.median(trial_cpu) / statistics.median(clean_cpu)
    print(f"{args.model} {args.format} targets {args.targets}, {args.samples} samples, p={args.p:g}: "
          f"warm clean pass {c * 1000:.1f} ms, trial {r * 1000:.1f} ms, ratio {r / c:.2f} "
          f"(CPU time ratio {cpu_ratio:.2f}; median of {args.repeats}, alternating)")
    if args.breakdown:
        breakdown(runner, clean, batches, args.p, args.repeats)


def breakdown(runner: LocalRunner, clean, batches: list, p: float, repeats: int) -> None:
    """Median wall and CPU time of each part of a trial on the first batch, each timed alone, and of a warm
    clean pass over that batch."""
    p01, p10 = probabilities_for(p, runner.settings.direction)
    batch = batches[0]
    times: dict[str, list[tuple[float, float]]] = {}

    def timed(part: str, call, *args):
        began, cpu = time.perf_counter(), time.process_time()
        value = call(*args)
        times.setdefault(part, []).append((time.perf_counter() - began, time.process_time() - cpu))
        return value

    for t in range(repeats):
        timed("warm clean pass", clean.run, None, batch.feeds)
        seed = mix_seed(runner.settings.seed, 1 + t)
        controls = runner._controls(p01, p10, seed)
        timed("flip the parameters (kernel)", parameter_flips, runner.injected, controls)
        session = timed("flip, bind and create the session", runner._session, p01, p10, seed).session
        timed("the session's first pass", session.run, [runner.output], batch.feeds)
        del session
    for part, values in times.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"  {part}: {wall * 1000:.1f} ms (CPU {cpu * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
