"""The midpoint from a fitted dose-response curve, with a validated interval.

Data: trials.  A trial at probability p scores the model on n samples
(mean metric, e.g. top-1 accuracy).  Each score is put on the unit scale

    z = (score - floor) / (clean - floor),

1 for the fault-free model, 0 for a ruined one (chance for top-1), using the
clean score of the same samples.  The model for E[z | p], with x = log10 p,
is Aranda-Ordaz's asymmetric family (Biometrika 68, 1981):

    S(x) = (1 + lam * exp(u))^(-1/lam),   u = k ln(10) (x - m) + c(lam),

with c(lam) chosen so that S(m) = 1/2: m = log10 of the midpoint (the score
halfway from clean to floor), k > 0 the steepness (a power of p), lam >= 0
the shape.  lam = 1 is the log-logistic (Hill) curve 1 / (1 + (p/p_mid)^k);
lam -> 0 is the Weibull curve exp(-ln 2 (p/p_mid)^k), the survival of a
Poisson count of ruinous flips whose mean grows as p^k (k = 1 when single
flips ruin, as a high exponent bit of a float32 weight does).  The shape is
estimated from the data, so the interval of m carries the uncertainty about
which of these the curve is.

The fit is by quasi-likelihood with the binomial variance function on
fractional responses (Wedderburn 1974; McCullagh & Nelder, *Generalized
Linear Models*, 2nd ed., 1989, ch. 9; Papke & Wooldridge, J. Appl.
Econometrics 11, 1996), which needs only that the mean curve is right: it
holds for bimodal trials (a trial is either intact or ruined, z near 1 or 0)
and for smooth ones (every trial degrades a little) alike.

Interval: on each side of m, the wider of two 95% intervals.  The profile
quasi-likelihood interval, where twice the drop of the quasi-log-likelihood,
over the Pearson dispersion, reaches the 95% point of F(1, K - 3), K the
number of probabilities tried (McCullagh & Nelder 1989, section 9.3; Venzon & Moolgavkar,
Appl. Stat. 37, 1988), follows the curvature of the likelihood in the
steepness and shape; the Wald interval with the trial-clustered sandwich
covariance (Huber 1967; White 1980; HC3, MacKinnon & White 1985) and
Student's t(K - 3) trusts only the mean curve, not the binomial variance
function.  In simulation, the Wald interval alone covered 86-90% in the
bimodal regime, where the variance function is right and the profile
covered 95-98%; the profile alone covered 92% in the smooth regime, where
the variance function is wrong and the sandwich covered 95%.  The Wald width
alone is used for planning, where it is cheap.
The degrees of freedom are the points', not the trials' (Finney, *Probit
Analysis*, 1971: dose groups less parameters): the variances rest on how a
dozen or two points scatter about the curve, and with N - 3 (N trials)
simulated campaigns with partly damaged trials covered only 92-93%.
When the trials ran on n of the N samples that define the estimand, the
choice of samples adds an image term (:mod:`onnxflip.campaign.design`
estimates it, a jackknife over blocks of samples), carried to log10 p
through the slope of the fitted curve and added to each side of the
interval in quadrature.

Heterogeneity: when the points scatter about the fitted curve more than
their trials scatter about each point (the F statistic of the curve against
one free mean per point, F > 1), the variances and the dispersion are
multiplied by F, Finney's heterogeneity factor (*Probit Analysis*, 3rd ed.,
1971, section 4.4): with many precise trials (activation flips on every
sample) a curve family's small misfit would otherwise give intervals far
narrower than the differences between runs with other seeds.

Misfit: where the trials are nearly exact (activation flips scored on
many samples), the points pin the fitted curve so tightly that its interval
shrinks below the error the curve family itself makes: the family's midpoint
is the one that best fits every point, not where the true curve crosses 1/2.
A model-free estimate of the crossing sets that error: a weighted linear
fit of the point means against log10 p over the points where the fitted
curve lies in ``LOCAL`` (0.25 to 0.75), each mean weighted by its
variance (the pooled spread of trials about their point means).  The
squared difference between the two midpoints, less the local estimate's own
sampling variance, estimates the squared bias of the family's midpoint
(the logic of Hausman's specification test, Econometrica 46, 1978: under a
right family the difference has mean 0 and the local estimate's variance at
most); where positive it is added to the variance of m, in quadrature like
the image term (``misfit_variance``), and planning counts it too, so a
search does not stop on an interval narrower than its family's error.

Safeguards: the steepness is bounded (``MAX_SHAPE``), and a fit that reaches
the bound (separation) or rests on fewer than ``MIN_TRIALS`` trials where the
fitted curve lies between 0.1 and 0.9 gives no interval, so a search never
stops on a few lucky trials (with bimodal trials, a handful that all agree
make the curve look like a step).  Coverage is checked by simulation with
known curves in tests/test_campaign_statistics.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

__all__ = ["MAX_SHAPE", "MIN_TRIALS", "Fit", "PointData", "bound_notes", "fit_curve", "profile_interval", "survival",
           "with_profile"]

MAX_SHAPE = 30.0  # k at most: the fall from 90% to 10% then spans 0.045 (lam = 0.01) to 0.14 (lam = 4) decades of p
MIN_SHAPE = 0.05
LAMBDA_RANGE = (0.01, 4.0)
M_MARGIN = 3.0  # decades beyond the measured probabilities the fit may put the midpoint
MIN_TRIALS = 40  # trials where the fitted curve is between 0.1 and 0.9, before any interval is given
CENTRAL = (0.1, 0.9)
LOCAL = (0.25, 0.75)  # where the fitted curve is near enough to a line for the model-free crossing
_LN10 = math.log(10.0)
_EPS = 1e-9


@dataclass(frozen=True)
class PointData:
    """Sufficient statistics of the trials at one probability, on the unit scale."""

    x: float  # log10 p
    trials: int
    sum_z: float
    sum_z2: float

    @classmethod
    def from_scores(cls, x: float, z: Sequence[float]) -> PointData:
        z = np.asarray(z, dtype=np.float64)
        return cls(x, len(z), float(z.sum()), float((z * z).sum()))


def _offset(lam: float) -> float:
    """c(lam): the u at which S = 1/2."""
    return math.log(math.expm1(lam * math.log(2.0)) / lam)


def _survival_u(u: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """S and dS/du."""
    e = np.exp(np.minimum(u, 700.0))
    s = np.exp(-np.log1p(lam * e) / lam)
    return s, -s * e / (1.0 + lam * e)


def survival(x: np.ndarray | float, theta: Sequence[float]) -> np.ndarray:
    """S(x) for theta = (m, k, lam)."""
    m, k, lam = theta
    return _survival_u(k * _LN10 * (np.asarray(x, dtype=np.float64) - m) + _offset(lam), lam)[0]


def _natural(theta: np.ndarray) -> tuple[float, float, float]:
    """(m, log k, log lam) -> (m, k, lam)."""
    return float(theta[0]), math.exp(theta[1]), math.exp(theta[2])


def _jacobian(x: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S and dS/d(m, log k, log lam) at each x."""
    m, k, lam = _natural(theta)
    u = k * _LN10 * (x - m) + _offset(lam)
    s, ds = _survival_u(u, lam)
    h = 1e-6
    up = _survival_u(k * _LN10 * (x - m) + _offset(lam * math.exp(h)), lam * math.exp(h))[0]
    down = _survival_u(k * _LN10 * (x - m) + _offset(lam * math.exp(-h)), lam * math.exp(-h))[0]
    jac = np.stack([ds * (-k * _LN10), ds * k * _LN10 * (x - m), (up - down) / (2 * h)], axis=1)
    return s, jac


