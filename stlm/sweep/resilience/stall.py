"""A trial whose Ray Train workers stop reporting: its stall limit, the clock that holds it, and the error it ends with.

A worker that hangs (stopped, deadlocked in a collective, waiting on a dead filesystem) reports nothing; Ray Train's
own health check notices only a process that stopped answering, after 600 s (RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S),
and then spends a crash retry on it.
The Tune trial's process, where the Train controller runs (run/train_run.py), keeps a StallClock instead: the time
since its workers' last report, against the trial's stall limit (`resources.stall_timeout`, else derived from the
trial's own report intervals by stall_limit below). Past the limit the attempt is ended as stalled and retried from
the last checkpoint on a budget of its own (max_failures stalls), so a stall never spends the crash budget.

No Ray here: run/train_run.py plugs the clock into Ray Train's controller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stlm.errors import StlmError

FLOOR_S = 60.0  # the derived limit never goes below: a busy node's pause, a slow checkpoint write, a GC
FACTOR = 5.0  # the derived limit: this many times the longest wait between two reports seen in the trial
FIRST_REPORT_S = 1800.0  # before the trial's first report nothing is measured yet: data, model build, compile

# the metrics a report carries once its trial has stalled (MLflow, the summary and the report read them)
STALLS, SILENT, LIMIT, LOST = "stalls", "stall_silent_s", "stall_limit_s", "stall_lost_s"


class TrialStalledError(StlmError):
    """A trial's workers reported nothing for longer than its stall limit (more often than its retries allow)."""


def is_stall(error_text: str) -> bool:
    """Whether a failed trial's error text (fatal.error_text) is a stall's."""
    return TrialStalledError.__name__ in error_text.split("\n", 1)[0]


def stall_limit(
    explicit: float | None,
    *,
    first_waits: list[float],
    gaps: list[float],
    awaiting_first: bool,
    evaluating: bool,
) -> float | None:
    """How long a trial may go without a report, in seconds (None: not watched now).

    explicit: resources.stall_timeout, which holds for every wait, the end-of-training evaluation's included.
    Otherwise the limit is derived from what this trial has measured so far, FACTOR times the longest wait:
      first_waits  from an attempt's workers starting to train to its first report (data, model build, compile,
                   one eval_interval of steps, the validation and the checkpoint);
      gaps         between two reports of an attempt (one eval_interval of steps, validation, checkpoint);
    and never below FLOOR_S. Awaiting an attempt's first report, the first waits are the measure (FIRST_REPORT_S
    before any was measured); after it, the gaps (the first wait until a gap is measured). The benchmark
    evaluation after the last training step (eval.tasks) has no earlier measurement to derive from: it is
    watched only by an explicit limit.
    """
    if explicit is not None:
        return float(explicit)
    if evaluating:
        return None
    if awaiting_first:
        return max(FLOOR_S, FACTOR * max(first_waits)) if first_waits else FIRST_REPORT_S
    measured = gaps or first_waits
    return max(FLOOR_S, FACTOR * max(measured)) if measured else FIRST_REPORT_S


@dataclass
class StallClock:
    """One trial's reports over its Ray Train attempts, and the stalls among them.

    The controller calls attempt_starting (a worker group is being started), training_started (its workers run the
    training function), reported (each report, rank 0's metrics) and check (at every poll of the workers).
    """

    explicit: float | None  # resources.stall_timeout
    budget: int  # stalls retried from the last checkpoint (max_failures), counted apart from crashes
    evaluates: bool  # the trial ends with a benchmark evaluation after its last training step (eval.tasks)
    t_start: float  # when the Tune trial started (time.time()): the workers' startup_s counts from it
    clock: Callable[[], float] = time.monotonic  # silences and gaps
    wall: Callable[[], float] = time.time  # attempts' starts, against t_start
    first_waits: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    stalls: int = 0
    silent_s: float = 0.0  # the silence when the last stall was declared
    limit_s: float = 0.0  # the limit it broke
    lost_s: float = 0.0  # all stalls: from the last report before each to the start of its retry
    last_step: int | None = None  # the step of the last report (None: none yet)
    attempts: int = 0
    _attempt_wall: float = 0.0  # time.time() when the current attempt started
    _since: float | None = None  # monotonic: the current attempt's training start or last report
    _first_pending: bool = True  # the current attempt has not reported yet
    _stalled_at: float | None = None  # monotonic: the last report (or training start) before a declared stall
    _max_steps: int | None = None

    def attempt_starting(self) -> None:
        self.attempts += 1
        self._attempt_wall = self.wall()
        self._since = None  # the placement group and the workers' start are start-up, not silence
        if self._stalled_at is not None:
            self.lost_s += self.clock() - self._stalled_at
            self._stalled_at = None

    def training_started(self) -> None:
        self._since = self.clock()
        self._first_pending = True

    def limit(self) -> float | None:
        steps = (self.last_step, self._max_steps)
        evaluating = self.evaluates and None not in steps and steps[0] >= steps[1]  # past the last training report
        return stall_limit(
            self.explicit,
            first_waits=self.first_waits,
            gaps=self.gaps,
            awaiting_first=self._first_pending,
            evaluating=evaluating,
        )

    def reported(self, metrics: dict) -> dict:
        """Note a report; the metrics to pass on (the attempt's own start-up, and the stalls so far once any)."""
        now = self.clock()
        if self._since is not None:
            (self.first_waits if self._first_pending else self.gaps).append(now - self._since)
        self._since, self._first_pending = now, False
        out = dict(metrics)
        self.last_step = out.get("step", self.last_step)
        self._max_steps = out.get("max_steps", self._max_steps)
        if self.attempts > 1 and isinstance(out.get("startup_s"), (int, float)):
            # the worker counts from the Tune trial's start; a retried attempt's start-up counts from its own
            out["startup_s"] = max(0.0, out["startup_s"] - (self._attempt_wall - self.t_start))
        if self.stalls:
            out.update({STALLS: self.stalls, SILENT: self.silent_s, LIMIT: self.limit_s, LOST: self.lost_s})
        return out

    def check(self) -> str | None:
        """At a poll of the workers: None, or (once the silence passed the limit) why the attempt is stalled."""
        if self._since is None:
            return None
        limit = self.limit()
        silent = self.clock() - self._since
        if limit is None or silent <= limit:
            return None
        self.stalls += 1
        self.silent_s, self.limit_s, self._stalled_at = silent, limit, self._since
        self._since = None  # one declaration per attempt
        return self.describe()

    @property
    def retry(self) -> bool:
        """Whether the stall just declared is retried (its own budget, not the crash budget's)."""
        return self.stalls <= self.budget

    def describe(self) -> str:
        where = f"after step {self.last_step}" if self.last_step is not None else "before its first report"
        source = "resources.stall_timeout" if self.explicit is not None else "derived from its report intervals"
        return (
            f"no report from its Ray Train workers for {self.silent_s:.1f} s {where} "
            f"(stall limit {self.limit_s:.0f} s, {source}; stall {self.stalls}, of {self.budget} retried)"
        )
