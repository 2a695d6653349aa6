"""Simulated campaigns with a known true curve, for the estimator's and the design's coverage tests.

A simulated test set has N samples; sample i at log10 p = x is scored right
with probability ``floor + (clean - floor) * S(x + delta_i)`` (samples differ in
how fragile they are, delta_i ~ N(0, spread^2)), so a subset of the samples has
a curve of its own and the estimand is the midpoint of the whole set's curve.
Regimes:

* ``smooth``: every trial degrades a little (activation flips): a trial's score
  is Binomial(n, A_n(x)) / n.
* ``ruinous``: a trial is ruined with probability 1 - R(x) (a flip in a high
  exponent bit of a float32 weight; R is Weibull in p, shape 1) and then scores
  at the floor, else like a clean model: bimodal trials.
* ``mixture``: both at once, the ruin midpoint 0.3 decades from the smooth one
  (neither fitted family is the true curve).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from onnxflip.campaign.design import TrialOutcome
from onnxflip.campaign.estimate import survival

CLEAN, FLOOR = 0.85, 0.1


@dataclass
class Regime:
    name: str
    smooth: tuple[float, float, float] | None  # (midpoint, steepness, shape lambda) of the smooth degradation
    ruin: tuple[float, float, float] | None  # (midpoint, steepness, shape lambda) of the survival from ruin
    spread: float = 0.2  # sample fragility spread, decades
    samples: int = 10000
    overhead: float = 0.03  # simulated seconds per trial, plus per sample below
    per_sample: float = 1e-5


REGIMES = {
    "smooth": Regime("smooth", (-4.5, 2.0, 1.0), None),
    "ruinous": Regime("ruinous", None, (-5.5, 1.0, 1e-6)),
    "mixture": Regime("mixture", (-4.6, 3.0, 1.0), (-4.9, 1.0, 1e-6)),
    "edge": Regime("edge", None, (-8.6, 1.0, 1e-6)),
    "steep": Regime("steep", (-4.5, 8.0, 1.0), None, spread=0.05),
}


class SimulatedRunner:
    """A TrialRunner whose trials are drawn from a regime's known curve."""

    def __init__(self, regime: Regime, seed: int) -> None:
        self.regime = regime
        self.rng = np.random.default_rng(seed)
        self.delta = self.rng.normal(0.0, regime.spread, regime.samples)
        self.samples = regime.samples
        self.floor = FLOOR
        self.elapsed = 0.0
        self._subset_cache: dict[tuple[int, float], float] = {}

    def clock(self) -> float:
        return self.elapsed

    def smooth_mean(self, x: float, n: int) -> float:
        """A_n(x): the expected score of the first n samples, without ruin."""
        key = (n, x)
        if key not in self._subset_cache:
            if self.regime.smooth is None:
                value = CLEAN
            else:
                value = FLOOR + (CLEAN - FLOOR) * float(np.mean(survival(x + self.delta[:n], self.regime.smooth)))
            self._subset_cache[key] = value
        return self._subset_cache[key]

    def survival(self, x: float) -> float:
        if self.regime.ruin is None:
            return 1.0
        return float(survival(x, self.regime.ruin))

    def expected_z(self, x: float) -> float:
        return self.survival(x) * (self.smooth_mean(x, self.samples) - FLOOR) / (CLEAN - FLOOR)

    def true_midpoint(self) -> float:
        return optimize.brentq(lambda x: self.expected_z(x) - 0.5, -12.0, 0.0, xtol=1e-6)

    def run(self, p: float, trials, samples: int) -> list[TrialOutcome]:
        out = []
        for t in trials:
            seconds = self.regime.overhead + self.regime.per_sample * samples
            self.elapsed += seconds
            if p == 0:
                out.append(TrialOutcome(0.0, t, samples, CLEAN, CLEAN * (1 - CLEAN), seconds=seconds))
                continue
            x = math.log10(p)
            mean = self.smooth_mean(x, samples)
            if self.rng.random() > self.survival(x):
                mean = FLOOR
            score = self.rng.binomial(samples, mean) / samples
            out.append(TrialOutcome(p, t, samples, score, mean * (1 - mean), seconds=seconds))
        return out