@dataclass(frozen=True)
class Fit:
    """A fitted curve: midpoint m = log10 p, its interval, and what the fit rests on."""

    theta: tuple[float, float, float]  # (m, k, lam)
    covariance: np.ndarray | None  # of (m, log k, log lam), sandwich
    trials: int
    central_trials: int  # trials where the fitted curve is between 0.1 and 0.9
    deviance: float
    dispersion: float
    lack_of_fit_p: float | None  # F test of the curve against one mean per point
    image_variance: float = 0.0  # added variance of m (log10 p squared) from scoring a subset of the samples
    confidence: float = 0.95
    profile: tuple[float, float] | None = None  # the profile-likelihood interval of m, before the sample term
    heterogeneity: float = 1.0  # max(1, lack-of-fit F): the factor the variances carry (Finney's)
    m_bounds: tuple[float, float] | None = None  # where the fit may put the midpoint (log10 p), as it searched
    points: int = 0  # the probabilities the trials ran at (0: unknown, then the trials set the degrees of freedom)
    misfit_variance: float = 0.0  # added variance of m: the curve family's squared bias, where the data show one

    @property
    def m(self) -> float:
        return self.theta[0]

    @property
    def k(self) -> float:
        return self.theta[1]

    @property
    def shape(self) -> float:
        return self.theta[2]

    @property
    def family(self) -> str:
        """The named curve the shape is closest to."""
        lam = self.shape
        if lam <= 0.1:
            return "Weibull (cloglog)"
        return "log-logistic (logit)" if 0.7 <= lam <= 1.4 else f"Aranda-Ordaz lambda={lam:.2g}"

    @property
    def at_bound(self) -> bool:
        return self.k >= MAX_SHAPE * 0.999 or self.k <= MIN_SHAPE * 1.001

    @property
    def bounds_reached(self) -> list[str]:
        """The parameters the fit left at a bound of its search (``steepness_k``, ``shape_lambda``,
        ``log10_midpoint``): the data did not place them, the bound did."""
        reached = []
        if self.at_bound:
            reached.append("steepness_k")
        if self.shape >= LAMBDA_RANGE[1] * 0.999 or self.shape <= LAMBDA_RANGE[0] * 1.001:
            reached.append("shape_lambda")
        if self.m_bounds is not None and not self.m_bounds[0] + 1e-3 < self.m < self.m_bounds[1] - 1e-3:
            reached.append("log10_midpoint")
        return reached

    @property
    def degrees_of_freedom(self) -> int:
        """Of the intervals' t and F quantiles: the probabilities tried less the curve's three parameters."""
        return max((self.points or self.trials) - 3, 1)

    def t_quantile(self) -> float:
        """The t quantile the intervals use."""
        return float(scipy_stats.t.ppf(0.5 + self.confidence / 2, self.degrees_of_freedom))

    @property
    def supported(self) -> bool:
        """Whether the trials can support an interval (enough of them where the curve falls, no separation)."""
        return self.covariance is not None and not self.at_bound and self.central_trials >= MIN_TRIALS

    @property
    def standard_error(self) -> float | None:
        """The Wald (sandwich) standard error of m, the sample term included; for planning."""
        if not self.supported:
            return None
        variance = float(self.covariance[0, 0]) + self.image_variance + self.misfit_variance
        return math.sqrt(variance) if variance > 0 and math.isfinite(variance) else None

    @property
    def wald_width(self) -> float:
        """Width of the Wald interval of m in decades (infinite when unsupported): what planning uses."""
        se = self.standard_error
        return 2 * self.t_quantile() * se if se is not None else math.inf

    @property
    def interval(self) -> tuple[float, float] | None:
        """The reported interval of m (log10 p), None until the profile is computed (:func:`with_profile`) or when
        the fit cannot support one: on each side the wider of the profile quasi-likelihood interval and the Wald
        (sandwich) interval, each widened for the sample term in quadrature."""
        if self.profile is None or not self.supported:
            return None
        t = self.t_quantile()
        sandwich = t * math.sqrt(float(self.covariance[0, 0]))
        extra = t * math.sqrt(self.image_variance + self.misfit_variance)
        low, high = self.profile
        below = max(self.m - low, sandwich)
        above = max(high - self.m, sandwich)
        return self.m - math.hypot(below, extra), self.m + math.hypot(above, extra)

    @property
    def width(self) -> float:
        """Width of the reported interval in decades (infinite when there is none)."""
        interval = self.interval
        return interval[1] - interval[0] if interval else math.inf

    def slope(self) -> float:
        """dS/dx at the midpoint (per decade of p; negative)."""
        _m, k, lam = self.theta
        return float(_survival_u(np.array([_offset(lam)]), lam)[1][0]) * k * _LN10

    def with_image_variance(self, unit_variance: float) -> Fit:
        """This fit, its interval widened for scoring a subset of the samples: ``unit_variance`` is the variance
        the choice of samples adds to the normalised score at the midpoint (unit scale)."""
        slope = self.slope()
        extra = unit_variance / slope**2 if slope != 0 else math.inf
        return dataclasses.replace(self, image_variance=extra)

    def band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fitted S(x) and its pointwise confidence band (delta method)."""
        x = np.asarray(x, dtype=np.float64)
        m, k, lam = self.theta
        s, jac = _jacobian(x, np.array([m, math.log(k), math.log(lam)]))
        if self.covariance is None:
            return s, s, s
        var = np.einsum("ni,ij,nj->n", jac, self.covariance, jac) + (jac[:, 0] ** 2) * (
            self.image_variance + self.misfit_variance)
        half = self.t_quantile() * np.sqrt(np.maximum(var, 0.0))
        return s, np.clip(s - half, 0.0, 1.0), np.clip(s + half, 0.0, 1.0)

    def to_json(self) -> dict:
        interval = self.interval
        return {
            "method": "quasi-binomial Aranda-Ordaz dose-response fit in log10 p; profile quasi-likelihood interval "
                      "of the midpoint, F(1, K-3) with K the probabilities tried, image and misfit terms added in "
                      "quadrature",
            "log10_midpoint": self.m,
            "steepness_k": self.k,
            "shape_lambda": self.shape,
            "family": self.family,
            "trials": self.trials,
            "central_trials": self.central_trials,
            "wald_standard_error": self.standard_error,
            "interval_log10": list(interval) if interval else None,
            "width_decades": self.width if interval else None,
            "dispersion": self.dispersion,
            "deviance": self.deviance,
            "lack_of_fit_p": self.lack_of_fit_p,
            "heterogeneity": self.heterogeneity,
            "image_variance": self.image_variance,
            "misfit_variance": self.misfit_variance,
            "at_bound": self.bounds_reached,
        }


def bound_notes(fit: dict) -> list[str]:
    """What each parameter a recorded fit (``Fit.to_json``) left at a bound of its search means, and what to
    do, in one sentence each.  None for a shape at its lower bound: that curve is the family's limit, the
    Weibull curve of ruinous flips (within 0.002 of it on the unit scale), so the bound changes nothing."""
    notes = []
    for name in fit.get("at_bound") or []:
        if name == "steepness_k" and fit["steepness_k"] >= 1:
            notes.append(f"the score falls like a step (steepness k at its bound {MAX_SHAPE:g}): too few trials "
                         "where it falls to give an interval; measure more probabilities between the last intact "
                         "and the first ruined one (or use --midpoint)")
        elif name == "steepness_k":
            notes.append(f"the score falls so slowly over the probabilities measured that the fit cannot place the "
                         f"curve (steepness k at its bound {MIN_SHAPE:g}); widen the range of --p or --p-range")
        elif name == "shape_lambda" and fit["shape_lambda"] > 1:
            notes.append(f"the score nears the floor more slowly than the fitted family allows (shape lambda at its "
                         f"bound {LAMBDA_RANGE[1]:g}) and the interval assumes that bound; more trials at the "
                         "highest probabilities tell the tail apart")
        elif name == "log10_midpoint":
            notes.append(f"the fitted midpoint lies {M_MARGIN:g} decades beyond the probabilities measured (the "
                         "bound of its search), so they do not place it; extend --p or --p-range towards it")
    return notes


def _unpack(points: Sequence[PointData]) -> tuple[np.ndarray, ...]:
    x = np.array([p.x for p in points])
    n = np.array([p.trials for p in points], dtype=np.float64)
    sz = np.array([p.sum_z for p in points])
    sz2 = np.array([p.sum_z2 for p in points])
    return x, n, sz, sz2


def _objective(theta: np.ndarray, x, n, sz) -> tuple[float, np.ndarray, np.ndarray]:
    """Negative quasi-log-likelihood sum over trials of z log S + (1 - z) log(1 - S), its gradient, the information."""
    s, jac = _jacobian(x, theta)
    s = np.clip(s, _EPS, 1 - _EPS)
    value = -float(np.sum(sz * np.log(s) + (n - sz) * np.log1p(-s)))
    dl_ds = sz / s - (n - sz) / (1 - s)
    info = (jac * (n / (s * (1 - s)))[:, None]).T @ jac
    return value, -(dl_ds @ jac), info


def _maximise(points: Sequence[PointData], start: tuple[float, float, float], *, warm: bool,
              fixed_m: bool = False) -> tuple[np.ndarray, float]:
    """Fisher scoring in (m, log k, log lam), with step halving and bounds; several starts unless ``warm``.

    With ``fixed_m`` the midpoint stays at its start (the profile likelihood).  Returns theta and the objective.
    """
    x, n, sz, _ = _unpack(points)
    free = np.array([0.0 if fixed_m else 1.0, 1.0, 1.0])
    low = np.array([float(x.min()) - M_MARGIN, math.log(MIN_SHAPE), math.log(LAMBDA_RANGE[0])])
    high = np.array([float(x.max()) + M_MARGIN, math.log(MAX_SHAPE), math.log(LAMBDA_RANGE[1])])
    best = None
    m0, k0, lam0 = start
    starts = [(k0, lam0)] if warm else [(k0, lam0), (1.0, 0.3), (4.0, 1.0)]
    for k_start, lam_start in starts:
        theta = np.clip(np.array([m0, math.log(k_start), math.log(lam_start)]), low, high)
        value, grad, info = _objective(theta, x, n, sz)
        for _ in range(50):
            if fixed_m:
                info = info * np.outer(free, free) + np.diag(1.0 - free)
            try:
                step = -np.linalg.solve(info + 1e-9 * np.eye(3), grad * free)
            except np.linalg.LinAlgError:
                step = -grad * free
            for _ in range(20):
                candidate = np.clip(theta + step, low, high)
                new = _objective(candidate, x, n, sz)
                if new[0] <= value + 1e-12:
                    break
                step = step / 2
            else:
                break
            gain = value - new[0]
            theta, (value, grad, info) = candidate, new
            if gain < 1e-7:
                break
        if best is None or value < best[1]:
            best = (theta, value)
    return best


def _sandwich(points: Sequence[PointData], theta: np.ndarray) -> tuple[np.ndarray | None, float]:
    """HC3 sandwich covariance of (m, log k, log lam) over trials, and the Pearson dispersion."""
    x, n, sz, sz2 = _unpack(points)
    s, jac = _jacobian(x, theta)
    s = np.clip(s, _EPS, 1 - _EPS)
    v = s * (1 - s)
    bread = (jac * (n / v)[:, None]).T @ jac
    squares = np.maximum(sz2 - 2 * s * sz + n * s * s, 0.0)  # sum over the point's trials of (z - S)^2
    informative = v >= 0.01  # the Pearson dispersion, where the variance function is not near zero
    dispersion = float(np.sum((squares / v)[informative])) / max(int(n[informative].sum()) - 3, 1)
    try:
        inverse = np.linalg.inv(bread)
    except np.linalg.LinAlgError:
        return None, dispersion
    leverage = np.clip(np.einsum("ni,ij,nj->n", jac, inverse, jac) / v, 0.0, 0.99)  # of one trial at each point
    meat = (jac * (squares / (v * (1 - leverage)) ** 2)[:, None]).T @ jac
    cov = inverse @ meat @ inverse
    return (cov if np.all(np.isfinite(cov)) else None), dispersion


def _deviance(points: Sequence[PointData], theta: np.ndarray) -> float:
    x, n, sz, _ = _unpack(points)
    s = np.clip(_jacobian(x, theta)[0], _EPS, 1 - _EPS)
    zbar = np.clip(sz / n, _EPS, 1 - _EPS)
    return float(2 * np.sum(sz * np.log(zbar / s) + (n - sz) * np.log((1 - zbar) / (1 - s))))


def _lack_of_fit(points: Sequence[PointData], theta: np.ndarray) -> tuple[float | None, float]:
    """An F test of the curve against one free mean per point: (p-value, heterogeneity factor max(1, F))."""
    x, n, sz, sz2 = _unpack(points)
    total, groups = int(n.sum()), len(points)
    if groups <= 3 or total <= groups:
        return None, 1.0
    s = np.clip(_jacobian(x, theta)[0], _EPS, 1 - _EPS)
    pure = float(np.sum(np.maximum(sz2 - sz * sz / n, 0.0)))
    around_curve = float(np.sum(np.maximum(sz2 - 2 * s * sz + n * s * s, 0.0)))
    if pure <= 0:
        return None, 1.0
    f = ((around_curve - pure) / (groups - 3)) / (pure / (total - groups))
    return float(scipy_stats.f.sf(max(f, 0.0), groups - 3, total - groups)), max(1.0, f)


def fit_curve(points: Sequence[PointData], *, start: tuple[float, float, float] | None = None,
              confidence: float = 0.95) -> Fit | None:
    """The curve through the points' trials; None when there is nothing to fit (fewer than two probabilities)."""
    points = [p for p in points if p.trials > 0]
    if len({p.x for p in points}) < 2:
        return None
    theta, _ = _maximise(points, start or (_crossing_guess(points), 1.0, 0.5), warm=start is not None)
    cov, dispersion = _sandwich(points, theta)
    lack_of_fit, heterogeneity = _lack_of_fit(points, theta)
    if cov is not None:
        cov = cov * heterogeneity
    fitted = _jacobian(np.array([p.x for p in points]), theta)[0]
    central = int(sum(p.trials for p, s in zip(points, fitted) if CENTRAL[0] <= s <= CENTRAL[1]))
    xs = [p.x for p in points]
    return Fit(_natural(theta), cov, sum(p.trials for p in points), central, _deviance(points, theta),
               dispersion * heterogeneity, lack_of_fit, confidence=confidence, heterogeneity=heterogeneity,
               m_bounds=(min(xs) - M_MARGIN, max(xs) + M_MARGIN), points=len(set(xs)),
               misfit_variance=_misfit_variance(points, fitted, float(theta[0])))


