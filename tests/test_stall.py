"""A trial's stall limit and its stall budget (issue 28, item 4), without Ray running: the default limit derived
from the trial's own report intervals, the clock over a trial's attempts, and Ray Train's failure policy with
stalls counted apart from crashes. The end-to-end test (a worker stopped with SIGSTOP) is in test_faults.py."""

from __future__ import annotations

from stlm.sweep.resilience.stall import (
    FACTOR,
    FIRST_REPORT_S,
    FLOOR_S,
    LOST,
    STALLS,
    StallClock,
    TrialStalledError,
    is_stall,
    stall_limit,
)


def limit(explicit=None, first=(), gaps=(), awaiting_first=False, evaluating=False):
    return stall_limit(
        explicit, first_waits=list(first), gaps=list(gaps), awaiting_first=awaiting_first, evaluating=evaluating
    )


def test_the_default_limit_follows_the_trials_own_report_intervals_with_a_floor():
    assert limit(awaiting_first=True) == FIRST_REPORT_S  # nothing measured yet: start-up, compile, first steps
    assert limit(first=[2.0], awaiting_first=True) == FLOOR_S  # a quick trial still gets the floor
    assert limit(first=[40.0, 30.0], gaps=[1.0], awaiting_first=True) == FACTOR * 40.0  # a retry's first report
    assert limit(first=[40.0], gaps=[20.0, 30.0]) == FACTOR * 30.0  # between reports: the longest gap
    assert limit(first=[40.0]) == FACTOR * 40.0  # one report so far: its wait stands in for a gap
    assert limit(first=[40.0], gaps=[30.0], evaluating=True) is None  # the end-of-training benchmarks: unmeasured
    assert limit(7.5, first=[40.0], gaps=[30.0]) == 7.5  # resources.stall_timeout holds for every wait ...
    assert limit(7.5, evaluating=True) == 7.5  # ... the evaluation's included


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_clock_over_a_trials_attempts():
    """Fresh attempt: first report after 30 s, then every 20 s (limit 5 x 20 = 100 s). A silence of 100 s is
    still allowed, 101 s is a stall; the retry's wait for its first report is held to 5 x 30 s; the reports
    after it carry the stall, and the retry's start-up counts from the retry."""
    t = FakeTime()
    clock = StallClock(explicit=None, budget=1, evaluates=True, t_start=t.now, clock=t, wall=t)
    clock.attempt_starting()
    t.now += 5  # placement group, workers' start: start-up, not silence
    assert clock.check() is None
    clock.training_started()
    t.now += 30
    assert clock.reported({"step": 10, "max_steps": 40, "startup_s": 5.0}) == {
        "step": 10,
        "max_steps": 40,
        "startup_s": 5.0,
    }
    for step in (20, 30):
        t.now += 20
        clock.reported({"step": step, "max_steps": 40})
    assert clock.limit() == FACTOR * 20
    t.now += 100
    assert clock.check() is None
    t.now += 1
    why = clock.check()
    assert "101.0 s after step 30" in why and "stall limit 100 s, derived from its report intervals" in why
    assert clock.stalls == 1 and clock.retry and clock.check() is None  # one declaration per attempt
    t.now += 4  # the stopped workers killed, the group shut down
    clock.attempt_starting()
    t.now += 6
    clock.training_started()
    assert clock.limit() == FACTOR * 30  # the first wait measured in the first attempt
    t.now += 3
    out = clock.reported({"step": 30, "max_steps": 40, "startup_s": 1000.0})  # a replayed report
    assert out[STALLS] == 1 and out[LOST] == 105.0  # last report -> the retry's start
    assert out["startup_s"] == 1000.0 - 180.0  # the retry started 180 s after the Tune trial
    clock.reported({"step": 40, "max_steps": 40})  # the last training step: the benchmarks run now
    t.now += 10_000
    assert clock.check() is None  # unmeasured, so unwatched without an explicit limit
    clock.stalls = 2
    assert not clock.retry  # a second stall is past a budget of one


def test_stalls_do_not_spend_ray_trains_crash_budget():
    """Ray Train's own policy with max_failures=1, wrapped: a stall, a crash, both retried; a second crash or a
    second stall is refused (each budget is one)."""
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision, create_failure_policy
    from ray.train.v2.api.exceptions import WorkerGroupError

    from stlm.sweep.run.train_run import stall_policy_class

    clock = StallClock(explicit=5.0, budget=1, evaluates=False, t_start=0.0)
    policy = stall_policy_class()(create_failure_policy(FailureConfig(max_failures=1)), clock)

    def stall():
        clock.stalls += 1  # what StallClock.check does when it declares one
        return WorkerGroupError("stalled", {0: TrialStalledError("no report"), 1: TrialStalledError("no report")})

    crash = WorkerGroupError("killed", {0: RuntimeError("worker died")})
    assert policy.make_decision(stall()) == FailureDecision.RETRY
    assert policy.make_decision(crash) == FailureDecision.RETRY  # the stall spent none of max_failures
    assert policy.make_decision(stall()) == FailureDecision.RAISE
    assert policy.make_decision(crash) == FailureDecision.RAISE


def test_a_stalled_trials_error_is_told_from_a_crash():
    head = "stlm.sweep.resilience.stall.TrialStalledError: Trial a0b01119 stalled: no report from its workers"
    assert is_stall(head + "\n\nTraceback ...")
    assert not is_stall("ray.train.WorkerGroupError: Training failed\n\n... TrialStalledError in a traceback")
