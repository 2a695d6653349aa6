"""Where the next trials go: bracket, bisect, then a sequential design for the midpoint.

The search, given a bracket [low, high] in p:

1. The clean score on the first ``pilot_samples`` samples (p = 0).
2. Two trials at each end of the bracket (more when an end is ambiguous);
   if the scores do not fall through the midpoint level between them, the
   result says on which side of the range the midpoint lies.
3. Bisection in log10 p, two trials per point, until the bracket is one
   decade wide.
4. Six trials (``PILOT_TRIALS``) at the estimated midpoint (the middle of
   the bracket while no curve fits).  Their spread measures the
   variance components: sigma_T^2 between trials (one flip can ruin a whole
   trial) and the spread between samples.  The number of samples per trial n
   is then chosen to reach the target width at the least cost (time per
   trial = a + b n, both measured): many trials on few samples when trials
   dominate, every sample when samples dominate (Cochran, *Sampling
   Techniques*, 3rd ed., 1977, section 10.6, two-stage sampling).
5. Sequential design: fit the curve (:mod:`onnxflip.campaign.estimate`),
   stop when the midpoint's interval is at most ``precision`` decades wide
   or the budget is spent; else put the next trials at the candidate point
   (around the midpoint, in steps of the fitted curve's scale) that most
   reduces the predicted variance of the midpoint (c-optimal design;
   Atkinson, Donev & Tobias, *Optimum Experimental Designs*, 2007, ch. 17).
   At each look the samples per trial are revisited: where scoring n of the
   N samples (the image term) takes more than half of the variance the
   precision allows, later trials score more samples.  Where two looks in a
   row find that the budget cannot reach the precision at the pace measured,
   the search says so in one line, once.

The estimand is the midpoint of the mean score over all N samples, over
infinitely many trials.  A trial that scores the first n < N of them adds an
image term, estimated on the normalised scale (score - floor) / (clean -
floor) by a delete-a-block jackknife: every trial records the mean score of
each block of ``image_block_size(N)`` consecutive samples (the clean pass
too), and the image term is how much the mean normalised score of the trials
near the midpoint moves when one block is left out of every trial and of its
clean score (the first n samples taken as a random sample of the N, with the
finite-population factor 1 - n/N).  Whether a sample is right when clean
cancels on that scale, and the part of the spread that is each trial's own
noise (already in the fit's variance) is taken out (Efron & Stein, 1981; Wolter,
*Introduction to Variance Estimation*, 2nd ed., 2007, ch. 4).

Trials are numbered per probability: trial t at p always uses the same
seeds, so a point visited twice gets new trials, never repeated ones.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from onnxflip.campaign.estimate import MIN_TRIALS, PointData, _jacobian, fit_curve, survival, with_profile
from onnxflip.errors import OnnxflipError

__all__ = ["Budget", "SearchSettings", "TrialOutcome", "TrialRunner", "block_means", "check_fall", "has_fall",
           "image_block_size", "search_midpoint"]

logger = logging.getLogger(__name__)

_LN10 = math.log(10.0)
GRID_STEP = 0.05  # decades: design points are snapped to this grid, so a point is revisited rather than crowded
BRACKET_TRIALS = 2
END_TRIALS = 20  # at most, at an end that is neither clearly intact nor clearly ruined
PILOT_TRIALS = 6
IMAGE_BLOCKS = 1000  # at most this many blocks of samples over the N: a block holds ceil(N / 1000) samples
NEAR = 1.5  # trials within this many units of the fitted curve's scale (1 / (k ln 10)) of the midpoint are "near"
DESIGN_MARGIN = 1.0  # decades beyond the bracket where the design may still place trials (a midpoint near an end)
LOOK_MARGIN = 1.1  # plan a little beyond the trials the last width says are needed
_SPREAD = (0.0, -0.3, 0.3, -0.15, 0.15, -0.6, 0.6)  # decades around the estimate, while there is no interval


def has_fall(clean: float, floor: float) -> bool:
    """Whether the clean score lies above the floor: scores are measured as the share of the fall from one to
    the other."""
    return clean - floor > 1e-9


def check_fall(clean: float, floor: float) -> None:
    """Refuses a clean score at or below the floor: there is no fall to measure."""
    if not has_fall(clean, floor):
        raise OnnxflipError(f"the clean score {clean:.4g} is not above the floor {floor:.4g}: there is no fall to "
                            "measure")


@dataclass(frozen=True)
class TrialOutcome:
    """One trial: the model scored on the first ``samples`` samples at probability p."""

    p: float
    trial: int
    samples: int
    score: float  # mean metric over the samples
    sample_variance: float  # variance of the per-sample scores within this trial
    nonfinite: float = 0.0
    seconds: float = 0.0
    seed: int = 0
    # With ECC, per target: the words read corrected, detected and silently wrong, and the words read
    words: dict[str, dict[str, int]] | None = None
    # The mean score of each block of image_block_size(N) consecutive samples, for the image term
    block_scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.block_scores is not None and not isinstance(self.block_scores, tuple):
            object.__setattr__(self, "block_scores", tuple(self.block_scores))  # as read back from JSON

    def to_json(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k not in ("words", "block_scores") or v is not None}
        if self.block_scores is not None:
            data["block_scores"] = [round(v, 6) for v in self.block_scores]
        return data


def image_block_size(total: int) -> int:
    """Samples per block of a trial's ``block_scores`` when the estimand is over ``total`` samples."""
    return max(1, -(-int(total) // IMAGE_BLOCKS))


def block_means(scores: np.ndarray, total: int) -> tuple[float, ...]:
    """The mean of each block of ``image_block_size(total)`` consecutive per-sample scores (the last may be
    shorter)."""
    size = image_block_size(total)
    scores = np.asarray(scores, dtype=np.float64)
    starts = np.arange(0, len(scores), size)
    return tuple(float(v) for v in np.add.reduceat(scores, starts) / np.diff(np.append(starts, len(scores))))


class TrialRunner(Protocol):
    """What the design needs from an executor."""

    samples: int  # N: the samples that define the estimand
    floor: float  # the score of a ruined model

    def run(self, p: float, trials: Sequence[int], samples: int) -> list[TrialOutcome]:
        """Run the given trials (p = 0: the clean score) on the first ``samples`` samples."""
        ...


@dataclass(frozen=True)
class Budget:
    """When to give up: wall seconds, or a number of trials (either, or neither)."""

    seconds: float | None = None
    trials: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Budget:
        """``300s``, ``5m``, ``2h`` (time) or ``400`` (trials)."""
        if text is None or str(text).strip() == "":
            return cls()
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([smh]?)\s*", str(text).lower())
        if not match:
            raise OnnxflipError(f"cannot read the budget {text!r}; use seconds (300s), minutes (5m), hours (2h) "
                                "or a number of trials (400)")
        value, unit = float(match.group(1)), match.group(2)
        if value <= 0:
            raise OnnxflipError(f"the budget {text!r} must be positive")
        if unit:
            return cls(seconds=value * {"s": 1, "m": 60, "h": 3600}[unit])
        if value != int(value):
            raise OnnxflipError(f"a budget in trials must be a whole number, not {text!r}")
        return cls(trials=int(value))

    def describe(self) -> str:
        if self.seconds is not None:
            return f"{self.seconds:g} s"
        return f"{self.trials} trials" if self.trials is not None else "none"


@dataclass(frozen=True)
class SearchSettings:
    """The midpoint search: bracket, target width, budget, and the samples per trial of the pilot."""

    low: float = 1e-9
    high: float = 1e-2
    precision: float = 0.2  # total width of the 95% interval of log10 p at which the search stops
    budget: Budget = field(default_factory=Budget)
    pilot_samples: int = 500
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.low < self.high <= 1.0:
            raise OnnxflipError(f"the bracket {self.low:g}:{self.high:g} needs 0 < LOW < HIGH <= 1")
        if not self.precision > 0:
            raise OnnxflipError(f"the precision must be a positive width in decades, not {self.precision:g}")
        minimum = 1 + 2 * BRACKET_TRIALS
        if self.budget.trials is not None and self.budget.trials < minimum:
            raise OnnxflipError(f"a budget of {self.budget.trials} trials cannot even bracket the midpoint "
                                f"(that takes {minimum}: the clean pass and two trials at each end)")

    @classmethod
    def from_range(cls, text: str, **kwargs) -> SearchSettings:
        """The search over a ``LOW:HIGH`` bracket as given on the command line (either order)."""
        try:
            low, high = sorted(float(v) for v in text.split(":"))
        except ValueError:
            raise OnnxflipError(f"cannot read the bracket {text!r}; use LOW:HIGH, e.g. 1e-9:1e-2") from None
        if not 0.0 < low < high <= 1.0:
            raise OnnxflipError(f"the bracket {text!r} needs 0 < LOW < HIGH <= 1")
        return cls(low=low, high=high, **kwargs)

    def to_json(self) -> dict:
        return {"low": self.low, "high": self.high, "precision": self.precision, "confidence": self.confidence,
                "budget": {"seconds": self.budget.seconds, "trials": self.budget.trials},
                "pilot_samples": self.pilot_samples}


def _grid_p(x: float) -> float:
    """The probability of a design point: log10 p snapped to the design grid."""
    return float(10.0 ** (round(x / GRID_STEP) * GRID_STEP))


class _Campaign:
    """The trials so far, their unit-scale scores, and the budget."""

    def __init__(self, runner: TrialRunner, settings: SearchSettings, clock: Callable[[], float],
                 on_trials: Callable[[list[TrialOutcome]], None] | None) -> None:
        self.runner, self.settings, self.clock = runner, settings, clock
        self.on_trials = on_trials
        self.began = clock()
        self.outcomes: list[TrialOutcome] = []
        self.clean: dict[int, float] = {}
        self.clean_blocks: dict[int, tuple[float, ...] | None] = {}
        self.clean_seconds: dict[int, float] = {}
        self.next_trial: dict[float, int] = defaultdict(int)
        self.samples = min(runner.samples, settings.pilot_samples)
        self.last_fit = None
        self.z_by_p: dict[float, list[float]] = defaultdict(list)

    # --- running
    def spent(self) -> float:
        return self.clock() - self.began

    def trials_run(self) -> int:
        return len(self.outcomes)

    def over_budget(self) -> bool:
        budget = self.settings.budget
        return ((budget.seconds is not None and self.spent() >= budget.seconds)
                or (budget.trials is not None and self.trials_run() >= budget.trials))

    def ensure_clean(self, samples: int) -> float:
        if samples not in self.clean:
            (outcome,) = self.runner.run(0.0, [0], samples)
            self.clean[samples] = outcome.score
            self.clean_blocks[samples] = outcome.block_scores
            self.clean_seconds[samples] = outcome.seconds
            self.outcomes.append(outcome)
            if self.on_trials:
                self.on_trials([outcome])
            check_fall(outcome.score, self.runner.floor)
        return self.clean[samples]

    def run(self, x: float, count: int) -> None:
        """``count`` more trials at x; a budget in trials is a cap, so fewer (none) where it would be passed."""
        if self.settings.budget.trials is not None:
            count = min(count, max(self.settings.budget.trials - self.trials_run(), 0))
        if count == 0:
            return
        p = _grid_p(x)
        first = self.next_trial[p]
        self.next_trial[p] += count
        outcomes = self.runner.run(p, list(range(first, first + count)), self.samples)
        self.outcomes.extend(outcomes)
        self.z_by_p[p].extend(self.z(o) for o in outcomes)
        if self.on_trials:
            self.on_trials(outcomes)

    # --- summaries
    def z(self, outcome: TrialOutcome) -> float:
        clean = self.clean[outcome.samples]
        return (outcome.score - self.runner.floor) / (clean - self.runner.floor)

    def faulty(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.p > 0]

    def points(self) -> list[PointData]:
        return [PointData.from_scores(math.log10(p), np.clip(z, 0.0, 1.0)) for p, z in sorted(self.z_by_p.items())]

    def mean_z(self, x: float) -> float:
        z = self.z_by_p.get(_grid_p(x))
        return float(np.mean(z)) if z else math.nan

    def score_range(self) -> float:
        return self.clean[self.samples] - self.runner.floor

    def near(self, m: float, k: float) -> list[TrialOutcome]:
        """The faulty trials near the midpoint (all of them where none is)."""
        near = [o for o in self.faulty() if abs(math.log10(o.p) - m) * k * _LN10 <= NEAR]
        return near or self.faulty()

    def image_variance(self, m: float, k: float) -> float:
        """The variance the choice of samples adds to the mean normalised score near the midpoint (unit scale):
        the delete-a-block jackknife of the module docstring, or, for trials that recorded no blocks, the bound
        from the within-trial variance of the per-sample scores."""
        total = self.runner.samples
        near = self.near(m, k)
        if not near or all(o.samples >= total for o in near):
            return 0.0
        deltas = _block_deltas(near, self.clean, self.clean_blocks, self.runner.floor, total)
        if deltas is None:
            return self._image_variance_bound(near)
        count, blocks = deltas.shape
        factor = (blocks - 1) / blocks
        of_mean = factor * float(np.sum((deltas.mean(axis=0) - deltas.mean()) ** 2))
        if count < 2:
            return of_mean
        # Each trial's own noise spreads its deltas too; it shrinks as 1/trials in the mean and is in the fit's
        # variance already: what is left is the part every trial shares, the samples' own.
        of_trials = factor * float(np.mean(np.sum((deltas - deltas.mean(axis=1, keepdims=True)) ** 2, axis=1)))
        return max((count * of_mean - of_trials) / (count - 1), 0.0)

    def _image_variance_bound(self, near: list[TrialOutcome]) -> float:
        """sigma_I^2 (1/n - 1/N) / range^2: the within-trial variance of per-sample scores, an upper bound."""
        total = self.runner.samples
        terms = [o.sample_variance * max(1.0 / o.samples - 1.0 / total, 0.0) for o in near]
        return float(np.mean(terms)) / self.score_range() ** 2

    def fit(self, *, profile: bool = False):
        """The curve through every trial so far, its interval widened for the samples left out.

        ``profile``: also compute the reported (profile-likelihood) interval, at looks and at the end.
        """
        start = self.last_fit.theta if self.last_fit is not None else None
        points = self.points()
        fit = fit_curve(points, confidence=self.settings.confidence, start=start)
        if fit is not None and start is not None and (fit.at_bound or profile):
            # A warm start can stay where an early, sparse fit put it (a bound of the steepness); the fits the
            # search stops on, and any at a bound, are compared with one from the cold starts.
            cold = fit_curve(points, confidence=self.settings.confidence)
            if cold is not None and cold.deviance < fit.deviance - 1e-9:
                fit = cold
        if fit is not None:
            fit = fit.with_image_variance(self.image_variance(fit.m, fit.k))
        if fit is not None and profile:
            fit = with_profile(points, fit)
        self.last_fit = fit
        return fit


def _block_deltas(trials: list[TrialOutcome], clean: dict[int, float], clean_blocks: dict, floor: float,
                  total: int) -> np.ndarray | None:
    """trials x blocks: how each trial's normalised score moves when one block of samples is left out of it and
    of its clean score, times sqrt(1 - n/N); None where a trial or its clean pass recorded no blocks."""
    size = image_block_size(total)
    widest = max(math.ceil(o.samples / size) for o in trials)
    deltas = np.zeros((len(trials), widest))
    for row, o in enumerate(trials):
        blocks, reference = o.block_scores, clean_blocks.get(o.samples)
        if blocks is None or reference is None or len(blocks) != len(reference) or len(blocks) < 2:
            return None
        n = o.samples
        sizes = np.minimum(size, n - size * np.arange(len(blocks)))
        rest = n - sizes
        kept = (o.score * n - np.asarray(blocks) * sizes) / rest
        kept_clean = (clean[n] * n - np.asarray(reference) * sizes) / rest
        if np.any(kept_clean - floor <= 1e-9):
            return None  # a block whose absence leaves no fall: no normalised score to move
        z = (o.score - floor) / (clean[n] - floor)
        deltas[row, : len(blocks)] = ((kept - floor) / (kept_clean - floor) - z) * math.sqrt(max(1 - n / total, 0.0))
    return deltas


def _bracket(c: _Campaign) -> tuple[float, float] | str:
    """Bracket ends (log10 p) whose mean unit scores straddle 1/2, or 'above'/'below' the range (both ends on that
    side), or 'non-monotone' (the low end below 1/2, the high end above)."""
    lo, hi = math.log10(c.settings.low), math.log10(c.settings.high)
    for x, decided in ((lo, lambda z: z >= 0.9), (hi, lambda z: z <= 0.1)):
        c.run(x, BRACKET_TRIALS)
        # An end that is not clearly intact (low) or ruined (high) gets up to twenty trials before it decides
        # on which side the midpoint lies: a few bimodal trials can point the wrong way (with ten, 14 of 400
        # simulated campaigns whose midpoint lay 0.4 decades inside the range called it beyond; with twenty, 2).
        while not decided(c.mean_z(x)) and c.next_trial[_grid_p(x)] < END_TRIALS and not c.over_budget():
            c.run(x, 2)
    if c.mean_z(lo) < 0.5:  # beyond the range only where both ends say so
        return "below" if c.mean_z(hi) < 0.5 else "non-monotone"
    if c.mean_z(hi) >= 0.5:
        return "above"
    while hi - lo > 1.0 and not c.over_budget():
        mid = round((lo + hi) / 2 / GRID_STEP) * GRID_STEP
        if mid in (lo, hi):
            break
        c.run(mid, BRACKET_TRIALS)
        if c.mean_z(mid) >= 0.5:
            lo = mid
        else:
            hi = mid
    return lo, hi


def _choose_samples(c: _Campaign, fit) -> int:
    """Samples per trial that reach the target variance at the least measured cost (two-stage sampling).

    The trials a point needs at n samples, (sigma_t^2 + sigma_i^2 / n) / room, are at least ``MIN_TRIALS``:
    no interval is given on fewer central trials, so where a few trials would do (nearly exact trials, as
    activation flips on every sample make them), more samples per trial only add cost.
    """
    total, n0 = c.runner.samples, c.samples
    if n0 >= total or fit is None:
        return min(total, n0) if fit is not None else total
    # Spread of the trials around the fitted curve where it falls: between-trial variance plus sampling noise.
    here = [o for o in c.faulty() if o.samples == n0]
    expected = {o.p: c.runner.floor + c.score_range() * float(survival(math.log10(o.p), fit.theta))
                for o in here}
    central = [o for o in here if 0.1 <= (expected[o.p] - c.runner.floor) / c.score_range() <= 0.9] or here
    residual = float(np.mean([(o.score - expected[o.p]) ** 2 for o in central]))
    within = float(np.mean([o.sample_variance for o in central]))
    sigma_t = max(residual - within / n0, 0.0)  # between-trial component
    # The between-sample component (score units, per sample): the image term at n0 scaled back to one sample.
    sigma_i = c.image_variance(fit.m, fit.k) * c.score_range() ** 2 / (1.0 / n0 - 1.0 / total)
    slope = fit.slope() if not fit.at_bound else -0.5
    half_width = c.settings.precision / 2 / 2.0
    target = (half_width * slope * c.score_range()) ** 2  # variance of a point's score that meets the precision
    seconds = [o.seconds for o in here if o.seconds > 0]
    per_sample = c.clean_seconds.get(n0, 0.0) / n0
    overhead = max(float(np.median(seconds)) - per_sample * n0, 0.0) if seconds else 0.0
    best, best_cost = total, math.inf
    for n in sorted({n0, *(v for v in (1000, 2000, 5000, 10000, 20000, 50000) if n0 < v < total), total}):
        room = target - sigma_i * (1.0 / n - 1.0 / total)
        if room <= 0:
            continue
        cost = max((sigma_t + within / n) / room, MIN_TRIALS) * (overhead + per_sample * n + 1e-6)
        if cost < best_cost:
            best, best_cost = n, cost
    return best


def _next_point(c: _Campaign, fit, lo: float, hi: float, count: int) -> float:
    """The candidate point whose trials most reduce the predicted variance of the midpoint."""
    scale = 1.0 / (fit.k * _LN10)
    candidates = {min(max(fit.m + d * scale, lo), hi) for d in (-3.0, -2.0, -1.2, -0.6, 0.0, 0.6, 1.2, 2.0, 3.0)}
    points = c.points()
    xs = np.array([p.x for p in points])
    ns = np.array([p.trials for p in points], dtype=np.float64)

    theta = np.array([fit.m, math.log(fit.k), math.log(fit.shape)])

    def information(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        s, jac = _jacobian(x, theta)
        v = np.clip(s * (1 - s), 1e-9, None)
        return (jac * (weights / v)[:, None]).T @ jac

    base = information(xs, ns)
    best_x, best_var = fit.m, math.inf
    for x in sorted(candidates):
        info = base + information(np.array([x]), np.array([float(count)]))
        try:
            var = float(np.linalg.inv(info)[0, 0])
        except np.linalg.LinAlgError:
            continue
        if var < best_var:
            best_x, best_var = x, var
    return best_x


def _revisit_samples(c: _Campaign, fit) -> int:
    """More samples per trial where the image term takes more than half of the variance the precision allows:
    the fewest of the candidate sizes whose image term (it falls as 1/n - 1/N) takes at most a quarter."""
    total, n = c.runner.samples, c.samples
    if n >= total or not 0 < fit.image_variance < math.inf:
        return n
    allowed = (c.settings.precision / 2 / fit.t_quantile()) ** 2
    if fit.image_variance <= allowed / 2:
        return n
    per_sample = fit.image_variance / (1.0 / n - 1.0 / total)
    for candidate in sorted({v for v in (2 * n, 1000, 2000, 5000, 10000, 20000, 50000) if n < v < total}):
        if per_sample * (1.0 / candidate - 1.0 / total) <= allowed / 4:
            return candidate
    return total


def _out_of_reach(c: _Campaign, fit, done: int) -> str | None:
    """One line where the budget left cannot buy the trials the precision needs at the pace measured."""
    budget = c.settings.budget
    here = [o.seconds for o in c.faulty()[-40:] if o.samples == c.samples and o.seconds > 0]
    if not fit.supported or (budget.seconds is None and budget.trials is None) or not here:
        return None
    t = fit.t_quantile()
    trial_variance = float(fit.covariance[0, 0])
    stretch = max(fit.width / fit.wald_width, 1.0) if math.isfinite(fit.width) and fit.wald_width > 0 else 1.0
    allowed = (c.settings.precision / 2 / t / stretch) ** 2
    if budget.seconds is not None:
        affordable = max(budget.seconds - c.spent(), 0.0) / float(np.mean(here))
    else:
        affordable = max(budget.trials - c.trials_run(), 0)
    room = allowed - fit.image_variance
    needed = done * trial_variance / room - done if room > 0 else math.inf
    if needed <= 1.25 * affordable:
        return None
    reach = 2 * t * stretch * math.sqrt(trial_variance * done / (done + affordable) + fit.image_variance)
    more = f"about {needed:.0f} more trials are needed" if math.isfinite(needed) else "no number of trials will do"
    return (f"the budget ({budget.describe()}) cannot reach a width of {c.settings.precision:g} decades at the pace "
            f"measured: {more} and about {affordable:.0f} fit in what is left; expect about {reach:.2f} decades")


@dataclass
class SearchResult:
    status: str  # precision | budget | above | below | non-monotone
    fit: object | None
    outcomes: list[TrialOutcome]
    clean: dict[int, float]
    samples: int
    log: list[dict]


def search_midpoint(runner: TrialRunner, settings: SearchSettings, *, clock: Callable[[], float] = time.perf_counter,
                    on_trials: Callable[[list[TrialOutcome]], None] | None = None,
                    on_step: Callable[[dict], None] | None = None) -> SearchResult:
    """Run the search to the target width or the budget; see the module docstring."""
    c = _Campaign(runner, settings, clock, on_trials)
    log: list[dict] = []

    def step(event: str, **data) -> None:
        entry = {"event": event, "trials": c.trials_run(), "seconds": round(c.spent(), 3), **data}
        log.append(entry)
        if on_step:
            on_step(entry)

    c.ensure_clean(c.samples)
    if settings.budget.seconds is not None:
        # The bracket takes about five passes over the pilot samples: refuse a budget that cannot pay for it.
        needed = 5 * c.clean_seconds[c.samples]
        if settings.budget.seconds < needed:
            raise OnnxflipError(f"a budget of {settings.budget.seconds:g} s cannot even bracket the midpoint "
                                f"(about {needed:.1f} s: five passes over {c.samples} samples)")
    bracket = _bracket(c)
    if isinstance(bracket, str):
        step("beyond range", side=bracket)
        return SearchResult(bracket, None, c.outcomes, c.clean, c.samples, log)
    lo_all, hi_all = math.log10(settings.low), math.log10(settings.high)
    fit = c.fit()
    x = fit.m if fit is not None and not fit.at_bound else (bracket[0] + bracket[1]) / 2
    x = min(max(x, bracket[0]), bracket[1])
    c.run(x, PILOT_TRIALS)
    fit = c.fit()
    chosen = _choose_samples(c, fit)
    step("pilot", x=x, samples=chosen)
    if chosen != c.samples:
        c.samples = chosen
        c.ensure_clean(chosen)
        fit = c.fit()
    status = "budget"
    spread = 0
    next_look = 0
    warned, short = False, 0
    lo_design, hi_design = lo_all - DESIGN_MARGIN, min(hi_all + DESIGN_MARGIN, 0.0)
    while True:
        done = sum(p.trials for p in c.points())
        if fit is not None and fit.supported and done >= next_look:
            # Looks at the width are few and planned (sample-size re-estimation), not after every batch:
            # stopping at the first lucky narrow interval would make the intervals too short.
            fit = c.fit(profile=True)
            if fit.width <= settings.precision:
                status = "precision"
                break
            revised = _revisit_samples(c, fit)
            if revised != c.samples:
                step("samples", samples=revised, image_share=round(fit.image_variance / fit.standard_error**2, 3))
                c.samples = revised
                c.ensure_clean(revised)
            elif not warned:
                # Said once two looks in a row find the budget short: the first look's variances are rough.
                line = _out_of_reach(c, fit, done)
                short = short + 1 if line is not None else 0
                if short >= 2:
                    warned = True
                    logger.warning(line)
                    step("out of reach", note=line)
            width = max(fit.width, fit.wald_width) if math.isfinite(fit.width) else fit.wald_width
            planned = done * (width / settings.precision) ** 2 * LOOK_MARGIN
            next_look = int(min(max(planned, done * 1.25), done * 2 + 20))
        if c.over_budget():
            break
        if fit is None or not fit.supported:
            # Too few trials where the curve falls for an interval: spread pairs of trials around the estimate.
            count = 2
            centre = fit.m if fit is not None else (bracket[0] + bracket[1]) / 2
            x = min(max(centre + _SPREAD[spread % len(_SPREAD)], lo_design), hi_design)
            spread += 1
        else:
            count = int(min(max((next_look - done) / 3, 2), 24))
            x = _next_point(c, fit, lo_design, hi_design, count)
        c.run(x, count)
        fit = c.fit()
        step("fit", x=round(x, 3), added=count, midpoint=fit.m if fit else None,
             width=fit.wald_width if fit and math.isfinite(fit.wald_width) else None)
    if fit is not None and fit.profile is None:
        fit = c.fit(profile=True)
    return SearchResult(status, fit, c.outcomes, c.clean, c.samples, log)
