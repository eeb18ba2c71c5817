"""The sweep a command runs: the sweep file's, or on --resume the plan the directory started with, checked
against the sweep file so that a changed plan is refused rather than silently ignored."""

from __future__ import annotations

import pickle

from stlm.errors import StlmError
from stlm.sweep.plan.sweep import Sweep, absolutize, load_sweep
from stlm.sweep.resilience import layout, legacy, storage
from stlm.sweep.resilience.fingerprint import check_unchanged, fingerprint
from stlm.sweep.resilience.state import Decision


def planned_sweep(sweep: Sweep, store, decision: Decision, *, overrides: list[str]) -> Sweep:
    """The sweep to run: the file's (paths made absolute), or on --resume the directory's plan; a command
    the directory's state refuses stops here, naming the command that would go on."""
    refusal = decision.refusal(sweep, store)
    if refusal:
        raise StlmError(refusal)
    if not decision.reads_plan:
        absolutize(sweep)
        return sweep
    legacy.install()  # a directory written before the package split pickled its old module names
    planned = pickle.loads(store.read_bytes(layout.PLAN) if store.remote else (store.local / layout.PLAN).read_bytes())
    _check_plan(planned, sweep, store, overrides)
    return planned


def _check_plan(planned: Sweep, sweep: Sweep, store, overrides: list[str]) -> None:
    """--resume: the sweep file, with the overrides given now (none given: the ones it started with), must give
    the plan the directory started with; a changed one is refused, naming every difference."""
    if not overrides and planned.overrides:
        sweep = load_sweep(sweep.path, planned.overrides)
    absolutize(sweep)  # as the plan was written
    old = storage.read_json(store, layout.PLAN_FINGERPRINT)
    if old is None:  # a directory written before plan.json: its pickled plan is the fingerprint
        try:
            old = fingerprint(planned)
        except (AttributeError, TypeError) as e:  # a plan pickled by an stlm too old to read this way
            print(f"note: the plan in {store} cannot be compared with the sweep file ({e}); it is resumed as planned.")
            return
    check_unchanged(old, sweep, store)
