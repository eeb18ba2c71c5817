"""Every name under a sweep's experiment directory, in one place (a file format: an older directory must still read).

<exp>/plan.pkl                 the resolved sweep, pickled when it starts (--resume reads it)
<exp>/plan.json                its fingerprint (resilience/fingerprint.py): --resume refuses a changed plan
<exp>/sweep.json               what `stlm report` reads: names, MLflow ids, the summary
<exp>/mlflow_state.json        the ledger: trial id -> MLflow run, last logged step
<exp>/mlflow_outbox.jsonl      MLflow writes queued but not yet made
<exp>/.stlm-session            an object store's: which machine last ran the driver
<exp>/tune/                    Ray Tune's experiment state
<exp>/train/<trial id>/        Ray Train's run: the persisted checkpoints (the only copies) and its snapshot
<exp>/trials/<trial id>/       config.yaml, eval/items.jsonl, fatal_error.json
<exp>/report/                  the report (stlm report)
<exp>/data/                    a cluster's prepared corpora (run/cluster_data.py)
<exp>/ray/                     a local Ray's temp dir pointer (run/ray_cluster.py)
<exp>/restore/                 an object store's: checkpoints a worker downloaded
<exp>.lock                     the driver's lock, beside the directory (resilience/lock.py)
"""

from __future__ import annotations

import os
from pathlib import Path

PLAN = "plan.pkl"
PLAN_FINGERPRINT = "plan.json"
SWEEP_JSON = "sweep.json"
LEDGER = "mlflow_state.json"
OUTBOX = "mlflow_outbox.jsonl"
SESSION = ".stlm-session"
DRIVER_FILES = (
    PLAN,
    PLAN_FINGERPRINT,
    SWEEP_JSON,
    LEDGER,
    OUTBOX,
)  # the driver's own files: an object store's are restored on --resume

TUNE = "tune"
TRAIN = "train"
TRIALS = "trials"
REPORT = "report"
DATA = "data"
RAY = "ray"
RESTORE = "restore"

# in trials/<trial id>/
TRIAL_CONFIG = "config.yaml"
FATAL = "fatal_error.json"  # a trial error no retry can fix
EVAL = "eval"
EVAL_ITEMS = "items.jsonl"

# in train/<trial id>/ and its checkpoints
HISTORY = "stlm_reports.jsonl"  # every report of the run up to a checkpoint, inside that checkpoint
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's registered checkpoints


def trial(trial_id: str, *parts: str) -> str:
    """trials/<trial id>/<parts>, relative to the experiment directory."""
    return "/".join((TRIALS, trial_id, *parts))


def train_run(trial_id: str, *parts: str) -> str:
    """train/<trial id>/<parts>: the trial's Ray Train run, relative to the experiment directory."""
    return "/".join((TRAIN, trial_id, *parts))


def lock_path(exp_dir: str | os.PathLike) -> Path:
    """<exp>.lock, beside the directory (so --overwrite can delete the directory while holding it)."""
    exp_dir = Path(exp_dir).resolve()
    return exp_dir.with_name(exp_dir.name + ".lock")
