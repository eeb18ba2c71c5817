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
there are no datasets. The workers, the synchronization actor, checkpoint persistence and retries
(FailureConfig) are Ray Train's own, unchanged. A one-worker run also skips torch.distributed (a
process group of one: a TCP store and gloo's polling thread).

Ray Train also starts, per run, a detached PlacementGroupCleaner actor that asks the dashboard's
state API every second whether the controller still lives, and frees the workers' placement group
once it does not (an ASHA-stopped trial is killed, and a placement group made by an actor outlives
it until the job ends). With the driver's FreeDeadTrialsPlacementGroups callback doing that from
the GCS table instead, a run leaves that actor out too, and a local sweep needs no dashboard
(benchmarks/RESULTS.md). STLM_PG_CLEANUP=ray in the driver's environment keeps Ray's cleaner.

With the controller in the trial's process, the trial also watches its workers for a stall
(resilience/stall.py): StallWatch ends an attempt whose workers report nothing for longer than the
trial's stall limit, and StallPolicy retries it from the last checkpoint on a budget of its own, so
Ray Train's crash budget (FailureConfig.max_failures) is left as it was. The stock path has neither
(Ray Train's own health check gives a stopped worker 600 s and spends a crash retry on it).

This uses Ray Train V2 internals of Ray 2.60 (TrainController, DatasetsCallback, WorkerGroupCallback,
FailurePolicy and two trainer hooks); `trainer_class()` falls back to the stock TorchTrainer where they
are missing, and STLM_TRAIN_CONTROLLER=actor in the driver's environment asks for the stock path outright.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time

import ray.tune
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback

from stlm.sweep.resilience.low_memory import low_memory
from stlm.sweep.resilience.stall import StallClock, TrialStalledError

log = logging.getLogger(__name__)
CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key TuneReportCallback uses, kept for MLflow and results
PG_CLEANUP_ENV = "STLM_PG_CLEANUP"  # "driver" (default): the sweep driver frees dead trials' placement
# groups; "ray": Ray Train's cleaner actor per run, which needs the dashboard (for an A/B of the two)


class ReportToTune(UserCallback):
    """What TuneReportCallback does, without its queue actor: the controller runs in the Tune
    trial's thread, so a report is a plain `ray.tune.report` (rank 0's metrics, the checkpoint's
    path; the checkpoint itself is already persisted by Ray Train). With a stall clock, each report
    is noted on it first, and carries what it adds (the attempt's own start-up, the stalls so far)."""

    def __init__(self, clock: StallClock | None = None):
        self.clock = clock

    def after_report(self, run_context, metrics, checkpoint):
        result = dict(metrics[0]) if self.clock is None else self.clock.reported(metrics[0])
        if checkpoint is not None:
            result[CHECKPOINT_PATH_KEY] = checkpoint.path
        ray.tune.report(result)


def _in_trial(base: type) -> type:
    # inside: Ray Train's internals, which another Ray version may not have (the caller falls back)
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.controller import TrainController

    for hook in ("_initialize_and_run_controller", "_create_default_callbacks"):
        if not hasattr(base, hook):  # renamed in this Ray: overriding nothing would lose every report
            raise ImportError(f"{base.__name__}.{hook}")

    class InTrialTrainer(base):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if not self.datasets:
                callbacks = [c for c in callbacks if not isinstance(c, DatasetsCallback)]
            if os.environ.get(PG_CLEANUP_ENV) == "driver":
                callbacks = [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]
            return callbacks

        def _initialize_and_run_controller(self, **controller_kwargs):
            watch = next((c for c in controller_kwargs["callbacks"] if isinstance(c, stall_watch_class())), None)
            if watch is not None:
                controller_kwargs["failure_policy"] = stall_policy_class()(
                    controller_kwargs["failure_policy"], watch.clock
                )
            # Stock: the same object as an actor pinned to this node, then ray.get(run) and
            # ray.get(get_result). The trial's thread is not the main thread: no SIGINT handler here
            # either. When this trial is killed (ASHA), its workers' placement group is freed by the
            # driver's FreeDeadTrialsPlacementGroups, or else by Ray's cleaner watching this process.
            controller = TrainController(**controller_kwargs)
            asyncio.run(controller.run())
            return controller.get_result()

    InTrialTrainer.__name__ = InTrialTrainer.__qualname__ = f"InTrial{base.__name__}"
    return InTrialTrainer


@functools.cache
def stall_policy_class() -> type:
    # inside: Ray Train internals, which another Ray version may not have (the caller falls back)
    from ray.train.v2._internal.execution.failure_handling import FailureDecision, FailurePolicy

    class StallPolicy(FailurePolicy):
        """Ray Train's failure policy (`inner`), except for a stall (StallWatch) and a kill by Ray's memory monitor
        (resilience/low_memory.py): each is retried on a budget of its own (the clock's for stalls, as many
        low-memory kills as crashes), and the inner policy's crash count is left as it was."""

        def __init__(self, inner: FailurePolicy, clock: StallClock):
            super().__init__(inner.failure_config)
            self.inner, self.clock = inner, clock
            self.low_memory_kills = 0

        def make_decision(self, training_failed_error):
            failures = getattr(training_failed_error, "worker_failures", None) or {}
            if failures and all(isinstance(e, TrialStalledError) for e in failures.values()):
                return FailureDecision.RETRY if self.clock.retry else FailureDecision.RAISE
            if failures and any(low_memory(str(e)) for e in failures.values()):
                self.low_memory_kills += 1
                log.warning(
                    "trial workers %s (%d so far)", low_memory(str(training_failed_error)), self.low_memory_kills
                )
                within = self.low_memory_kills <= self.clock.budget
                return FailureDecision.RETRY if within else FailureDecision.RAISE
            return self.inner.make_decision(training_failed_error)

    return StallPolicy


@functools.cache
def stall_watch_class() -> type:
    # inside: a Ray Train internal, which another Ray version may not have (the caller falls back)
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    class StallWatch(WorkerGroupCallback):
        """Ends a Train attempt whose workers report nothing for longer than the trial's stall limit.

        Runs in the controller's loop. At the first poll of the workers past the limit, the workers are
        killed (a stopped process answers nothing else; Ray Train would wait 600 s for it) and the
        poll says TrialStalledError for every rank: the controller then stops the worker group and asks
        the failure policy (stall_policy_class) whether to retry from the last checkpoint.
        """

        def __init__(self, clock: StallClock):
            self.clock = clock
            self._group = None

        def before_worker_group_start(self, worker_group_context):
            self.clock.attempt_starting()

        def after_worker_group_training_start(self, worker_group):
            self._group = worker_group
            self.clock.training_started()

        def after_worker_group_poll_status(self, worker_group_status):
            if worker_group_status.errors or worker_group_status.finished:
                return
            why = self.clock.check()
            if why is None:
                return
            log.warning("trial stalled: %s; %s", why, "retrying it" if self.clock.retry else "no stall retry left")
            error = TrialStalledError(why)
            for status in worker_group_status.worker_statuses.values():
                status.error = error
            for worker in self._group.get_workers() if self._group is not None else []:
                ray.kill(worker.actor)

    return StallWatch


def stock() -> tuple[type, list]:
    # lazy: Tune's Train integration, only for Ray's stock controller
    from ray.tune.integration.ray_train import TuneReportCallback

    return TorchTrainer, [TuneReportCallback()]


def trainer_class(num_workers: int, clock: StallClock | None = None) -> tuple[type, list]:
    """(trainer class, run callbacks) for a trial's Train run: the in-trial controller where this
    Ray has the internals it needs (and with a clock, the stall watch), else (or with
    STLM_TRAIN_CONTROLLER=actor) the stock TorchTrainer and TuneReportCallback."""
    if os.environ.get("STLM_TRAIN_CONTROLLER", "in-trial") == "actor":
        return stock()
    try:
        callbacks = [ReportToTune(clock)] + ([stall_watch_class()(clock)] if clock is not None else [])
        if num_workers == 1:  # no process group for one worker: stlm's loop trains it as one process
            # inside the try: Ray Train's internals, which another Ray version may not have
            from ray.train.backend import BackendConfig
            from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

            class OneWorkerTrainer(DataParallelTrainer):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, backend_config=BackendConfig(), **kwargs)

            return _in_trial(OneWorkerTrainer), callbacks
        return _in_trial(TorchTrainer), callbacks
    except ImportError as e:  # another Ray version: the stock path, slower on small machines
        log.warning("Ray Train internals not found (%s): trials use the stock controller actor.", e)
        return stock()


