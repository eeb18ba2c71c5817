"""MLflow for sweeps: one parent run per sweep, one child run per trial, resume-safe.

ledger.py     trial id -> MLflow run and last logged step, in the experiment directory
runs.py       the runs' life: the parent started or reopened, runs ended, repaired, superseded
callback.py   the Tune callback that queues every write for the outbox (resilience/outbox.py)
artifacts.py  a finished trial's eval items and checkpoints on its run
"""


def __getattr__(name: str):
    # a directory written before the package was split pickled its callback as stlm.sweep.tracking.X
    from stlm.sweep.resilience import legacy

    if name not in legacy.OLD_TRACKING:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return legacy.find((legacy.OLD_TRACKING[name],), name, __name__)
