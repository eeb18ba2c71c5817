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

No scipy: the t quantile is found by bisection on the exact t CDF, written with the
regularised incomplete beta function (continued fraction, Numerical Recipes 6.4):

    P(T <= t) = 1 - 0.5 * I_x(df/2, 1/2)   with x = df / (df + t^2),  for t >= 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence


# --------------------------------------------------------------------------- Student t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; NR eq. 6.4.5)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))  # even step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))  # odd step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # the continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a) otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (t_{0.975, df=1} = 12.706, df=2: 4.303, df=30: 2.042)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket: the CDF is increasing
        hi *= 2.0
    for _ in range(200):  # bisection to machine precision
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


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


def paired_difference(
    treatment: Mapping, control: Mapping, confidence: float = 0.95
) -> PairedDiff | None:
    """treatment - control paired by key (the seed); None when they share no seed."""
    seeds = tuple(sorted(set(treatment) & set(control), key=str))
    diffs = [float(treatment[s]) - float(control[s]) for s in seeds]
    diffs_ok = [(s, d) for s, d in zip(seeds, diffs) if not math.isnan(d)]
    if not diffs_ok:
        return None
    s = summarize([d for _, d in diffs_ok], confidence)
    return PairedDiff(s.n, s.mean, s.std, s.lo, s.hi, seeds=tuple(k for k, _ in diffs_ok))


def pareto_front(points: Sequence[tuple[float, float]], modes: Sequence[str] = ("min", "min")) -> list[int]:
    """Indices of the non-dominated points (each objective minimised or maximised), sorted by the first objective."""
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    pts = [tuple(s * v for s, v in zip(sign, p)) for p in points]

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    front = [i for i, p in enumerate(pts) if not any(dominates(q, p) for j, q in enumerate(pts) if j != i)]
    return sorted(front, key=lambda i: pts[i])
