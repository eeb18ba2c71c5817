"""A finished trial's files on its MLflow run: the eval items, where its checkpoints are, the newest if asked."""

from __future__ import annotations

import tempfile
from pathlib import Path

from stlm.sweep.resilience import layout
from stlm.sweep.resilience.outbox import is_transient
from stlm.train.checkpoint import latest_checkpoint, step_of


def log_trial_artifacts(client, store, exp_dir: Path, tid: str, run_id: str, log_checkpoint: bool) -> None:
    """Eval items to eval/, the tag stlm.checkpoint (where `stlm eval RUN_ID` finds the checkpoints), and the
    newest checkpoint as an artifact with sweep.log_checkpoint. A transient tracking error is raised (the outbox
    tries the whole op again); any other is kept as the tag stlm.artifact_error: artifacts never fail a sweep."""
    trial_dir = exp_dir / layout.trial(tid)
    items = trial_dir / layout.EVAL
    try:
        if store.remote:  # the eval items a worker node wrote to the bucket
            store.download(layout.trial(tid, layout.EVAL))
        if items.is_dir() and any(items.iterdir()):
            client.log_artifacts(run_id, str(items), "eval")
        if store.remote:
            _log_remote_checkpoint(client, store, tid, run_id, log_checkpoint)
            return
        run_dir = exp_dir / layout.train_run(tid)  # Ray Train's copies are the only ones
        last = latest_checkpoint(run_dir)
        if last is not None:  # `stlm eval RUN_ID` loads the newest intact checkpoint of this directory
            client.set_tag(run_id, "stlm.checkpoint", str(run_dir))
            if log_checkpoint:
                client.log_artifacts(run_id, str(last), "checkpoint")
    except Exception as e:
        if is_transient(e):
            raise
        client.set_tag(run_id, "stlm.artifact_error", str(e)[:500])


def _log_remote_checkpoint(client, store, tid: str, run_id: str, log_checkpoint: bool) -> None:
    """The trial's checkpoints are in the bucket: tag their URI; log the newest one (downloaded)."""
    steps = [n for n in store.names(layout.train_run(tid)) if n.startswith("step_") and step_of(n) is not None]
    if not steps:
        return
    client.set_tag(run_id, "stlm.checkpoint", f"{store.uri}/{layout.train_run(tid)}")
    if log_checkpoint:
        with tempfile.TemporaryDirectory(prefix="stlm-ckpt-") as tmp:
            newest = max(steps, key=step_of)
            local = store.download(layout.train_run(tid, newest), Path(tmp) / newest)
            client.log_artifacts(run_id, str(local), "checkpoint")
