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

Trials are numbered per probability: trial t at p always uses the same
seeds, so a point visited twice gets new trials, never repeated ones.
"""

from __future__ import annotations

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

__all__ = ["Budget", "SearchSettings", "TrialOutcome", "TrialRunner", "check_fall", "has_fall", "search_midpoint"]

_LN10 = math.log(10.0)
GRID_STEP = 0.05  # decades: design points are snapped to this grid, so a point is revisited rather than crowded
BRACKET_TRIALS = 2
END_TRIALS = 20  # at most, at an end that is neither clearly intact nor clearly ruined
PILOT_TRIALS = 6
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

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "words" or v is not None}


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

    def sample_variance_near(self, m: float, k: float) -> float:
        """sigma_I^2 bound: the within-trial variance of per-sample scores, at points near the midpoint."""
        near = [o for o in self.faulty() if o.samples == self.samples and abs(math.log10(o.p) - m) * k * _LN10 <= 1.5]
        chosen = near or [o for o in self.faulty() if o.samples == self.samples]
        return float(np.mean([o.sample_variance for o in chosen])) if chosen else 0.25

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
        if fit is not None and self.samples < self.runner.samples:
            variance = self.sample_variance_near(fit.m, fit.k) * (1.0 / self.samples - 1.0 / self.runner.samples)
            fit = fit.with_sample_variance(variance, self.score_range())
        if fit is not None and profile:
            fit = with_profile(points, fit)
        self.last_fit = fit
        return fit


def _bracket(c: _Campaign) -> tuple[float, float] | str:
    """Bracket ends (log10 p) whose mean unit scores straddle 1/2, or 'above'/'below' the range."""
    lo, hi = math.log10(c.settings.low), math.log10(c.settings.high)
    for x, decided in ((lo, lambda z: z >= 0.9), (hi, lambda z: z <= 0.1)):
        c.run(x, BRACKET_TRIALS)
        # An end that is not clearly intact (low) or ruined (high) gets up to twenty trials before it decides
        # on which side the midpoint lies: a few bimodal trials can point the wrong way (with ten, 14 of 400
        # simulated campaigns whose midpoint lay 0.4 decades inside the range called it beyond; with twenty, 2).
        while not decided(c.mean_z(x)) and c.next_trial[_grid_p(x)] < END_TRIALS and not c.over_budget():
            c.run(x, 2)
    if c.mean_z(lo) < 0.5:
        return "below"
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
    sigma_i = within  # bound on the between-sample component
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


@dataclass
class SearchResult:
    status: str  # precision | budget | above | below
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
