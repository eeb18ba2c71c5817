"""The Tuner of a sweep: Optuna search pinned to every cell, optional ASHA, the progress table."""

from __future__ import annotations

import sys

from stlm.errors import StlmError
from stlm.sweep.plan.space import ARM, SEED
from stlm.sweep.plan.sweep import Sweep
from stlm.sweep.resilience import layout, storage, tune_state
from stlm.sweep.run.ray_cluster import HEAD_RESOURCE
from stlm.sweep.run.trial import Context, run_trial


def _finishing_asha():
    # lazy: Ray, which --dry-run never starts
    from ray.tune.schedulers import ASHAScheduler

    class FinishingASHA(ASHAScheduler):
        """ASHA that never stops a trial at its last step (result step >= max_steps).

        Stopping there saves nothing, and would kill the trial before its end-of-training eval
        report, ungracefully (see init_ray). Early stops at the rungs before are unchanged.
        """

        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            if action == self.STOP and result.get("step", 0) >= result.get("max_steps", float("inf")):
                self._num_stopped -= 1
                return self.CONTINUE
            return action

    return FinishingASHA


def build_tuner(ctx: Context, *, resume: bool, callbacks: list, concurrency: int, reporter):
    # lazy: Ray, which --dry-run never starts
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    tune_state.install()  # Tune's experiment state written whole or not at all (tune_state.py)

    FinishingASHA = _finishing_asha()

    sweep, space = ctx.sweep, ctx.space
    spec = sweep.spec
    # On the head: a trial's process runs its Ray Train controller, which restarts the workers from the
    # last checkpoint when their node is lost (a spot preemption); on a preemptible node it would die with them.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, ctx=ctx), {"cpu": 0, "memory": 1, HEAD_RESOURCE: 0.001}
    )

    tune_dir = storage.open(ctx.exp_dir).ray(layout.TUNE)  # a path, or the bucket's URI (Tune uploads its state)
    run_config = tune.RunConfig(
        name=layout.TUNE,
        storage_path=ctx.exp_dir,
        callbacks=callbacks,
        progress_reporter=reporter,
        verbose=1,
        failure_config=tune.FailureConfig(max_failures=0),  # retries happen inside Ray Train (spec.max_failures)
    )
    if resume:
        # finished trials stay finished; unfinished and errored ones run again from their Ray Train
        # checkpoints (same Train run name and storage path); the Optuna study comes back with the
        # searcher state, so the cells not yet started are still pinned
        try:
            return tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
        except Exception as e:  # state missing or unreadable: say what to do instead of Tune's traceback
            raise StlmError(
                f"--resume: Tune could not restore {tune_dir} ({type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[0][:300]}). The sweep was probably stopped before "
                "Tune saved its first state; start it again with --overwrite."
            ) from None

    metric = spec.metrics if spec.multi_objective else spec.metrics[0]
    mode = spec.modes if spec.multi_objective else spec.modes[0]
    points = space.points()
    searcher = OptunaSearch(space=space, metric=metric, mode=mode, points_to_evaluate=points, sampler=space.sampler())
    scheduler = None
    if spec.scheduler.type == "asha":
        max_t = max(a.cfg.train.max_steps for a in sweep.arms)
        scheduler = FinishingASHA(
            time_attr="step",
            metric=spec.metrics[0],
            mode=spec.modes[0],
            max_t=max_t + 1,
            grace_period=min(spec.scheduler.grace_period, max_t),
            reduction_factor=spec.scheduler.reduction_factor,
        )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=len(points),
        max_concurrent_trials=concurrency,
        trial_name_creator=lambda t: f"{t.config.get(ARM)}-s{t.config.get(SEED)}-{t.trial_id}",
        trial_dirname_creator=lambda t: t.trial_id,
        # A finished trial's actor (Ray Train and torch already imported) runs the next trial: 4.4 s ->
        # 0.05 s between trials on 2 cores, and the controller up 0.3-1.3 s sooner (benchmarks/RESULTS.md).
        # Only without early stopping: an ASHA-stopped trial is still inside TorchTrainer.fit() when Tune's 2 s reset
        # timeout ends, and Tune then fails the trial that was to reuse the actor.
        reuse_actors=scheduler is None,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def make_reporter(sweep: Sweep):
    # lazy: Ray, which --dry-run never starts
    from ray.tune import CLIReporter

    knobs = list(sweep.spec.search.params)
    if sweep.spec.search.architecture:
        knobs += ["model.n_layers", "model.n_heads", "model.n_kv_heads", "model.ffn_multiple"]
    metrics = {"step": "step", sweep.spec.metrics[0]: sweep.spec.metrics[0]}
    if "val_bpb" not in metrics:
        metrics["val_bpb"] = "val_bpb"
    quick = sys.stdout.isatty()
    return CLIReporter(
        metric_columns=metrics,
        parameter_columns={ARM: ARM, SEED: SEED, **{k: k.split(".")[-1] for k in knobs}},
        max_report_frequency=15 if quick else 30,
        sort_by_metric=False,
        print_intermediate_tables=True,
    )
