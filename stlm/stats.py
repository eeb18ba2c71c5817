"""Small-sample statistics for seeds: mean, spread, Student-t intervals, paired differences.

A sweep gives each arm a handful of seeds (2 to 5), so intervals use Student's t, not
the normal 1.96. Comparing two arms pairs them by seed: arm B with seed s is compared
with the control arm with the same seed s (same data order, same init RNG), which removes
the seed-to-seed variation both arms share and is what makes 3 seeds informative.

    d_s  = x_B,s - x_A,s                          for every seed s run by both arms
    mean = sum(d_s) / n,   sd = sqrt(sum((d_s - mean)^2) / (n - 1))
    95% interval = mean -/+ t_{0.975, n-1} * sd / sqrt(n)

The interval "excludes zero" when both ends have the same sign: at the 5% level the
arms differ. With n = 1 there is no spread to estimate, and every interval is None
(printed as n/a) rather than a made-up number.

Quantiles and the power of the paired t-test come from scipy.stats (t, nct). The power line
answers "how large a difference could these seeds have found?": the smallest true mean
difference delta that a two-sided paired t-test at level alpha detects with probability
`power`, given the observed sd of the per-seed differences:

    P(|T'| > t_{1-alpha/2, n-1}) = power,   T' ~ noncentral t(df = n - 1, nc = delta * sqrt(n) / sd)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from scipy import optimize
from scipy import stats as sps

# --------------------------------------------------------------------------- Student t


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(sps.t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (t_{0.975, df=1} = 12.706, df=2: 4.303, df=30: 2.042)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(sps.t.ppf(p, df))


def paired_t_power(effect_size: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired (one-sample) t-test with n pairs at standardised effect
    size d = delta / sd (d = 0.5, n = 34: 0.808, the G*Power / Cohen table value)."""
    if n < 2:
        return float("nan")
    df, nc = n - 1, effect_size * math.sqrt(n)
    crit = sps.t.ppf(1.0 - alpha / 2.0, df)
    # P(T' < -crit | nc) = P(T' > crit | -nc): scipy's nct.cdf far in the lower tail returns nan
    return float(sps.nct.sf(crit, df, nc) + sps.nct.sf(crit, df, -nc))


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean difference a paired t-test on n pairs with spread `sd` detects
    at level alpha with the given power (None for n < 2 or no spread)."""
    if n < 2 or sd is None or not sd > 0:
        return None

    def gap(e: float) -> float:  # increasing in e
        return paired_t_power(e, n, alpha) - power

    hi = 1.0
    while gap(hi) < 0:  # bracket; with 2 pairs (df = 1) the answer is near d = 10
        hi *= 2.0
    return optimize.brentq(gap, 0.0, hi, xtol=1e-10) * sd


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Summary:
    """Mean of n values with its sample standard deviation and 95% t interval (None when n < 2)."""

    n: int
    mean: float
    std: float | None
    lo: float | None
    hi: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.lo is None else (self.hi - self.lo) / 2.0


@dataclass(frozen=True)
class PairedDiff(Summary):
    """Mean of the per-seed differences treatment - control, over the seeds both arms ran."""

    seeds: tuple = ()

    @property
    def excludes_zero(self) -> bool | None:
        """True when the interval lies entirely on one side of 0 (None when there is no interval)."""
        if self.lo is None:
            return None
        return self.lo > 0.0 or self.hi < 0.0


def summarize(values: Iterable[float], confidence: float = 0.95) -> Summary:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        raise ValueError("summarize() needs at least one value")
    mean = sum(xs) / n
    if n < 2:
        return Summary(n, mean, None, None, None)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))  # sample sd (n - 1)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_difference(treatment: Mapping, control: Mapping, confidence: float = 0.95) -> PairedDiff | None:
    """treatment - control paired by key (the seed); None when they share no seed."""
    seeds = tuple(sorted(set(treatment) & set(control), key=str))
    diffs = [float(treatment[s]) - float(control[s]) for s in seeds]
    diffs_ok = [(s, d) for s, d in zip(seeds, diffs) if not math.isnan(d)]
    if not diffs_ok:
        return None
    s = summarize([d for _, d in diffs_ok], confidence)
    return PairedDiff(s.n, s.mean, s.std, s.lo, s.hi, seeds=tuple(k for k, _ in diffs_ok))


@dataclass(frozen=True)
class LineFit:
    """y = intercept + slope * x by least squares, with the slope's 95% t interval (None with < 3 points)."""

    n: int
    slope: float
    intercept: float
    slope_lo: float | None
    slope_hi: float | None
    r2: float

    @property
    def excludes_zero(self) -> bool | None:
        return None if self.slope_lo is None else (self.slope_lo > 0.0 or self.slope_hi < 0.0)


def line_fit(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> LineFit | None:
    """scipy.stats.linregress, plus the slope's interval slope -/+ t_{(1+c)/2, n-2} * stderr.
    None when x takes fewer than two distinct values."""
    if len(x) < 2 or len(set(x)) < 2:
        return None
    r = sps.linregress(x, y)
    lo = hi = None
    if len(x) > 2:
        half = t_quantile(0.5 + confidence / 2.0, len(x) - 2) * r.stderr
        lo, hi = r.slope - half, r.slope + half
    return LineFit(len(x), float(r.slope), float(r.intercept), lo, hi, float(r.rvalue**2))


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str] = ("min", "min")) -> list[int]:
    """Indices of the non-dominated points, one objective per coordinate, each minimised or maximised (`modes`),
    sorted by the first objective; equal points are all kept."""
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    pts = [tuple(s * v for s, v in zip(sign, p)) for p in points]

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    front = [i for i, p in enumerate(pts) if not any(dominates(q, p) for j, q in enumerate(pts) if j != i)]
    return sorted(front, key=lambda i: pts[i])
