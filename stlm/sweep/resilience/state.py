"""What an experiment directory holds, and what that means for the command given.
"""

from __future__ import annotations

from stlm.sweep.resilience import layout

from pathlib import Path

from stlm.sweep.plan.sweep import Sweep


def sweep_state(exp_dir: Path, store=None) -> str:
    """empty | planned (plan written, Tune never saved a state: nothing to continue) | started | other.
    With `store` in an object store, the bucket is asked (exp_dir is only its mirror)."""
    if store is not None and store.remote:
        import fnmatch

        
        names = [n for n in store.names() if n != layout.SESSION]
        if not names:
            return "empty"
        if fnmatch.filter(store.names("tune"), "experiment_state-*.json"):
            return "started"
        return "planned" if layout.PLAN in names else "other"
    if not exp_dir.is_dir():
        return "empty"
    entries = [p for p in exp_dir.iterdir() if not p.name.endswith(".lock")]  # a driver's lock is not a sweep
    if not entries:
        return "empty"
    if any((exp_dir / "tune").glob("experiment_state-*.json")):
        return "started"
    if (exp_dir / layout.PLAN).is_file():
        return "planned"
    return "other"


def rerun_command(sweep: Sweep, exp_dir: Path, *flags: str, overrides: bool = True) -> str:
    parts = ["python -m stlm.sweep", str(sweep.path), *(sweep.overrides if overrides else []), *flags,
             "--experiment-dir", str(exp_dir)]
    return " ".join(parts)
