"""Module names an experiment directory written before the sweep package was split still refers to.

plan.pkl and Ray Tune's saved state (its callbacks, the Optuna searcher and its search space) pickle
classes by module name, and until commit 59f722f the package was flat: stlm.sweep.spec, .space,
.runner, .tracking, ... `install()` makes each old name an alias whose attributes are looked up in
the modules that hold those classes now, so such a directory still resumes. The driver calls it
before it unpickles anything.
"""

from __future__ import annotations

import importlib
import sys
import types

P = "stlm.sweep."
OLD_MODULES: dict[str, tuple[str, ...]] = {
    P + "spec": ("plan.schema", "plan.sweep", "plan.overrides", "plan.describe"),
    P + "space": ("plan.space",),
    P + "runner": ("run.trial", "run.worker", "run.ray_cluster", "run.tuner", "run.data"),
    P + "disk": ("resilience.disk",),
    P + "storage": ("resilience.storage",),
    P + "outbox": ("resilience.outbox",),
    P + "lock": ("resilience.lock",),
    P + "tune_state": ("resilience.tune_state",),
    P + "train_run": ("run.train_run",),
    P + "cluster_data": ("run.cluster_data",),
    P + "preflight": ("run.preflight",),
    P + "compare": ("analysis.compare",),
    P + "search_report": ("analysis.knobs",),
}
# stlm.sweep.tracking is a package now: the classes pickled from the old module, and their homes
OLD_TRACKING = {"MLflowSweepCallback": "tracking.callback", "Ledger": "tracking.ledger"}


class _Alias(types.ModuleType):
    """An old module name whose attributes are those of the new modules, looked up in order."""

    def __init__(self, name: str, homes: tuple[str, ...]):
        super().__init__(name)
        self._homes = homes

    def __getattr__(self, attr: str):
        return find(self._homes, attr, self.__name__)


def find(homes: tuple[str, ...], attr: str, old: str):
    for home in homes:
        module = importlib.import_module(P + home)
        if hasattr(module, attr):
            return getattr(module, attr)
    raise AttributeError(f"{old}.{attr} has no new home (stlm/sweep/resilience/legacy.py)")


def install() -> None:
    for old, homes in OLD_MODULES.items():
        sys.modules.setdefault(old, _Alias(old, homes))