def uses_in_trial_controller() -> bool:
    """Whether trials here take the in-trial path (the driver asks, on the same Ray install)."""
    return trainer_class(1)[0] is not TorchTrainer


# --------------------------------------------------------------------------- in the driver


def orphaned_placement_groups(job_id: str) -> list:
    """Placement groups of this job whose creating actor is dead and that still hold resources.

    In a sweep those are the Train workers' groups of killed trials: the trial's process (or the
    stock controller actor) made them, and Ray keeps an actor's group until the job ends. Groups the
    driver made (Tune's own, with no creating actor) and detached ones are never touched.
    """
    # inside: Ray's internal state API, which another Ray version may not have (the caller checks)
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    table = gcs_pb2.PlacementGroupTableData
    out = []
    for blob in state._connect_and_get_accessor().get_placement_group_table():
        pg = table.FromString(blob)
        if (
            pg.creator_job_id.hex() == job_id
            and pg.creator_actor_dead
            and not pg.is_detached
            and not ray.ActorID(pg.creator_actor_id).is_nil()
            and pg.state != table.REMOVED
        ):
            out.append(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
    return out


def driver_can_free_placement_groups() -> bool:
    """Trials take the in-trial path and this Ray has the GCS placement-group table the driver reads
    (checked before Ray starts: it decides whether a local sweep needs the dashboard), and
    STLM_PG_CLEANUP=ray does not ask for Ray Train's own cleaner actors."""
    if os.environ.get(PG_CLEANUP_ENV, "driver") == "ray" or not uses_in_trial_controller():
        return False
    try:
        # inside the try: Ray's internal state API, which another Ray version may not have
        from ray._private.state import GlobalState
        from ray.core.generated import gcs_pb2

        fields = set(gcs_pb2.PlacementGroupTableData.DESCRIPTOR.fields_by_name)
        need = {"creator_job_id", "creator_actor_id", "creator_actor_dead", "is_detached", "state"}
        return hasattr(GlobalState, "_connect_and_get_accessor") and need <= fields
    except ImportError:  # another Ray: keep Ray Train's own cleaner actors (and the dashboard they need)
        return False


class FreeDeadTrialsPlacementGroups(ray.tune.Callback):
    """Frees the workers' placement group of a trial that was killed (an ASHA stop, a crash).

    Does for the whole sweep, from the driver's Tune loop, what Ray Train's PlacementGroupCleaner
    does per run from an actor of its own: one GCS read a second instead of one more process per
    trial polling the dashboard. Without it the next trials would wait for ever for those CPUs.
    """

    def __init__(self, every_s: float = 1.0):
        self.every_s = every_s
        self._due = 0.0

    def setup(self, **info):  # also on --resume, where this object comes back from Tune's pickle
        self._due = 0.0

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.every_s
        # lazy: Ray's placement-group API, only once a dead trial's group is found
        from ray.util.placement_group import remove_placement_group

        job = ray.get_runtime_context().get_job_id()  # not kept: a resumed sweep is a new job
        try:
            orphans = orphaned_placement_groups(job)
        except Exception as e:  # the GCS is going away at the end, or hiccups: the next step asks again
            log.debug("placement-group table not read: %s", e)
            return
        for pg in orphans:
            try:
                remove_placement_group(pg)
            except Exception as e:  # removed meanwhile, or the GCS is going away at the end
                log.debug("placement group %s not removed: %s", pg.id.hex(), e)
