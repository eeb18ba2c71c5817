"""MLflow for sweeps: one parent run per sweep, one child run per trial, resume-safe.

Not ray.air.integrations.mlflow.MLflowLoggerCallback: a resumed sweep must write into the
runs it already has, without repeating a metric point. So this Tune callback keeps its
own ledger in the experiment directory (mlflow_state.json, rewritten atomically after each
change):

    {"parent_run_id": ..., "trials": {trial_id: {"run_id", "last_step", "eval_logged", "status"}}}

On resume the ledger maps each Tune trial back to its MLflow run, and `last_step` is re-read
from the run's own `step` metric history (what MLflow really stored, even if the driver died
between a write and the ledger update). A result whose `step` is not past `last_step` logs
nothing but its eval/* metrics, once.

Child run: tags mlflow.parentRunId, stlm.sweep, stlm.arm, stlm.seed, stlm.trial_id, stlm.status
(running/finished/failed/stopped), stlm.git_commit (+ stlm.error on failure); params: the
flattened resolved config, params.total, flops_per_token; metrics: every reported number at
step=`step`; artifacts: config.yaml, eval item JSONL files, optionally the final checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ray.tune import Callback

from stlm import tracking as T
from stlm.config import flatten, to_dict

STATE_FILE = "mlflow_state.json"
# keys Ray Tune adds to every result; not training metrics
TUNE_KEYS = {
    "done", "training_iteration", "trial_id", "timestamp", "date", "time_this_iter_s", "time_total_s",
    "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
    "experiment_tag", "should_checkpoint", "checkpoint_path", "timesteps_total", "episodes_total",
    "timesteps_since_restore", "config",
    "max_steps",  # reported for the scheduler; it is the param train.max_steps
}


def _write_json(path: Path, data: dict) -> None:
    """Atomic and durable (temp + fsync + rename); a full disk is a DiskFullError naming the path."""
    from stlm.atomic import write_atomic

    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))


class Ledger:
    """trial_id -> MLflow run and last logged step, persisted in the experiment directory."""

    def __init__(self, exp_dir: Path):
        self.path = Path(exp_dir) / STATE_FILE
        self.data: dict = {"parent_run_id": None, "trials": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())

    def save(self) -> None:
        _write_json(self.path, self.data)

    def remove_leftovers(self) -> None:
        """Temp files of a writer killed mid-write (or stopped by a full disk); call from the one writer."""
        for stale in self.path.parent.glob(f".{STATE_FILE}.tmp-*"):
            stale.unlink(missing_ok=True)

    @property
    def trials(self) -> dict[str, dict]:
        return self.data["trials"]


def start_parent(client, ledger: Ledger, sweep, experiment: str, exp_dir: Path, space) -> str:
    """The sweep's parent run (reused on resume)."""
    run_id = ledger.data.get("parent_run_id")
    if run_id and T.reopen_run(client, run_id):
        client.set_tag(run_id, "stlm.status", "running")
        return run_id
    spec = sweep.spec
    run_id = T.create_run(client, experiment, run_name=f"sweep-{sweep.name}", tags={
        "stlm.sweep": sweep.name, "stlm.kind": "sweep", "stlm.status": "running",
        "stlm.control_arm": sweep.control_arm, "stlm.metric": ",".join(spec.metrics),
    })
    T.log_params(client, run_id, {
        "sweep.name": sweep.name, "sweep.file": str(sweep.path), "sweep.overrides": " ".join(sweep.overrides),
        "sweep.arms": ",".join(a.name for a in sweep.arms), "sweep.seeds": ",".join(map(str, spec.seeds)),
        "sweep.trials": sweep.num_trials, "sweep.algorithm": spec.search.algorithm,
        "sweep.samples_per_cell": spec.search.samples, "sweep.scheduler": spec.scheduler.type,
        "sweep.metric": ",".join(spec.metrics), "sweep.mode": ",".join(spec.modes),
        "sweep.budget": spec.budget.target if spec.budget else None, "sweep.experiment_dir": str(exp_dir),
        **({"sweep.sizes": ",".join(str(a.name).rpartition("@")[2] for a in sweep.arms if a.base == sweep.arms[0].base)}
           if spec.budget is not None and spec.budget.sized else {}),  # arm names end in @size; the report pairs within one
    })
    client.log_text(run_id, sweep.path.read_text(), "sweep.yaml")
    ledger.data["parent_run_id"] = run_id
    ledger.save()
    return run_id