def local_crossing(points: Sequence[PointData], fitted: np.ndarray) -> tuple[float, float] | None:
    """Where the point means cross 1/2 by a weighted linear fit on log10 p over the points whose fitted value
    lies in ``LOCAL``, and the variance of that root (delta method); None with fewer than three such points,
    too few trials to pool their spread, or no fall."""
    local = [(p, s) for p, s in zip(points, fitted) if LOCAL[0] <= s <= LOCAL[1]]
    if len({p.x for p, _ in local}) < 3:
        return None
    n = np.array([p.trials for p, _ in local], dtype=np.float64)
    sz, sz2 = np.array([p.sum_z for p, _ in local]), np.array([p.sum_z2 for p, _ in local])
    if n.sum() - len(local) < 2:
        return None
    pooled = float(np.sum(np.maximum(sz2 - sz * sz / n, 0.0))) / (n.sum() - len(local))
    x, z, w = np.array([p.x for p, _ in local]), sz / n, n / max(pooled, 1e-12)
    design = np.stack([np.ones_like(x), x], axis=1)
    try:
        cov = np.linalg.inv(design.T @ (design * w[:, None]))
    except np.linalg.LinAlgError:
        return None
    a, b = cov @ design.T @ (w * z)
    if b >= 0:
        return None
    root = (0.5 - a) / b
    gradient = np.array([-1.0 / b, -(0.5 - a) / b**2])
    return float(root), float(gradient @ cov @ gradient)


