"""Statistics of a sweep: confidence intervals of accuracy and the midpoint.

Confidence interval of the mean accuracy over T trials on one test set of N
images: each image's correctness is averaged over the trials, c_i = (times
right) / T, and the interval is that of the mean of the N values c_i
(Student's t with N - 1 degrees of freedom).  Images are the sampling units,
so the interval covers both the sampling of the test set and the
trial-to-trial flip randomness (whose variance is inside each c_i).  When all
c_i are equal (every image always right, say) it is the Wilson score
interval of the N * T outcomes.

Midpoint: the probability where accuracy equals (clean + chance) / 2, found
by linear interpolation in log10(p) between the two measured points that
bracket it; its interval is where the upper and the lower confidence bounds
cross the same level.
"""

from __future__ import annotations

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


def accuracy_interval(correct_counts: Sequence[int] | np.ndarray, trials: int, confidence: float = 0.95) -> Interval:
    """Interval of the mean accuracy from per-image counts of correct trials (out of ``trials``)."""
    c = np.asarray(correct_counts, dtype=np.float64) / trials
    n = len(c)
    if n < 2 or np.all(c == c[0]):
        return wilson_interval(int(round(c.sum() * trials)), n * trials, confidence)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * c.std(ddof=1) / math.sqrt(n)
    mean = float(c.mean())
    return Interval(max(0.0, mean - half), min(1.0, mean + half))


def midpoint_level(clean: float, chance: float) -> float:
    return (clean + chance) / 2


def crossing(ps: Sequence[float], values: Sequence[float], level: float) -> float | None:
    """The first p (from small to large) where ``values`` falls through ``level``, interpolated in log10(p)."""
    pairs = sorted((p, v) for p, v in zip(ps, values) if p > 0)
    for (p0, v0), (p1, v1) in zip(pairs, pairs[1:]):
        if v0 >= level > v1 or (v0 > level >= v1):
            if v0 == v1:
                return p0
            x0, x1 = math.log10(p0), math.log10(p1)
            return 10 ** (x0 + (level - v0) * (x1 - x0) / (v1 - v0))
    return None
