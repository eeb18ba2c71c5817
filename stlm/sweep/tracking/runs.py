"""The sweep's MLflow runs over their life: the parent started or reopened, runs ended, repaired or superseded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stlm.sweep.plan.space import parent_params
from stlm.sweep.resilience import layout
from stlm.sweep.tracking.ledger import Ledger
from stlm.tracking import create_run, end_with_status, log_params, mlflow_client, reopen_run


def start_parent(client, ledger: Ledger, sweep, experiment: str, exp_dir: Path, space) -> str:
    """The sweep's parent run (reused on resume)."""
    run_id = ledger.data.get("parent_run_id")
    if run_id and reopen_run(client, run_id):
        client.set_tag(run_id, "stlm.status", "running")
        return run_id
    spec = sweep.spec
    run_id = create_run(
        client,
        experiment,
        run_name=f"sweep-{sweep.name}",
        tags={
            "stlm.sweep": sweep.name,
            "stlm.kind": "sweep",
            "stlm.status": "running",
            "stlm.control_arm": sweep.control_arm,
            "stlm.metric": ",".join(spec.metrics),
        },
    )
    log_params(
        client,
        run_id,
        {
            "sweep.name": sweep.name,
            "sweep.file": str(sweep.path),
            "sweep.overrides": " ".join(sweep.overrides),
            "sweep.arms": ",".join(a.name for a in sweep.arms),
            "sweep.seeds": ",".join(map(str, spec.seeds)),
            "sweep.trials": sweep.num_trials,
            "sweep.algorithm": spec.search.algorithm,
            "sweep.samples_per_cell": spec.search.samples,
            "sweep.scheduler": spec.scheduler.type,
            "sweep.metric": ",".join(spec.metrics),
            "sweep.mode": ",".join(spec.modes),
            "sweep.budget": spec.budget.target if spec.budget else None,
            "sweep.experiment_dir": str(exp_dir),
            **(
                {
                    "sweep.sizes": ",".join(
                        str(a.name).rpartition("@")[2] for a in sweep.arms if a.base == sweep.arms[0].base
                    )
                }
                if spec.budget is not None and spec.budget.sized
                else {}
            ),  # arm names end in @size; the report pairs within one
            **parent_params(space),  # sweep.search: the searched knobs' distributions, for their importances
        },
    )
    client.log_text(run_id, sweep.path.read_text(), "sweep.yaml")
    ledger.data["parent_run_id"] = run_id
    ledger.save()
    return run_id


def supersede(exp_dir: Path, *, delete_runs: bool) -> None:
    """Before an experiment directory is cleared: its MLflow runs must not stay RUNNING. A sweep that never
    saved a state (delete_runs) is deleted from MLflow with its trial runs (a rerun replaces it); an
    overwritten one that had started is kept, ended KILLED."""
    try:
        ledger = Ledger(exp_dir)
        info = json.loads((exp_dir / layout.SWEEP_JSON).read_text()) if (exp_dir / layout.SWEEP_JSON).is_file() else {}
    except (OSError, ValueError):
        return
    parent = ledger.data.get("parent_run_id")
    if not parent or not info.get("tracking_uri"):
        return
    try:
        client = mlflow_client(info["tracking_uri"])
        for run_id in [t["run_id"] for t in ledger.trials.values()] + [parent]:
            retire(client, run_id, "overwritten", delete=delete_runs)
    except Exception as e:  # noqa: BLE001 - the store may be gone; the directory is cleared either way
        print(f"note: could not update the old sweep's MLflow runs ({type(e).__name__}: {e}).")


def retire(client, run_id: str, status: str, *, delete: bool) -> None:
    """End a run left RUNNING with `status`, then delete it if asked. Ended first: a deleted run keeps its
    state, and a parent deleted while RUNNING (a sweep killed while preparing its data, then rerun)
    still showed RUNNING in the store and in the UI's "Deleted" view."""
    if client.get_run(run_id).info.status == "RUNNING":
        end_with_status(client, run_id, status)
    if delete:
        client.delete_run(run_id)


def end_parent(client, parent: str, status: str) -> None:
    """The parent run's end state (stlm.tracking.END_STATE: finished, interrupted or failed)."""
    end_with_status(client, parent, status)


def repair_runs(client, exp_dir: Path, results=None) -> int:
    """No trial run is left RUNNING once the driver is done: a run whose trial Tune finished (or failed)
    while the driver that owned the run was killed gets that end state; one still unfinished, KILLED
    (a later --resume reopens it). Returns how many runs were repaired."""
    ledger = Ledger(exp_dir)
    outcome = {}
    for r in results or []:
        tid = (r.metrics or {}).get("trial_id") or (r.path and Path(r.path).name)
        outcome[tid] = "failed" if r.error else "finished"
    fixed = 0
    for tid, entry in ledger.trials.items():
        try:
            if client.get_run(entry["run_id"]).info.status != "RUNNING":
                continue
        except Exception:  # noqa: BLE001 - a deleted run: nothing to repair
            continue
        status = outcome.get(tid, "stopped")
        end_with_status(client, entry["run_id"], status)
        entry["status"] = status
        fixed += 1
    if fixed:
        ledger.save()
    return fixed


def restart_from_plan(client, exp_dir: Path, store=None) -> None:
    """--resume of a sweep stopped before Tune's first save: its trial runs are deleted (the trials start
    again under new ids, so keeping them would give each cell two runs), Tune's and Train's partial
    state is removed; the parent run is kept."""
    ledger = Ledger(exp_dir)
    for entry in ledger.trials.values():
        try:
            retire(client, entry["run_id"], "superseded", delete=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    ledger.data["trials"] = {}
    ledger.save()
    for sub in (layout.TUNE, layout.TRAIN, layout.TRIALS):
        shutil.rmtree(exp_dir / sub, ignore_errors=True)
        if store is not None and store.remote:
            store.delete(sub)


def end_runs(client, exp_dir: Path, parent: str, status: str) -> None:
    """Leave no run RUNNING on the way out, as far as the tracking server lets us: with the server away,
    the error that ends the sweep (and the --resume that repairs the runs) matters more than this."""
    try:
        repair_runs(client, exp_dir)
        end_parent(client, parent, status)
    except Exception as e:  # noqa: BLE001 - an unreachable tracking server
        print(f"note: the MLflow runs could not be ended now ({type(e).__name__}); --resume repairs them.", flush=True)