class MLflowSweepCallback(Callback):
    def __init__(self, *, tracking_uri: str, experiment: str, sweep, space, exp_dir: Path, prepare_trial):
        self.uri = tracking_uri
        self.experiment = experiment
        self.sweep = sweep
        self.space = space
        self.exp_dir = Path(exp_dir)
        self.prepare_trial = prepare_trial  # (config, trial_id) -> (Config, ParamCount, trial_dir)
        self._max_steps: dict[str, int] = {}
        self._open()

    def _open(self):
        self.ledger = Ledger(self.exp_dir)
        self.client = T.mlflow_client(self.uri)
        self.parent_run_id = self.ledger.data.get("parent_run_id")

    # Tune pickles its callbacks with the experiment (tuner.pkl); the client and ledger are rebuilt
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("client", None)
        state.pop("ledger", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    # -------------------------------------------------------------- Tune hooks

    def setup(self, **info):
        self._open()
        self.ledger.remove_leftovers()
        # resumed sweep: trust MLflow's own record of the last step of every trial run
        for tid, t in self.ledger.trials.items():
            try:
                hist = self.client.get_metric_history(t["run_id"], "step")
            except Exception:
                continue
            t["last_step"] = max([int(m.step) for m in hist], default=-1)
        if self.ledger.trials:
            self.ledger.save()

    def on_trial_start(self, iteration, trials, trial, **info):
        tid = trial.trial_id
        entry = self.ledger.trials.get(tid)
        if entry is not None and entry.get("status") == "finished":  # run_trial reports it again; nothing reruns
            self._remember_max_steps(trial)
            return
        if entry is not None and T.reopen_run(self.client, entry["run_id"]):
            self.client.set_tag(entry["run_id"], "stlm.status", "running")
            entry["status"] = "running"
            self.ledger.save()
            self._remember_max_steps(trial)
            return
        arm, seed = trial.config["arm"], trial.config["seed"]
        tags = {
            "stlm.sweep": self.sweep.name, "stlm.arm": arm, "stlm.seed": seed, "stlm.trial_id": tid,
            "stlm.status": "running", "stlm.kind": "trial",
        }
        run_id = T.create_run(self.client, self.experiment, run_name=f"{arm}-s{seed}-{tid}", tags=tags,
                              parent_run_id=self.parent_run_id)
        self.ledger.trials[tid] = {"run_id": run_id, "last_step": -1, "eval_logged": False, "status": "running",
                                   "arm": arm, "seed": seed}
        self.ledger.save()
        try:
            cfg, counted, _ = self.prepare_trial(trial.config, tid)
        except Exception as e:  # an unresolvable trial config: the trial itself will fail with this error
            self.client.set_tag(run_id, "stlm.error", str(e)[:4000])
            return
        self._max_steps[tid] = cfg.train.max_steps
        knobs = {f"search.{k}": v for k, v in trial.config.items() if k not in ("arm", "seed")}
        T.log_config(self.client, run_id, cfg, extra={
            "params.total": counted.total, "flops_per_token": counted.flops_per_token,
            "sweep.arm": arm, "sweep.seed": seed, **knobs,
        })

    def on_trial_result(self, iteration, trials, trial, result, **info):
        entry = self.ledger.trials.get(trial.trial_id)
        if entry is None or "step" not in result:
            return
        step = int(result["step"])
        numbers = {k: v for k, v in result.items()
                   if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        curves = {k: v for k, v in numbers.items() if not k.startswith("eval/")}
        evals = {k: v for k, v in numbers.items() if k.startswith("eval/")}
        changed = False
        if step > entry["last_step"] and curves:
            T.log_metrics(self.client, entry["run_id"], curves, step=step)
            entry["last_step"] = step
            changed = True
        if evals and not entry.get("eval_logged"):
            T.log_metrics(self.client, entry["run_id"], evals, step=step)
            entry["eval_logged"] = True
            changed = True
        if changed:
            self.ledger.save()

    def on_trial_complete(self, iteration, trials, trial, **info):
        entry = self.ledger.trials.get(trial.trial_id)
        if entry is None:
            return
        max_steps = self._max_steps.get(trial.trial_id)
        stopped = max_steps is not None and entry["last_step"] < max_steps
        status = "stopped" if stopped else "finished"
        self._log_artifacts(trial, entry)
        self.client.set_tag(entry["run_id"], "stlm.status", status)
        T.end_run(self.client, entry["run_id"], "KILLED" if stopped else "FINISHED")
        entry["status"] = status
        self.ledger.save()

    def on_trial_error(self, iteration, trials, trial, **info):
        entry = self.ledger.trials.get(trial.trial_id)
        if entry is None:
            return
        self.client.set_tag(entry["run_id"], "stlm.status", "failed")
        self.client.set_tag(entry["run_id"], "stlm.error", error_text(trial)[:4000])
        T.end_run(self.client, entry["run_id"], "FAILED")
        entry["status"] = "failed"
        self.ledger.save()

    # -------------------------------------------------------------- helpers

    def _remember_max_steps(self, trial):
        try:
            cfg, _, _ = self.prepare_trial(trial.config, trial.trial_id)
            self._max_steps[trial.trial_id] = cfg.train.max_steps
        except Exception:
            pass

    def _log_artifacts(self, trial, entry):
        trial_dir = self.exp_dir / "trials" / trial.trial_id
        items = trial_dir / "eval"
        try:
            if items.is_dir() and any(items.iterdir()):
                self.client.log_artifacts(entry["run_id"], str(items), "eval")
            from stlm.train.checkpoint import latest_checkpoint

            run_dir = self.exp_dir / "train" / trial.trial_id  # Ray Train's copies are the only ones
            last = latest_checkpoint(run_dir)
            if last is not None:  # `stlm eval RUN_ID` loads the newest intact checkpoint of this directory
                self.client.set_tag(entry["run_id"], "stlm.checkpoint", str(run_dir))
                if self.sweep.spec.log_checkpoint:
                    self.client.log_artifacts(entry["run_id"], str(last), "checkpoint")
        except Exception as e:  # artifacts are a convenience; never fail the sweep over them
            self.client.set_tag(entry["run_id"], "stlm.artifact_error", str(e)[:500])

    def finish(self, status: str = "finished"):
        if self.parent_run_id:
            self.client.set_tag(self.parent_run_id, "stlm.status", status)
            T.end_run(self.client, self.parent_run_id,
                      {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))


def log_comparison(client, parent_run_id: str, metrics: dict[str, float]) -> None:
    """The arms' comparison (stlm.sweep.compare.mlflow_metrics: per-arm means, paired differences and
    interval ends, per size) as metrics of the sweep's parent run, so MLflow's compare view shows it."""
    if metrics:
        T.log_metrics(client, parent_run_id, metrics, step=0)


def error_text(trial) -> str:
    """'ExceptionType: message' of a failed trial (first line), then the tail of its traceback."""
    path = getattr(trial, "error_file", None)
    text = ""
    try:
        if path and Path(path).is_file():
            text = re.sub(r"\x1b\[[0-9;]*m", "", Path(path).read_text())
    except OSError:
        pass
    if not text:
        return "trial failed (no error text recorded)"
    causes = [ln.strip() for ln in text.splitlines() if ERROR_LINE.match(ln.strip())]
    head = causes[-1] if causes else text.strip().splitlines()[-1]
    return f"{head}\n\n{text[-3000:]}"


ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*?:")


def flat_config(cfg) -> dict[str, Any]:
    return flatten(to_dict(cfg))
