"""The Ray Train run of one Tune trial, with the controller in the trial's own process.

Ray Train's stock path (`TorchTrainer(...).fit()` with `TuneReportCallback`) starts, for every
trial, three Python processes besides the Train workers that do no training:

    TrainController actor     runs the control loop (poll workers, checkpoints, retries)
    _QueueActor               carries each report from that controller back to the Tune trial
    DatasetManager actor      created even when the trainer has no Ray Datasets

Each imports Ray Train on start (4.6-5.9 s from trial start to controller on 2 cores) and then
wakes about 160 times a second doing nothing, which slows every training step on a small machine
(benchmarks/RESULTS.md). Here the same TrainController object runs its loop in the Tune trial's
thread, its reports go straight to `ray.tune.report`, and the dataset callback is left out when
there are no datasets. The workers, the synchronization actor, checkpoint persistence, retries
(FailureConfig) and the placement-group cleaner are Ray Train's own, unchanged. A one-worker run
also skips torch.distributed (a process group of one: a TCP store and gloo's polling thread).

This uses Ray Train V2 internals of Ray 2.60 (TrainController, DatasetsCallback and two trainer
hooks); `trainer_class()` falls back to the stock TorchTrainer where they are missing, and
STLM_TRAIN_CONTROLLER=actor in the driver's environment asks for the stock path outright.
"""

from __future__ import annotations

import asyncio
import logging
import os

import ray.tune
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback

log = logging.getLogger(__name__)
CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key TuneReportCallback uses, kept for MLflow and results


class ReportToTune(UserCallback):
    """What TuneReportCallback does, without its queue actor: the controller runs in the Tune
    trial's thread, so a report is a plain `ray.tune.report` (rank 0's metrics, the checkpoint's
    path; the checkpoint itself is already persisted by Ray Train)."""

    def after_report(self, run_context, metrics, checkpoint):
        result = dict(metrics[0])
        if checkpoint is not None:
            result[CHECKPOINT_PATH_KEY] = checkpoint.path
        ray.tune.report(result)


def _in_trial(base: type) -> type:
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.execution.controller import TrainController

    for hook in ("_initialize_and_run_controller", "_create_default_callbacks"):
        if not hasattr(base, hook):  # renamed in this Ray: overriding nothing would lose every report
            raise ImportError(f"{base.__name__}.{hook}")

    class InTrialTrainer(base):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

        def _initialize_and_run_controller(self, **controller_kwargs):
            # Stock: the same object as an actor pinned to this node, then ray.get(run) and
            # ray.get(get_result). The trial's thread is not the main thread: no SIGINT handler here
            # either. The placement-group cleaner watches this process in place of the controller
            # actor, so an early-stopped (killed) trial still frees its workers' resources.
            controller = TrainController(**controller_kwargs)
            asyncio.run(controller.run())
            return controller.get_result()

    InTrialTrainer.__name__ = InTrialTrainer.__qualname__ = f"InTrial{base.__name__}"
    return InTrialTrainer


def stock() -> tuple[type, list]:
    from ray.tune.integration.ray_train import TuneReportCallback

    return TorchTrainer, [TuneReportCallback()]


def trainer_class(num_workers: int) -> tuple[type, list]:
    """(trainer class, run callbacks) for a trial's Train run: the in-trial controller where this
    Ray has the internals it needs, else (or with STLM_TRAIN_CONTROLLER=actor) the stock
    TorchTrainer and TuneReportCallback."""
    if os.environ.get("STLM_TRAIN_CONTROLLER", "in-trial") == "actor":
        return stock()
    try:
        if num_workers == 1:  # no process group for one worker: stlm's loop trains it as one process
            from ray.train.backend import BackendConfig
            from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

            class OneWorkerTrainer(DataParallelTrainer):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, backend_config=BackendConfig(), **kwargs)

            return _in_trial(OneWorkerTrainer), [ReportToTune()]
        return _in_trial(TorchTrainer), [ReportToTune()]
    except ImportError as e:  # another Ray version: the stock path, slower on small machines
        log.warning("Ray Train internals not found (%s): trials use the stock controller actor.", e)
        return stock()
