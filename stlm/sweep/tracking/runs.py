"""The sweep's MLflow runs over their life: the parent started or reopened, runs ended, repaired or superseded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stlm.sweep.plan.describe import budget_lines
from stlm.sweep.plan.space import SPACE_PARAM, parent_params
from stlm.sweep.plan.sweep import size_label
from stlm.sweep.resilience import layout
from stlm.sweep.tracking.ledger import Ledger
from stlm.tracking import (
    create_run,
    end_with_status,
    log_params,
    mlflow_client,
    reopen_run,
    save_runs_view,
    set_description,
    ui_link,
)


def arm_size(sweep, arm: str) -> str | None:
    """The parameter budget an arm was solved to, as sized arm names say it ('10M'); None without a budget."""
    size = next((a.size for a in sweep.arms if a.name == arm), None)
    return size_label(size) if size else None


def start_parent(client, ledger: Ledger, sweep, experiment: str, exp_dir: Path, space, plan_text: str = "") -> str:
    """The sweep's parent run (reused on resume), and the saved runs-table view of its trials (save_view).
    plan_text: what --dry-run prints (plan.describe), kept as the artifact plan.txt."""
    run_id = ledger.data.get("parent_run_id")
    if run_id and reopen_run(client, run_id):
        client.set_tag(run_id, "stlm.status", "running")
        save_view(client, sweep, space, client.get_run(run_id).info.experiment_id, run_id)
        status_note(client, run_id, f"**Running** again (resumed). {WHEN_DONE}")
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
            "sweep.budget_text": " ".join(budget_lines(sweep)),  # the question's budget, as --dry-run says it
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
    if plan_text:  # every arm's size, FLOPs and steps
        client.log_text(run_id, plan_text + "\n", PLAN_TEXT)
    ledger.data["parent_run_id"] = run_id
    ledger.save()
    save_view(client, sweep, space, client.get_run(run_id).info.experiment_id, run_id)
    status_note(client, run_id, f"**Running.** {WHEN_DONE}")
    return run_id


WHEN_DONE = "The per-arm summary, the plots and links to the report are written here when the sweep ends."


def status_note(client, run_id: str, sentence: str) -> None:
    """The parent run's description before the sweep has a summary (report/description.py writes that): its
    question and where it stands."""
    run = client.get_run(run_id)
    tags = run.data.tags
    text = f"### Sweep `{tags.get('stlm.sweep', '')}`\n\n{question(run.data.params, tags.get('stlm.control_arm'))}"
    set_description(client, run_id, f"{text}\n\n{sentence}")


PLAN_TEXT = "plan.txt"  # the parent run's artifact: what --dry-run prints


def question(params: dict[str, str], control: str | None) -> str:
    """The sweep's question as one Markdown paragraph, read back from its parent run's params (start_parent):
    the arms and the control, the objective, the budget in parameters and compute, the seeds and the search."""

    def items(key: str) -> list[str]:
        return [x for x in (params.get(key) or "").split(",") if x]

    arms = ", ".join(f"`{a}`" + (" (control)" if a == control else "") for a in items("sweep.arms"))
    metrics, modes = items("sweep.metric") or ["val_bpb"], items("sweep.mode") or ["min"]
    goal = "; ".join(f"{m}, {'lower' if mo == 'min' else 'higher'} is better" for m, mo in zip(metrics, modes))
    budget = (params.get("sweep.budget_text") or "").removeprefix("budget: ") or (
        "no parameter budget: every arm keeps its configured size"
    )
    if "compute:" not in budget:
        budget += "; compute not matched: every arm trains its configured train.max_steps"
    seeds = items("sweep.seeds")
    parts = [f"**Question.** Arms {arms}; {goal}.", f"Budget: {budget}."]
    trials = f"{params['sweep.trials']} trials" if params.get("sweep.trials") else "trials"
    parts.append(f"Seeds {', '.join(seeds)}, paired across the arms; {trials}")
    try:
        knobs = list(json.loads(params.get(SPACE_PARAM) or "{}"))
    except ValueError:
        knobs = []
    samples = params.get("sweep.samples_per_cell")
    if knobs:
        parts[-1] += (
            f", {samples} search sample(s) per (arm, seed) cell, Optuna {params.get('sweep.algorithm', '')} over "
            + ", ".join(f"`{k}`" for k in knobs)
        )
    parts[-1] += "."
    return " ".join(parts)


def view_id(parent_run_id: str) -> str:
    """The id of a sweep's saved runs-table view (the experiment tag mlflow.sharedViewState.<id>)."""
    return f"stlm-sweep-{parent_run_id}"


def ui_lines(client, uri: str, parent_run_id: str) -> str:
    """Where the MLflow UI shows a sweep: the parent run's page (its description holds the summary) and the
    saved view of its trials, both opened as a model-training experiment."""
    try:
        exp = client.get_run(parent_run_id).info.experiment_id
    except Exception as e:  # noqa: BLE001 - the server went away at the end: the `mlflow ui` command still holds
        return f"  (the MLflow UI links need the tracking server: {type(e).__name__})"
    return (
        f"  the answer, on the parent run's page: {ui_link(uri, exp, run_id=parent_run_id)}\n"
        f"  every trial, best first:              {ui_link(uri, exp, view_id=view_id(parent_run_id))}"
    )


def save_view(client, sweep, space, experiment_id: str, parent_run_id: str) -> None:
    """The runs-table view of the sweep's trials, saved on its experiment: one row per trial run, with its arm,
    seed, size and search sample, the searched knobs, its parameters, the sweep's metrics and the eval
    accuracies as columns, best first. The MLflow UI lists it under "Views"; ui_link(view_id=...) opens it."""
    spec = sweep.spec
    cell = ["sweep.arm", "sweep.seed"] + (["sweep.size"] if spec.budget and spec.budget.target else [])
    cell += ["sweep.sample"] if spec.search.samples > 1 else []
    knobs = [f"search.{k}" for k in space.distributions()]
    metrics = [m for m in dict.fromkeys([*spec.metrics, "val_bpb"]) if m != "params"]  # `params` is a param
    evals = [f"eval/{t}/acc" for t in sweep.arms[0].cfg.eval.tasks]
    save_runs_view(
        client,
        experiment_id,
        view_id(parent_run_id),
        f"sweep {sweep.name}: trials ({parent_run_id[:8]})",
        columns=[f"params.{k}" for k in (*cell, *knobs, "params.total")] + [f"metrics.{m}" for m in (*metrics, *evals)],
        search_filter=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=f"metrics.{spec.metrics[0]}" if spec.metrics[0] != "params" else "params.params.total",
        ascending=spec.modes[0] == "min",
    )


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
