"""What an experiment directory holds (`sweep_state`), and what that means for the command given (`decide`)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from stlm.sweep.plan.sweep import Sweep
from stlm.sweep.resilience import layout

# what `sweep_state` finds
EMPTY = "empty"  # nothing there (a driver's lock is not a sweep)
PLANNED = "planned"  # the plan written, Tune never saved a state: nothing to continue
STARTED = "started"  # Tune saved a state: --resume continues it
OTHER = "other"  # files that are not a sweep's

# what the command does with the directory (`decide`)
FRESH = "fresh"  # an empty directory: the sweep starts
RESUME = "resume"  # --resume: Tune continues from its saved state
RESTART = "restart"  # --resume of a sweep stopped before its first saved state: it starts again from its plan
OVERWRITE = "overwrite"  # what is there is superseded and deleted, and the sweep starts afresh
DESCRIBE = "describe"  # --dry-run: the sweep is described, nothing is written
REFUSED = "refused"  # the directory holds something this command must not touch: --resume or --overwrite would
DEAD_END = "dead_end"  # --resume with no sweep to continue: only starting it helps


def sweep_state(exp_dir: Path, store=None) -> str:
    """EMPTY | PLANNED | STARTED | OTHER. With `store` in an object store, the bucket is asked (exp_dir is
    only its mirror)."""
    if store is not None and store.remote:
        names = [n for n in store.names() if n != layout.SESSION]
        if not names:
            return EMPTY
        if fnmatch.filter(store.names(layout.TUNE), "experiment_state-*.json"):
            return STARTED
        return PLANNED if layout.PLAN in names else OTHER
    if not exp_dir.is_dir():
        return EMPTY
    entries = [p for p in exp_dir.iterdir() if not p.name.endswith(".lock")]  # a driver's lock is not a sweep
    if not entries:
        return EMPTY
    if any((exp_dir / layout.TUNE).glob("experiment_state-*.json")):
        return STARTED
    if (exp_dir / layout.PLAN).is_file():
        return PLANNED
    return OTHER


def rerun_command(sweep: Sweep, exp_dir: Path, *flags: str, overrides: bool = True) -> str:
    parts = [
        "python -m stlm.sweep",
        str(sweep.path),
        *(sweep.overrides if overrides else []),
        *flags,
        "--experiment-dir",
        str(exp_dir),
    ]
    return " ".join(parts)


@dataclass(frozen=True)
class Decision:
    """What `python -m stlm.sweep` does with an experiment directory in `state` (see `decide`)."""

    state: str
    action: str
    resume: bool  # --resume was given
    overwrite: bool  # --overwrite was given

    @property
    def reads_plan(self) -> bool:
        """The sweep comes from the directory's plan.pkl, not from the sweep file (--resume)."""
        return self.resume and self.state in (PLANNED, STARTED)

    @property
    def delete_runs(self) -> bool:
        """Overwriting: the superseded sweep's MLflow runs are deleted (a planned sweep has no results)."""
        return self.action == OVERWRITE and self.state == PLANNED

    def refusal(self, sweep: Sweep, store) -> str | None:
        """The error (naming the command that would go on) when the command must stop; None otherwise."""
        if self.action == DEAD_END:
            return (
                f"--resume: {store} holds no sweep to continue (no {layout.PLAN}). Start it with: "
                f"{rerun_command(sweep, store)}"
            )
        if self.action == REFUSED and self.state == STARTED:
            return (
                f"The experiment directory {store} already holds a sweep that has started. Continue "
                f"it with: {rerun_command(sweep, store, '--resume', overrides=False)} ; or start "
                "afresh with --overwrite, or choose another --experiment-dir."
            )
        if self.action == REFUSED:
            return (
                f"The experiment directory {store} holds files that are not a sweep's; choose another "
                "--experiment-dir, or pass --overwrite to delete them."
            )
        return None

    def note(self, store) -> str | None:
        """What the user is told once the directory is locked, when the sweep does not do what was asked."""
        if self.action == RESTART:
            return (
                f"note: {store} holds a sweep that was stopped before its first saved state; it starts again "
                "from its plan (no trial had finished)."
            )
        if self.action == OVERWRITE and self.state == PLANNED and not self.overwrite:
            return f"note: {store} holds a sweep that was stopped before its first saved state; starting afresh."
        return None


def decide(state: str, *, resume: bool, overwrite: bool, dry_run: bool) -> Decision:
    """The action for a directory in `state` (`sweep_state`) given the command's flags. --resume wins over
    --overwrite; --dry-run describes whatever the other flags would run, refusing only an impossible --resume."""
    if resume:
        if state in (EMPTY, OTHER):
            action = DEAD_END
        else:
            action = DESCRIBE if dry_run else RESTART if state == PLANNED else RESUME
    elif dry_run:
        action = DESCRIBE
    elif state == EMPTY:
        action = FRESH
    elif state == PLANNED or overwrite:
        action = OVERWRITE
    else:
        action = REFUSED
    return Decision(state=state, action=action, resume=resume, overwrite=overwrite)
