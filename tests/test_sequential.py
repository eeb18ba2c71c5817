"""Adaptive seeds (stlm.sweep.analysis.sequential): the decision rule's edge cases, and thousands of simulated
sweeps showing its intervals stay valid when the sweep stops on what it has seen, where re-testing an ordinary
t interval after every seed does not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stlm import stats
from stlm.sweep.analysis import sequential as seq

EFFECT, CONFIDENCE, LO, HI = 0.01, 0.95, 3, 10
SWEEPS = 20_000
ALPHA = 1.0 - CONFIDENCE
MC_SE = math.sqrt(ALPHA * (1.0 - ALPHA) / SWEEPS)  # Monte-Carlo standard error of a rate near alpha: 0.0015


def decide(diffs, mode="min", lo=LO, hi=HI):
    return seq.decide(diffs, EFFECT, CONFIDENCE, lo, hi, mode)


# --------------------------------------------------------------------------- the rule


def test_fewer_pairs_than_min_keep_the_arm_open_without_an_interval():
    d = decide([-0.5, -0.5])
    assert (d.decision, d.n, d.lo, d.hi, d.stopped) == ("open", 2, None, None, False)


@pytest.mark.parametrize(
    "diffs, mode, expected",
    [
        ([-0.30, -0.31, -0.29], "min", "better"),  # lower loss: better when the metric is minimised
        ([-0.30, -0.31, -0.29], "max", "worse"),  # lower accuracy: worse when it is maximised
        ([0.30, 0.31, 0.29], "min", "worse"),
        ([0.30, 0.31, 0.29], "max", "better"),
    ],
)
def test_better_or_worse_follows_the_metric_direction(diffs, mode, expected):
    d = decide(diffs, mode)
    assert d.decision == expected and d.n == 3 and d.stopped
    assert (d.hi < 0.0) if diffs[0] < 0 else (d.lo > 0.0)


def test_identical_arms_are_equivalent_at_once():
    # two names for one config train the same bits: every difference is exactly 0, the interval [0, 0]
    d = decide([0.0, 0.0, 0.0])
    assert (d.decision, d.n, d.mean, d.lo, d.hi) == ("equivalent", 3, 0.0, 0.0, 0.0)


def test_a_real_but_negligible_difference_is_equivalent():
    d = decide([-0.002, -0.0021, -0.0019])  # excludes 0, but lies well inside +-effect
    assert d.hi < 0.0 and -EFFECT < d.lo
    assert d.decision == "equivalent"


def test_open_until_max_then_undecided():
    noisy = [0.02, -0.03, 0.025, -0.02, 0.03, -0.025, 0.02, -0.03, 0.025, -0.02]
    for n in range(LO, HI):
        d = decide(noisy[:n])
        assert (d.decision, d.n, d.stopped) == ("open", n, False)
        assert d.lo < 0.0 < d.hi  # the current interval is there to show
    d = decide(noisy)
    assert (d.decision, d.n, d.stopped) == ("undecided", HI, True)


def test_pairs_after_the_deciding_look_or_past_max_are_not_read():
    clear = [-0.30, -0.31, -0.29]
    decided = decide(clear)
    assert decide(clear + [5.0, 5.0, 5.0]) == decided  # a late contrary pair cannot undo the decision
    noisy = [0.02, -0.03, 0.025, -0.02, 0.03, -0.025, 0.02, -0.03, 0.025, -0.02]
    assert decide(noisy + [-9.0] * 5) == decide(noisy)  # the design's last look is max


def test_the_intervals_are_wider_than_a_single_t_interval_and_one_look_is_exactly_one():
    crit = seq.critical_values(LO, HI, CONFIDENCE)
    fixed = [stats.t_quantile(0.5 + CONFIDENCE / 2.0, n - 1) for n in range(LO, HI + 1)]
    assert all(c > f for c, f in zip(crit, fixed))  # paying for 8 looks
    assert list(crit) == sorted(crit, reverse=True)  # narrower as seeds are added
    # one look (min == max) is an ordinary fixed-n t interval, up to the boundary's Monte-Carlo error
    (one,) = seq.critical_values(5, 5, CONFIDENCE)
    assert one == pytest.approx(stats.t_quantile(0.975, 4), rel=0.01)
    assert seq.nominal_level(LO, HI, CONFIDENCE) == seq.nominal_level(LO, HI, CONFIDENCE)  # same design, same a


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(lo=1, hi=5), "min <= max"),
        (dict(lo=6, hi=5), "min <= max"),
        (dict(confidence=1.0), "confidence"),
        (dict(effect=0.0), "effect"),
        (dict(mode="lowest"), "mode"),
        (dict(diffs=[0.1, float("nan"), 0.2]), "finite"),
    ],
)
def test_bad_arguments_say_which(kwargs, words):
    args = dict(diffs=[0.1, 0.2, 0.3], effect=EFFECT, confidence=CONFIDENCE, lo=LO, hi=HI, mode="min") | kwargs
    with pytest.raises(ValueError, match=words):
        seq.decide(**args)


# --------------------------------------------------------------------------- simulated sweeps


def _simulate(true_diff: float, sd: float, seed: int) -> np.ndarray:
    """SWEEPS synthetic sweeps: each row the paired differences of seeds 1..HI, normal around true_diff."""
    return true_diff + sd * np.random.default_rng(seed).standard_normal((SWEEPS, HI))


def _sequential(sweeps: np.ndarray, mode: str = "min") -> list[seq.Decision]:
    # decide() replays the looks min..max and stops at the first that decides: what the sweep does seed by seed
    return [decide(row.tolist(), mode) for row in sweeps]


def _naive_false_rate(sweeps: np.ndarray) -> float:
    """Re-test an ordinary 95% t interval after every seed from min to max; stop at the first that excludes 0
    (a false difference here) or lies inside +-effect."""
    running, false = np.ones(len(sweeps), bool), np.zeros(len(sweeps), bool)
    for n in range(LO, HI + 1):
        x = sweeps[:, :n]
        half = stats.t_quantile(0.5 + CONFIDENCE / 2.0, n - 1) * x.std(axis=1, ddof=1) / math.sqrt(n)
        lo, hi = x.mean(axis=1) - half, x.mean(axis=1) + half
        differ, same = running & ((lo > 0) | (hi < 0)), running & (lo > -EFFECT) & (hi < EFFECT)
        false |= differ
        running &= ~(differ | same)
    return float(false.mean())


@pytest.mark.parametrize("sd", [EFFECT, 2 * EFFECT, 20 * EFFECT])  # seed-to-seed spread of the difference
def test_no_true_difference_rarely_decides_better_or_worse_where_naive_retesting_often_does(sd):
    sweeps = _simulate(0.0, sd, seed=11)
    decisions = _sequential(sweeps)
    false = sum(d.decision in ("better", "worse") for d in decisions) / SWEEPS
    naive = _naive_false_rate(sweeps)
    seeds = sum(d.n for d in decisions) / SWEEPS
    print(f"sd={sd / EFFECT:g}x effect: false better/worse {false:.4f} (sequential), {naive:.4f} (naive), "
          f"alpha {ALPHA:.2f} +- {MC_SE:.4f}; average seeds {seeds:.2f}")  # fmt: skip
    assert false <= ALPHA + 3 * MC_SE
    assert naive > ALPHA + 3 * MC_SE  # peeking at ordinary intervals after every seed
    if sd == 20 * EFFECT:  # nothing stops for equivalence: the whole error budget is spent, no more (not wasted)
        assert false > ALPHA - 4 * MC_SE


@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_difference_of_twice_the_effect_is_decided_with_fewer_seeds_than_max(mode):
    true_diff = -2 * EFFECT if mode == "min" else 2 * EFFECT  # better in either direction
    decisions = _sequential(_simulate(true_diff, EFFECT, seed=12), mode)
    right = sum(d.decision == "better" for d in decisions) / SWEEPS
    wrong = sum(d.decision in ("worse", "equivalent") for d in decisions) / SWEEPS
    seeds = sum(d.n for d in decisions) / SWEEPS
    print(f"true difference 2x effect, sd = effect ({mode}): better {right:.4f}, wrong {wrong:.5f}, "
          f"average seeds {seeds:.2f} of {LO}..{HI}")  # fmt: skip
    assert right >= 0.95
    assert wrong <= ALPHA
    assert LO < seeds <= 6.0  # against HI = 10 for a fixed budget


def test_deciding_seed_by_seed_matches_deciding_from_all_the_results():
    # a resumed sweep re-reads its finished pairs: the answer must not depend on when it looked
    for row in _simulate(-EFFECT, EFFECT, seed=13)[:300].tolist():
        n = LO
        while (step := decide(row[:n])).decision == "open":
            n += 1
        assert step == decide(row)
