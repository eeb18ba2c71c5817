"""One Tune trial: its config resolved, then a Ray Train run of worker.py (or its finished results reported again).

Ray is imported inside the functions: the driver imports this module before it starts Ray, and a dry run never does.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from stlm.atomic import DiskFullError
from stlm.config import dump_yaml
from stlm.errors import StlmError
from stlm.models import count_params
from stlm.sweep.plan.space import SearchSpace
from stlm.sweep.plan.sweep import Sweep
from stlm.sweep.resilience import layout, storage
from stlm.sweep.resilience.fatal import read_fatal
from stlm.sweep.resilience.stall import StallClock, TrialStalledError
from stlm.sweep.run.worker import worker_loop
from stlm.sweep.tracking.ledger import Ledger
from stlm.tracking import mlflow_client


@dataclasses.dataclass
class Context:
    """Everything a trial needs, pickled once into the object store (tune.with_parameters)."""

    sweep: Sweep
    space: SearchSpace
    exp_dir: str  # the experiment directory: an absolute path, or an object-store URI (storage.py)


def prepare_trial(ctx: Context, config: dict, trial_id: str):
    """(Config, ParamCount, trial dir) of a trial: arm + seed + knobs, budget-solved, absolute paths."""
    cfg = ctx.space.resolve(config)
    trial_dir = storage.open(ctx.exp_dir).local / layout.trial(trial_id)  # (an object store's: this machine's copy)
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, out_dir=str(trial_dir / "checkpoints"), run_name="run")
    )
    return cfg, count_params(cfg.model), trial_dir


def run_trial(config: dict, ctx: Context) -> None:
    import ray.train  # lazy: see the module docstring
    from ray import tune

    from stlm.sweep.run.train_run import trainer_class  # lazy: imports Ray Train

    t_start = time.time()
    trial_id = tune.get_context().get_trial_id()
    if config.get("arch.infeasible"):
        raise StlmError(f"trial {trial_id}: the sampled shape {config} cannot meet the budget (not launched).")
    cfg, counted, trial_dir = prepare_trial(ctx, config, trial_id)
    if report_finished(ctx, trial_id):  # --resume after a kill that came before Tune saved this trial's end
        return
    store = storage.open(ctx.exp_dir)
    fatal = read_fatal(trial_dir, store)
    if fatal and fatal["type"] == "NonFiniteLossError":  # the same config diverges the same way again
        raise StlmError(fatal["message"])
    (trial_dir / layout.FATAL).unlink(missing_ok=True)  # any other error may be gone now: try again
    if store.remote:
        store.delete(layout.trial(trial_id, layout.FATAL))
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / layout.TRIAL_CONFIG).write_text(dump_yaml(cfg))
    store.upload(layout.trial(trial_id, layout.TRIAL_CONFIG))
    resources = ctx.sweep.spec.resources
    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    stalls = StallClock(
        explicit=resources.stall_timeout,
        budget=ctx.sweep.spec.max_failures,
        evaluates=bool(cfg.eval.tasks),
        t_start=t_start,
    )
    Trainer, report_callbacks = trainer_class(resources.workers, stalls)
    storage_path = store.ray(layout.TRAIN)  # a path, or the bucket's URI: Ray Train uploads the checkpoints there
    trainer = Trainer(
        worker_loop,
        train_loop_config={
            "config": dataclasses.asdict(cfg),
            "params": counted.total,
            "flops_per_token": counted.flops_per_token,
            "trial_dir": str(trial_dir),
            "t_start": t_start,
            "storage_dir": f"{storage_path}/{trial_id}",
            "exp": ctx.exp_dir,
            "trial_id": trial_id,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,  # fixed per trial: a retry or Tuner.restore continues this run's checkpoints
            storage_path=str(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=ctx.sweep.spec.max_failures),
            # the persisted checkpoints are the only copies (worker_loop moves them there): keep the newest few
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=report_callbacks,
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        trainer.fit()  # raises TrainingFailedError once max_failures retries are spent: Tune marks the trial ERROR
    except ray.train.TrainingFailedError:
        if stalls.retry:  # a crash (or another error)
            raise
        raise TrialStalledError(
            f"Trial {trial_id} stalled: {stalls.describe()}. A trial's stalls are retried from its last "
            f"checkpoint up to max_failures ({stalls.budget}) times, counted apart from its crashes, and this one "
            "was past that. If its workers were only slow (a long evaluation, a slow filesystem), raise "
            "resources.stall_timeout; otherwise the workers' logs in the sweep's Ray session show where they hung."
        ) from None
    fatal = read_fatal(trial_dir, store)
    if fatal:  # the workers stopped on an error no retry can fix (worker_loop): the trial fails with it
        error = DiskFullError if fatal["type"] == DiskFullError.__name__ else StlmError  # the sweep stops on the former
        raise error(fatal["message"])


def report_finished(ctx: Context, trial_id: str) -> bool:
    """If MLflow already holds this trial as FINISHED (the ledger says so), report its last metrics
    again instead of running anything: the MLflow callback logs no point twice."""
    from ray import tune  # lazy: see the module docstring

    store = storage.open(ctx.exp_dir)
    if store.remote:  # the driver's ledger, as last uploaded (the driver may run on another machine)
        entry = ((storage.read_json(store, layout.LEDGER) or {}).get("trials") or {}).get(trial_id) or {}
    else:
        entry = Ledger(Path(ctx.exp_dir)).trials.get(trial_id) or {}
    if entry.get("status") != "finished":
        return False
    try:
        run = mlflow_client(os.environ.get("MLFLOW_TRACKING_URI")).get_run(entry["run_id"])
    except Exception:  # MLflow unreachable or the run gone: run the trial (from its checkpoints) instead
        return False
    metrics = dict(run.data.metrics)
    if "step" not in metrics:
        return False
    tune.report({**metrics, "step": int(metrics["step"])})
    return True
