"""Adaptive seeds: when may a sweep stop adding paired seeds to an arm, and what has it then found?

The data are the per-seed differences d_1, d_2, ... (arm - control, paired by seed, in seed order). The sweep
looks after every new pair, from n = lo (`seeds.min`) up to n = hi (`seeds.max`), and stops an arm as soon as
its interval decides. Re-testing an ordinary 95% t interval after every seed makes a false "the arms differ"
far more likely than 5% (the more looks, the more chances); the intervals here are widened so that, with
probability >= `confidence`, ALL of them cover the true mean difference at once, and so every decision taken
at a data-chosen look is still right with that probability.

Method: repeated confidence intervals of a group-sequential t design with a Pocock-type boundary
(Jennison & Turnbull, "Interim analyses: the repeated confidence interval approach", JRSS B 51 (1989) 305-361;
their book "Group Sequential Methods with Applications to Clinical Trials", 2000, ch. 9). At every look

    interval_n = mean_n -/+ c_n * sd_n / sqrt(n),   c_n = t_{1 - a/2, n-1}     (n = lo .. hi)

with one nominal level a for all looks, chosen so that P(some interval_n misses the true mean) = 1 - confidence.
Assumptions: the differences are independent draws from a normal distribution with unknown mean and unknown
variance. The variance is handled exactly, not by a plug-in: (mean_n - mu) / (sd_n / sqrt(n)) over n = lo .. hi
has the same joint distribution whatever mu and sigma are, so `a` depends only on (lo, hi, confidence) and is
found once by simulating that pivot (200,000 normal sequences from a fixed seed, so the same design always gets
the same boundary; its Monte-Carlo error in the miss probability is about 0.0005). For lo=3, hi=10, 95%:
a = 0.012, c_3 = 9.1 and c_10 = 3.1, against t = 4.3 and 2.3 for a single fixed-n interval. The guarantee is
per comparison (each arm against the control), not across arms. Normality matters at 3 to 10 seeds in one way:
symmetric heavy tails only make it cautious (t_3 differences, or 5% of seeds 10x noisier: 3-4% false decisions
at 95%), but strongly skewed differences break it (lognormal ones: 24%).

Why not a confidence sequence valid for all n (Howard, Ramdas, McAuliffe & Sekhon, Ann. Statist. 49 (2021)
1055-1080, via the `confseq` package): its boundaries need a known sub-Gaussian scale or bounded observations,
and a metric difference has neither; the unknown-variance sequences (Lai, Ann. Statist. 4 (1976); Wang & Ramdas,
arXiv:2310.03722) spend their error over every n up to infinity, with widths polynomial in 1/alpha. A sweep
knows its last look (hi), so the whole error can go to the few looks that happen. (`confseq` 0.0.11 is also a
C++ source build needing Boost, with no wheel.)

The decision at a look (difference = arm - control; lower is better when the metric is minimised):
    equivalent   the interval lies inside (-effect, +effect): whatever the difference is, it is smaller than
                 what matters (this wins when the interval also excludes 0: a real but negligible difference)
    better/worse the interval excludes 0: below 0 is better for mode min, above 0 is better for mode max
    open         none of these yet and fewer than hi pairs: add the next seed
    undecided    hi pairs and still none of these
decide() replays the looks lo, lo+1, ... over the pairs in seed order and returns the FIRST look that decides,
so it reads nothing but finished results in seed order: a resumed sweep, or pairs that arrived after the
decision, give the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as sps

BETTER, WORSE, EQUIVALENT, OPEN, UNDECIDED = "better", "worse", "equivalent", "open", "undecided"
METHOD = "repeated t intervals, group-sequential Pocock-type boundary (Jennison & Turnbull 1989)"
_SIMULATIONS = 200_000  # sequences simulated to set the boundary
_BOUNDARY_SEED = 20210301  # fixed: the same design always gets the same boundary


@dataclass(frozen=True)
class Decision:
    """One arm against the control: the decision, the pairs it rests on, and that look's interval (None before
    the first look)."""

    decision: str
    n: int
    mean: float | None
    lo: float | None
    hi: float | None

    @property
    def stopped(self) -> bool:
        """No more seeds for this arm (decided, or undecided at the last look)."""
        return self.decision != OPEN


def _check_design(lo: int, hi: int, confidence: float) -> None:
    if not 2 <= lo <= hi:
        raise ValueError(f"seeds need 2 <= min <= max (a t interval needs two pairs), got min={lo}, max={hi}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


@lru_cache(maxsize=64)
def nominal_level(lo: int, hi: int, confidence: float) -> float:
    """The per-look two-sided level a with P(some interval_n, n = lo..hi, misses the mean) = 1 - confidence."""
    _check_design(lo, hi, confidence)
    rng = np.random.default_rng(_BOUNDARY_SEED)
    s = ss = np.zeros(_SIMULATIONS)
    p_min = np.ones(_SIMULATIONS)
    for n in range(1, hi + 1):  # one seed at a time: memory stays one column whatever hi is
        z = rng.standard_normal(_SIMULATIONS)
        s, ss = s + z, ss + z * z
        if n >= lo:
            mean = s / n
            sd = np.sqrt(np.maximum(ss - s * mean, 0.0) / (n - 1))
            p = 2.0 * sps.t.sf(np.abs(mean) / (sd / math.sqrt(n)), n - 1)  # this look's ordinary t-test p-value
            p_min = np.minimum(p_min, p)
    # a sequence's interval misses at some look exactly when its smallest p-value is below a
    return float(np.quantile(p_min, 1.0 - confidence))


@lru_cache(maxsize=64)
def critical_values(lo: int, hi: int, confidence: float) -> tuple[float, ...]:
    """c_n for n = lo..hi: the t multiplier of each look's interval."""
    a = nominal_level(lo, hi, confidence)
    return tuple(float(sps.t.ppf(1.0 - a / 2.0, n - 1)) for n in range(lo, hi + 1))


def _interval(diffs: Sequence[float], c: float) -> tuple[float, float, float]:
    n = len(diffs)
    mean = math.fsum(diffs) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = c * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _verdict(lo: float, hi: float, effect: float, mode: str) -> str | None:
    if -effect < lo and hi < effect:
        return EQUIVALENT
    if hi < 0.0:
        return BETTER if mode == "min" else WORSE
    if lo > 0.0:
        return WORSE if mode == "min" else BETTER
    return None


def decide(diffs: Sequence[float], effect: float, confidence: float, lo: int, hi: int, mode: str = "min") -> Decision:
    """The decision for one arm from its finished paired differences (arm - control) in seed order.

    effect: the smallest difference that matters (> 0, the metric's units); confidence: e.g. 0.95;
    lo, hi: the looks (seeds.min, seeds.max); mode: "min" or "max", the sweep metric's direction.
    Pairs after the deciding look, or past hi, are not read."""
    _check_design(lo, hi, confidence)
    if not effect > 0.0:
        raise ValueError(f"effect must be a positive difference, got {effect}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    xs = [float(d) for d in diffs]
    if not all(math.isfinite(d) for d in xs):
        raise ValueError(f"paired differences must be finite numbers, got {xs}")
    if len(xs) < lo:
        return Decision(OPEN, len(xs), None, None, None)
    crit = critical_values(lo, hi, confidence)
    for n in range(lo, min(len(xs), hi) + 1):
        mean, low, high = _interval(xs[:n], crit[n - lo])
        verdict = _verdict(low, high, effect, mode)
        if verdict is not None:
            return Decision(verdict, n, mean, low, high)
    return Decision(UNDECIDED if n == hi else OPEN, n, mean, low, high)
