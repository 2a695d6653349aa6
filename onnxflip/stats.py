"""Statistics of a sweep: confidence intervals of accuracy and the midpoint.

Confidence interval of the mean accuracy over T trials on one test set of N
images.  The outcomes form an images x trials table of right/wrong; both
images (the test set is a sample) and trials (flips are random, and one flip
can ruin a whole trial) are random effects.  The variance of the grand mean
of such a crossed two-way table is estimated from its mean squares,

    V = (MS_trials + MS_images - MS_error) / (N T),

and the interval is mean +- t * sqrt(V), Student's t at the Satterthwaite
degrees of freedom (few trials give a wide interval, as they should).  With
one trial, or when every outcome is the same, it is the Wilson score interval
of the N T outcomes (test-set sampling only).

Midpoint: the probability where accuracy equals (clean + chance) / 2, found
by linear interpolation in log10(p) between the two measured points that
bracket it; its interval is where the upper and the lower confidence bounds
cross the same level.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["Interval", "accuracy_interval", "crossing", "midpoint_level", "wilson_interval"]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a binomial proportion."""
    if n <= 0:
        return Interval(0.0, 1.0)
    z = scipy_stats.norm.ppf(0.5 + confidence / 2)
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def accuracy_interval(outcomes: np.ndarray, confidence: float = 0.95) -> Interval:
    """Interval of the mean accuracy from a (trials, images) table of right (1) / wrong (0)."""
    c = np.asarray(outcomes, dtype=np.float64)
    if c.ndim == 1:
        c = c[None, :]
    trials, n = c.shape
    grand = float(c.mean())
    if trials < 2 or n < 2 or np.all(c == c.flat[0]):
        return wilson_interval(round(float(c.sum())), c.size, confidence)
    by_trial = c.mean(axis=1)
    by_image = c.mean(axis=0)
    ms_trials = n * float(((by_trial - grand) ** 2).sum()) / (trials - 1)
    ms_images = trials * float(((by_image - grand) ** 2).sum()) / (n - 1)
    residual = c - by_trial[:, None] - by_image[None, :] + grand
    ms_error = float((residual**2).sum()) / ((trials - 1) * (n - 1))
    scale = n * trials
    variance = max((ms_trials + ms_images - ms_error) / scale, ms_images / scale / trials, 0.0)
    parts = ((ms_trials / scale) ** 2 / (trials - 1) + (ms_images / scale) ** 2 / (n - 1)
             + (ms_error / scale) ** 2 / ((trials - 1) * (n - 1)))
    dof = variance**2 / parts if parts > 0 else math.inf
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, max(dof, 1.0))) * math.sqrt(variance)
    return Interval(max(0.0, grand - half), min(1.0, grand + half))


def midpoint_level(clean: float, chance: float) -> float:
    return (clean + chance) / 2


def crossing(ps: Sequence[float], values: Sequence[float], level: float) -> float | None:
    """The first p (from small to large) where ``values`` falls through ``level``, interpolated in log10(p)."""
    pairs = sorted((p, v) for p, v in zip(ps, values) if p > 0)
    for (p0, v0), (p1, v1) in itertools.pairwise(pairs):
        if v0 >= level > v1 or (v0 > level >= v1):
            if v0 == v1:
                return p0
            x0, x1 = math.log10(p0), math.log10(p1)
            return 10 ** (x0 + (level - v0) * (x1 - x0) / (v1 - v0))
    return None
