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

The realistic regimes add what measured trials show: each sample is right or
wrong when clean, once and for all (``fixed_clean``: a clean-wrong sample stays
wrong unless damage makes it guess right), and a trial's damage varies from
trial to trial (``trial_spread``: its curve is shifted by eta_t ~ N(0, spread^2)
decades), so that many trials are partly damaged:

* ``float32``: ruin and partly damaged trials, as float32 weights and
  activations give (near the midpoint about 40% of the trials intact, 30%
  ruined, 30% between);
* ``int8``: no ruin, most trials partly damaged (int8: about 55% between).
* ``exact``: activation flips on samples of fixed correctness whose
  fragility spreads by 0.3 decades, each falling as a Weibull curve: every
  trial nearly exact (its normalised score varies by about 0.018 at the
  midpoint on 500 samples, as VGG-A's float16 activation trials do), and a
  curve, the spread's average of Weibull curves, that no fitted family is.

Trials are simulated sample by sample, and record the block means the image
term's jackknife reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from onnxflip.campaign.design import TrialOutcome, block_means
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
    trial_spread: float = 0.0  # sd of a trial's own shift of the smooth curve, decades
    fixed_clean: bool = False  # each sample right or wrong when clean, once and for all


REGIMES = {
    "smooth": Regime("smooth", (-4.5, 2.0, 1.0), None),
    "ruinous": Regime("ruinous", None, (-5.5, 1.0, 1e-6)),
    "mixture": Regime("mixture", (-4.6, 3.0, 1.0), (-4.9, 1.0, 1e-6)),
    "edge": Regime("edge", None, (-8.6, 1.0, 1e-6)),
    "steep": Regime("steep", (-4.5, 8.0, 1.0), None, spread=0.05),
    "float32": Regime("float32", (-4.6, 3.0, 1.0), (-4.9, 1.0, 1e-6), trial_spread=0.3, fixed_clean=True),
    "int8": Regime("int8", (-2.5, 2.5, 1.0), None, spread=0.3, trial_spread=0.4, fixed_clean=True),
    "exact": Regime("exact", (-4.55, 3.0, 0.01), None, spread=0.3, fixed_clean=True),
}

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(24)  # E over a standard normal: sum(w f(x)) / sqrt(2 pi)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


class SimulatedRunner:
    """A TrialRunner whose trials are drawn, sample by sample, from a regime's known curve."""

    def __init__(self, regime: Regime, seed: int) -> None:
        self.regime = regime
        self.rng = np.random.default_rng(seed)
        self.delta = self.rng.normal(0.0, regime.spread, regime.samples)
        if regime.fixed_clean:
            self.right = (self.rng.random(regime.samples) < CLEAN).astype(np.float64)
        else:
            self.right = np.full(regime.samples, CLEAN)
        self.samples = regime.samples
        self.floor = FLOOR
        self.elapsed = 0.0

    def clock(self) -> float:
        return self.elapsed

    def chances(self, x: float, n: int) -> np.ndarray:
        """Each of the first n samples' chance of being right in one trial at x that is not ruined."""
        if self.regime.smooth is None:
            return self.right[:n]
        shift = self.rng.normal(0.0, self.regime.trial_spread) if self.regime.trial_spread else 0.0
        s = survival(x + shift + self.delta[:n], self.regime.smooth)
        return self.right[:n] * s + FLOOR * (1 - s) if self.regime.fixed_clean else FLOOR + (CLEAN - FLOOR) * s

    def survival(self, x: float) -> float:
        if self.regime.ruin is None:
            return 1.0
        return float(survival(x, self.regime.ruin))

    def expected_z(self, x: float, samples: int | None = None) -> float:
        """The mean normalised score of the first ``samples`` samples (all N) over infinitely many trials at x."""
        right, delta = self.right[:samples], self.delta[:samples]
        clean = float(right.mean())
        if self.regime.smooth is None:
            intact = clean
        else:
            s = np.array([survival(x + eta + delta, self.regime.smooth) for eta in self.regime.trial_spread * _NODES])
            chances = right * s + FLOOR * (1 - s) if self.regime.fixed_clean else FLOOR + (CLEAN - FLOOR) * s
            intact = float(np.sum(_WEIGHTS * chances.mean(axis=1)))
        return self.survival(x) * (intact - FLOOR) / (clean - FLOOR)

    def true_midpoint(self) -> float:
        return optimize.brentq(lambda x: self.expected_z(x) - 0.5, -12.0, 0.0, xtol=1e-6)

    def run(self, p: float, trials, samples: int) -> list[TrialOutcome]:
        out = []
        for t in trials:
            seconds = self.regime.overhead + self.regime.per_sample * samples
            self.elapsed += seconds
            if p == 0:
                scores = self.right[:samples]
            else:
                x = math.log10(p)
                ruined = self.rng.random() > self.survival(x)
                chances = np.full(samples, FLOOR) if ruined else self.chances(x, samples)
                scores = (self.rng.random(samples) < chances).astype(np.float64)
            out.append(TrialOutcome(p, t, samples, float(scores.mean()), float(scores.var(ddof=1)), seconds=seconds,
                                    block_scores=block_means(scores, self.samples)))
        return out
