"""The Tune callback that logs every trial to MLflow, resume-safe and off the Tune loop (see tracking/__init__.py)."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from stlm.config import dump_yaml, flatten, to_dict
from stlm.errors import StlmError
from stlm.sweep.resilience import layout, storage
from stlm.sweep.resilience.fatal import error_text
from stlm.sweep.resilience.outbox import OUTAGE_ENV, is_transient
from stlm.sweep.resilience.stall import STALLS, is_stall
from stlm.sweep.tracking.artifacts import log_trial_artifacts
from stlm.sweep.tracking.ledger import Ledger
from stlm.sweep.tracking.runs import arm_size
from stlm.tracking import (
    METRICS_PER_CALL,
    create_run,
    end_with_status,
    log_params,
    mlflow_client,
    reopen_run,
    status_of,
)

log = logging.getLogger("stlm.sweep")


# keys Ray Tune adds to every result; not training metrics
TUNE_KEYS = {
    "done",
    "training_iteration",
    "trial_id",
    "timestamp",
    "date",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "hostname",
    "node_ip",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "experiment_tag",
    "should_checkpoint",
    "checkpoint_path",
    "timesteps_total",
    "episodes_total",
    "timesteps_since_restore",
    "config",
    "max_steps",  # reported for the scheduler; it is the param train.max_steps
}


class MLflowSweepCallback(Callback):
    """Tune events -> MLflow, through an Outbox (outbox.py): the hooks only queue what to write, one
    background thread writes it, so a slow or restarting tracking server never holds up the Tune
    loop. Each op is applied once: its effect and its seq go into the ledger in one save, and a
    metric point keeps the time Tune received it (MLflow's SQL store drops an exact duplicate, so a
    write repeated after a lost reply adds no point).

    One child run per cell: a driver killed after a trial's run was made but before Tune's next save of
    its state leaves a run whose trial Tune never restores; Tune starts the cell again under a new
    trial id, which gets its own run. At the first trial start of each driver, the child runs whose
    trial Tune does not know and that did not finish are ended and hidden, not reused (their curves
    would mix two trials' steps): tagged stlm.status=superseded, ended KILLED and deleted (MLflow's
    soft delete: the UI's default view and the report leave them out, the UI's "Deleted" view and
    `mlflow runs restore` bring them back; load_trials skips the tag too)."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        sweep,
        space,
        exp_dir: Path,
        prepare_trial,
        exp_uri: str | None = None,
    ):
        self.uri = tracking_uri
        self.experiment = experiment
        self.sweep = sweep
        self.space = space
        self.exp_dir = Path(exp_dir)  # an object store's: this machine's mirror of it
        self.exp_uri = exp_uri or str(self.exp_dir)
        self.prepare_trial = prepare_trial  # (config, trial_id) -> (Config, ParamCount, trial_dir)
        self._open()

    def _open(self):
        self.ledger = Ledger(self.exp_dir)
        self.client = None  # made in the drainer thread, the only one that writes
        self.parent_run_id = self.ledger.data.get("parent_run_id")
        self._outbox = None
        self._orphans_checked = False  # once per driver: see the class docstring

    # Tune pickles its callbacks with the experiment (tuner.pkl); client, ledger and outbox are rebuilt
    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("client", "ledger", "_outbox"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

        if storage.is_remote(getattr(self, "exp_uri", "")):  # resumed elsewhere: this machine's mirror
            self.exp_dir = storage.open(self.exp_uri).local
        self._open()

    @property
    def outbox(self):
        if self._outbox is None:
            # lazy: the outbox starts (and replays) on first use, once Tune is set up
            from stlm.sweep.resilience.outbox import Outbox

            # MLflow's own retries (7, up to ~4 min inside one call) would hide an outage from the
            # outbox's clock and keep a write waiting long after the server is back: the outbox retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            self._outbox = Outbox.shared(
                self.exp_dir / layout.OUTBOX,
                self._apply,
                done_seq=int(self.ledger.data.get("outbox_done", 0)),
                where=self.uri,
            )
        return self._outbox

    # -------------------------------------------------------------- Tune hooks (they only queue)

    def setup(self, **info):
        self.ledger.remove_leftovers()  # temp files of a ledger write a full disk cut short
        # starting the outbox replays what an earlier driver queued but never wrote; then, on a
        # resumed sweep, trust MLflow's own record of the last step of every trial run
        if self.ledger.trials:
            self.outbox.put({"kind": "resync"})
        self.outbox  # noqa: B018 - the property starts the outbox (its replay), even with nothing to queue

    def on_step_begin(self, iteration, trials, **info):
        why = self.outbox.overdue()
        if why:
            stop_tune_like_ctrl_c(self.outbox, why)

    def on_trial_start(self, iteration, trials, trial, **info):
        if not self._orphans_checked:
            self._orphans_checked = True
            self.outbox.put({"kind": "orphans", "live": sorted(t.trial_id for t in trials)})
        tid = trial.trial_id
        entry = self.ledger.trials.get(tid)
        if entry is not None and entry.get("status") == "finished":  # run_trial reports it again; nothing reruns
            return
        arm, seed = trial.config["arm"], trial.config["seed"]
        op = {"kind": "start", "trial": tid, "arm": arm, "seed": seed, "size": arm_size(self.sweep, arm)}
        try:
            cfg, counted, _ = self.prepare_trial(trial.config, tid)
        except Exception as e:  # an unresolvable trial config: the trial itself will fail with this error
            op["error"] = str(e)[:4000]
        else:
            knobs = {f"search.{k}": v for k, v in trial.config.items() if k not in ("arm", "seed")}
            op.update(
                max_steps=cfg.train.max_steps,
                config_yaml=dump_yaml(cfg),
                params={
                    **flat_config(cfg),
                    "params.total": counted.total,
                    "flops_per_token": counted.flops_per_token,
                    **knobs,
                },
            )
        self.outbox.put(op)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "step" not in result:
            return
        numbers = {
            k: v
            for k, v in result.items()
            if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.outbox.put(
            {
                "kind": "metrics",
                "trial": trial.trial_id,
                "step": int(result["step"]),
                "ms": int(time.time() * 1000),
                "metrics": numbers,
            }
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.outbox.put({"kind": "complete", "trial": trial.trial_id})

    def on_trial_error(self, iteration, trials, trial, **info):
        self.outbox.put({"kind": "error", "trial": trial.trial_id, "error": error_text(trial)[:4000]})

    def on_experiment_end(self, trials, **info):
        # the driver reads the ledger's statuses next (the summary table): let the writes land first
        self.outbox.wait()

    # -------------------------------------------------------------- the drainer thread

    def _apply(self, op: dict) -> None:
        if self.client is None:
            self.client = mlflow_client(self.uri)
        kind = op["kind"]
        entry = self.ledger.trials.get(op.get("trial"))
        if kind == "resync":
            self._resync()
        elif kind == "start":
            self._start_run(op, entry)
        elif kind == "orphans":
            self._supersede_orphans(set(op["live"]))
        elif kind == "parent_end":
            if self.parent_run_id:
                end_with_status(self.client, self.parent_run_id, op["status"])
        elif entry is None:
            pass  # a trial whose run MLflow refused to make (the outbox logged it as skipped)
        elif kind == "metrics":
            self._log_points(op, entry)
        elif kind == "complete":
            max_steps = entry.get("max_steps")
            stopped = max_steps is not None and entry["last_step"] < max_steps
            status = "stopped" if stopped else "finished"
            self._log_artifacts(op["trial"], entry)
            end_with_status(self.client, entry["run_id"], status)
            entry["status"] = status
        elif kind == "error":
            self.client.set_tag(entry["run_id"], "stlm.error", op["error"])
            status = "stalled" if is_stall(op["error"]) else "failed"  # a stall more often than its retries allow
            end_with_status(self.client, entry["run_id"], status)
            entry["status"] = status
        self.ledger.data["outbox_done"] = op["seq"]
        self.ledger.save()

    def _resync(self) -> None:

        for t in self.ledger.trials.values():
            try:
                hist = self.client.get_metric_history(t["run_id"], "step")
            except Exception as e:
                if is_transient(e):
                    raise
                continue  # a run deleted meanwhile: nothing to correct
            t["last_step"] = max([int(m.step) for m in hist], default=-1)

    def _start_run(self, op: dict, entry: dict | None) -> None:
        tid = op["trial"]
        if entry is not None and reopen_run(self.client, entry["run_id"]):
            self.client.set_tag(entry["run_id"], "stlm.status", "running")
            entry["status"] = "running"
            entry.setdefault("max_steps", op.get("max_steps"))
            return
        run_id = self._existing_run(tid)  # made by a driver that died before its ledger save
        # the search sample of its (arm, seed) cell: the cell's trials are started in order, one op at a time
        sample = sum(1 for t in self.ledger.trials.values() if (t["arm"], t["seed"]) == (op["arm"], op["seed"]))
        cell = {
            "arm": op["arm"],
            "seed": op["seed"],
            "sample": sample,
            **({"size": op["size"]} if op.get("size") else {}),
        }
        if run_id is None:
            tags = {
                "stlm.sweep": self.sweep.name,
                **{f"stlm.{k}": v for k, v in cell.items()},  # tags and params alike: the runs table shows both
                "stlm.trial_id": tid,
                "stlm.status": "running",
                "stlm.kind": "trial",
            }
            run_id = create_run(
                self.client,
                self.experiment,
                run_name=f"{op['arm']}-s{op['seed']}-{tid}",
                tags=tags,
                parent_run_id=self.parent_run_id,
            )
        if op.get("error"):
            self.client.set_tag(run_id, "stlm.error", op["error"])
        else:
            log_params(self.client, run_id, {**op["params"], **{f"sweep.{k}": v for k, v in cell.items()}})
            self.client.log_text(run_id, op["config_yaml"], layout.TRIAL_CONFIG)
        self.ledger.trials[tid] = {
            "run_id": run_id,
            "last_step": -1,
            "eval_logged": False,
            "status": "running",
            "arm": op["arm"],
            "seed": op["seed"],
            "max_steps": op.get("max_steps"),
        }

    def _supersede_orphans(self, live: set[str]) -> None:
        """End and hide the unfinished child runs of trials that Tune does not know (the class docstring)."""
        if not self.parent_run_id:
            return
        exp = self.client.get_run(self.parent_run_id).info.experiment_id
        runs = self.client.search_runs(
            [exp], filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'", max_results=50_000
        )
        for run in runs:
            tid = run.data.tags.get("stlm.trial_id")
            if tid in live or status_of(run) == "finished":
                continue
            end_with_status(self.client, run.info.run_id, "superseded")
            self.client.delete_run(run.info.run_id)
            self.ledger.trials.pop(tid, None)
            log.warning("trial run %s (trial %s) was left by a killed driver; superseded", run.info.run_id, tid)

    def _existing_run(self, tid: str) -> str | None:
        if not self.parent_run_id:
            return None
        exp = self.client.get_run(self.parent_run_id).info.experiment_id
        runs = self.client.search_runs(
            [exp],
            max_results=1,
            filter_string=(f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.stlm.trial_id = '{tid}'"),
        )
        return runs[0].info.run_id if runs else None

    def _log_points(self, op: dict, entry: dict) -> None:
        """A result's curves once per step (a restored trial re-reports its earlier steps) and its eval/*
        numbers once, each point with the time Tune received it."""
        # lazy: mlflow, as in stlm.tracking
        from mlflow.entities import Metric

        step, ms = op["step"], op["ms"]

        def is_eval(k):
            return k.startswith("eval/") or k == "eval_s"  # only in the final report, at the last step again

        curves = {k: v for k, v in op["metrics"].items() if not is_eval(k)}
        evals = {k: v for k, v in op["metrics"].items() if is_eval(k)}
        new_step = step > entry["last_step"] and bool(curves)
        points = [Metric(k, float(v), ms, step) for k, v in curves.items()] if new_step else []
        if evals and not entry.get("eval_logged"):
            points += [Metric(k, float(v), ms, step) for k, v in evals.items()]
        for i in range(0, len(points), METRICS_PER_CALL):
            self.client.log_batch(entry["run_id"], metrics=points[i : i + METRICS_PER_CALL])
        if new_step:
            entry["last_step"] = step
        if evals:
            entry["eval_logged"] = True
        stalls = int(op["metrics"].get(STALLS, 0))
        if stalls > entry.get(STALLS, 0):  # the run says so among its tags, where the MLflow UI filters runs
            self.client.set_tag(entry["run_id"], "stlm.stalls", str(stalls))
            entry[STALLS] = stalls

    def _log_artifacts(self, tid: str, entry: dict) -> None:
        store = storage.open(getattr(self, "exp_uri", None) or self.exp_dir)
        log_trial_artifacts(self.client, store, self.exp_dir, tid, entry["run_id"], self.sweep.spec.log_checkpoint)

    # -------------------------------------------------------------- the end (the driver's main thread)

    def finish(self, status: str = "finished"):
        """End the parent run once every queued write is in MLflow (waiting at most the outage limit
        for a finished sweep, 30 s otherwise). A sweep stopped or finished while the server stays away
        raises; its writes are kept in the outbox file for --resume."""
        box = self.outbox
        box.put({"kind": "parent_end", "status": status})
        if box.wait(None if status == "finished" else 30.0):
            return
        if status == "finished" or box.stop_reason:
            raise StlmError(
                f"Stopped: {box.stop_reason or box.overdue() or 'MLflow writes are still waiting'}. Nothing "
                f"trained is lost: {box.pending()} MLflow writes are kept in {box.path}. Once the server answers "
                f"again, run `python -m stlm.sweep {self.sweep.path} --resume --experiment-dir {self.exp_dir}` "
                f"to write them and finish the sweep ({OUTAGE_ENV} sets how long a sweep waits for the server)."
            )
        print(
            f"note: {box.pending()} MLflow writes not made yet ({box.last_error}); `--resume` makes them.", flush=True
        )


def stop_tune_like_ctrl_c(box, why: str) -> None:
    """Stop the Tune run as Ctrl-C does: Tune's own SIGINT/SIGUSR1 handler sets its 'interrupted' event,
    the loop ends, the experiment state is saved for --resume, and the driver then reports `why`."""
    if box.stop_reason:
        return
    box.stop_reason = why
    handler = signal.getsignal(signal.SIGUSR1)
    if not callable(handler):  # Tune runs outside the main thread: there is no handler to ask
        raise StlmError(why)
    log.warning("stopping the sweep: %s", why)
    handler(signal.SIGUSR1, None)


def flat_config(cfg) -> dict[str, Any]:
    return flatten(to_dict(cfg))
