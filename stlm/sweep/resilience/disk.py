"""Stop a sweep before its disk is full, while every state file can still be written whole.

Ray Tune writes its experiment state in place (not atomically): a full disk mid-write left a
truncated experiment_state-*.json that --resume could not read, and Tune then silently started a new
experiment. tune_state.py makes that write atomic, but Ray's own logs and staging files
still need room, so the driver checks the free space of the experiment directory once a second and ends
the sweep (a DiskFullError: one paragraph naming the directory, the space it needs and the command
that continues it) while there is still room for every running trial's next checkpoint plus the
small state files. A trial that meets a full disk anyway (another program filled it) stops the
sweep the same way. What was persisted stays; --resume continues once space is freed.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray import tune

from stlm.atomic import disk_full_error, free_bytes
from stlm.sweep.resilience.fatal import error_text

STATE_RESERVE = 16 * 2**20  # Tune's experiment state, the searcher, the ledger, Ray's logs for a while
BYTES_PER_PARAM = 16  # a checkpoint: fp32 weights (4) + Adam's two moments (8), plus headroom


class DiskGuard(tune.Callback):
    def __init__(self, exp_dir: Path, sweep, every_s: float = 1.0, where: str | None = None):
        self.exp_dir = Path(exp_dir)  # (an object store's: the mirror, where Tune stages its state)
        self.checkpoint_bytes = max(a.count.total for a in sweep.arms) * BYTES_PER_PARAM + 2**20
        self.resume = f"python -m stlm.sweep {sweep.path} --resume --experiment-dir {where or self.exp_dir}"
        self.every_s = every_s
        self._due = 0.0

    def needed(self, running: int) -> int:
        return max(1, running) * self.checkpoint_bytes + STATE_RESERVE

    def _stop(self, needed: int):
        raise disk_full_error(self.exp_dir, needed, then=f"then continue the sweep with: {self.resume}")

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.every_s
        needed = self.needed(sum(1 for t in trials if t.status == "RUNNING"))
        free = free_bytes(self.exp_dir)
        if free is not None and free < needed:
            self._stop(needed)

    def on_trial_error(self, iteration, trials, trial, **info):
        head = error_text(trial).splitlines()[0]  # 'ExceptionType: message' of the cause
        if "DiskFullError" in head or "No space left on device" in head:
            self._stop(self.needed(sum(1 for t in trials if t.status == "RUNNING") + 1))