def _misfit_variance(points: Sequence[PointData], fitted: np.ndarray, m: float) -> float:
    """The curve family's squared bias at the midpoint where the data show one (see the module docstring)."""
    local = local_crossing(points, fitted)
    if local is None:
        return 0.0
    root, variance = local
    return max((m - root) ** 2 - variance, 0.0)


def _crossing_guess(points: Sequence[PointData]) -> float:
    """Where the point means cross 1/2, interpolated (the middle of the range when they do not)."""
    ordered = sorted(points, key=lambda p: p.x)
    means = [p.sum_z / p.trials for p in ordered]
    for a, b, za, zb in zip(ordered, ordered[1:], means, means[1:]):
        if za >= 0.5 > zb:
            return a.x + (za - 0.5) * (b.x - a.x) / (za - zb) if za != zb else a.x
    return (ordered[0].x + ordered[-1].x) / 2


def with_profile(points: Sequence[PointData], fit: Fit) -> Fit:
    """The fit with its profile interval computed (unchanged when the fit cannot support one)."""
    if not fit.supported:
        return fit
    return dataclasses.replace(fit, profile=profile_interval(points, fit))


def profile_interval(points: Sequence[PointData], fit: Fit) -> tuple[float, float] | None:
    """The profile quasi-likelihood interval of m: where 2 (l(best) - l(m)) / dispersion reaches F(1, K - 3).

    (McCullagh & Nelder 1989, section 9.3; Venzon & Moolgavkar, Appl. Stat. 37, 1988.)  None when it
    cannot be found within ten Wald widths.
    """
    points = [p for p in points if p.trials > 0]
    x, n, sz, _ = _unpack(points)
    theta = np.array([fit.m, math.log(fit.k), math.log(fit.shape)])
    best = _objective(theta, x, n, sz)[0]
    dispersion = max(fit.dispersion, 1e-12)
    critical = float(scipy_stats.f.ppf(fit.confidence, 1, fit.degrees_of_freedom)) * dispersion / 2

    def excess(m: float) -> float:
        start = (m, fit.k, fit.shape)
        _, value = _maximise(points, start, warm=True, fixed_m=True)
        return value - best - critical

    se = math.sqrt(float(fit.covariance[0, 0])) if fit.covariance is not None else 0.1
    ends = []
    for side in (-1.0, 1.0):
        step = max(se, 0.01)
        inner, outer = fit.m, fit.m + side * step
        for _ in range(12):
            if excess(outer) > 0:
                break
            inner, outer = outer, outer + side * step
            step *= 1.6
        else:
            return None
        lo, hi = sorted((inner, outer))
        ends.append(optimize.brentq(excess, lo, hi, xtol=1e-4))
    return ends[0], ends[1]
