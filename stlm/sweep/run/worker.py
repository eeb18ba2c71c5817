"""Inside a Ray Train worker: train (resuming from the registered checkpoint), report to Tune, evaluate.

Ray is imported inside the functions: the driver imports this module (run/trial.py) before it starts Ray,
and a dry run never does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from stlm.atomic import write_atomic
from stlm.config import Config, build_config
from stlm.errors import StlmError
from stlm.eval import evaluate, flat_metrics
from stlm.sweep.resilience import layout, storage
from stlm.sweep.resilience.checkpoints import (
    discard_unregistered,
    persist_directory,
    persisted_name,
    read_history,
    resume_point,
)
from stlm.sweep.resilience.fatal import write_fatal
from stlm.sweep.run.cluster_data import localize
from stlm.train.checkpoint import latest_checkpoint, load_model, read_meta
from stlm.train.loop import NonFiniteLossError, train


def worker_loop(loop_config: dict) -> None:
    """Ray Train's train_loop_per_worker: one attempt at a trial on one rank."""
    _quiet_train_logs()
    TrialWorker(loop_config).run()


class TrialWorker:
    """One rank's attempt at a trial: locate its storage, restore the resume point Ray Train registered,
    replay the reports up to it, train and report, evaluate, and record an error no retry can fix."""

    def __init__(self, loop_config: dict):
        import ray.train  # lazy: see the module docstring

        cfg = build_config(loop_config["config"])
        self.store = storage.open(loop_config.get("exp") or Path(loop_config["trial_dir"]).parents[1])
        self.trial_id = loop_config.get("trial_id") or Path(loop_config["trial_dir"]).name
        self.trial_dir = self.store.local / layout.trial(self.trial_id)  # an object store's: this node's copy
        if self.store.remote:  # train() stages its checkpoints on this node; Ray Train uploads them
            out_dir = str(self.trial_dir / "checkpoints")
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=out_dir))
        localize(cfg, self.store.ray(layout.DATA))  # on a cluster: this node's copy of the corpus
        self.cfg = cfg
        # logged with every report; startup_s: from the Tune trial starting to this worker running (Tune
        # actor, Train controller, placement group, worker actor, torch.distributed)
        self.extra = {
            "params": loop_config["params"],
            "flops_per_token": loop_config["flops_per_token"],
            "startup_s": time.time() - loop_config["t_start"],
            "max_steps": cfg.train.max_steps,
        }
        self.train_context = ray.train.get_context()
        self.rank, self.world_size = self.train_context.get_world_rank(), self.train_context.get_world_size()
        # this trial's Ray Train run, <exp>/train/<trial id>; in an object store, a local directory that
        # receives the registered checkpoints this worker resumes from (its own: ranks share no files)
        self.run_dir = (
            Path(loop_config["storage_dir"])
            if not self.store.remote
            else self.store.local / layout.RESTORE / f"{self.trial_id}-{os.getpid()}"
        )
        self.run_rel = layout.train_run(self.trial_id)  # the run, relative to the experiment directory
        self.last_checkpoint: str | None = None  # the newest persisted checkpoint (the one evaluated)
        self.history: list[dict] = []  # every training report of this run, carried inside each checkpoint

    def run(self) -> None:
        try:
            start = self.restore()
            final = self.train_from(start)
            if self.cfg.eval.tasks:
                self.evaluate(final)
        except StlmError as e:
            self.record_fatal(e)
        finally:
            self.clean_up()

    def restore(self) -> Path | None:
        """The checkpoint to continue from, None for a fresh start. Where to continue is decided by what Ray
        Train registered: its newest checkpoint, or the newest intact one before it. Anything else (a local
        checkpoint a killed attempt left behind, or one persisted after the last registered one) is
        discarded, never resumed from or pruned into."""
        import ray.train  # lazy: see the module docstring

        restored = ray.train.get_checkpoint()
        latest = restored.path if restored is not None else None
        fetch = None
        if self.store.remote:  # the registered checkpoints, downloaded into run_dir as they are tried
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir.mkdir(parents=True)
            self.store.download(f"{self.run_rel}/{layout.SNAPSHOT}", self.run_dir / layout.SNAPSHOT)
            latest = str(self.run_dir / Path(latest).name) if latest else None
            fetch = self._fetch
        start = resume_point(self.run_dir, latest, say=_say, fetch=fetch)
        if self.rank == 0:
            cfg = self.cfg
            discard_unregistered(
                self.run_dir,
                latest,
                staging=Path(cfg.train.out_dir) / cfg.train.run_name,
                say=_say,
                remote=(self.store, self.run_rel) if self.store.remote else None,
            )
        return start

    def _fetch(self, path: Path) -> Path:
        """A registered checkpoint of an object store's run, downloaded into run_dir when first tried."""
        return path if path.exists() else self.store.download(f"{self.run_rel}/{path.name}", path) or path

    def train_from(self, start: Path | None) -> dict:
        """Train from scratch or from `start`, reporting as it goes; the final metrics."""
        if start is None:
            self.extra["resumed_from_step"] = 0
            return train(self.cfg, report=self.report)
        checkpoint_dir = str(start)
        self.extra["resumed_from_step"] = int(read_meta(checkpoint_dir).get("step", 0))
        self.replay(checkpoint_dir)
        return train(self.cfg, report=self.report, resume_from=checkpoint_dir)

    def replay(self, checkpoint_dir: str) -> None:
        """Report again the reports up to this checkpoint. Results reach MLflow through the Tune driver,
        which lags the workers: a driver killed after Ray Train persisted this checkpoint may not have
        logged the last few reports. The MLflow callback skips the steps it has."""
        earlier = read_history(checkpoint_dir)
        if earlier and earlier[-1].get("step", -1) >= self.cfg.train.max_steps:
            earlier = earlier[:-1]  # a finished run: train() reports its last point again itself
        for metrics in earlier:
            self.report(metrics, None)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """train()'s report callback: one report to Tune, with the checkpoint train() just wrote (rank 0)."""
        import ray.train  # lazy: see the module docstring

        self.history.append(dict(metrics))
        checkpoint = None
        if checkpoint_dir and Path(checkpoint_dir).parent == self.run_dir:  # already persisted (a finished run)
            self.last_checkpoint = checkpoint_dir
        elif checkpoint_dir:  # rank 0: the history travels with the checkpoint Ray Train persists
            write_atomic(Path(checkpoint_dir) / layout.HISTORY, "".join(json.dumps(m) + "\n" for m in self.history))
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        t0 = time.time()
        if checkpoint is not None and self.store.remote:  # Ray Train's own upload; the local copy stays for the eval
            self.last_checkpoint = checkpoint_dir  # (train() prunes the older local ones itself)
        ray.train.report(
            {**metrics, **self.extra},
            checkpoint=checkpoint,
            checkpoint_dir_name=persisted_name(metrics["step"]) if checkpoint else None,
            **({} if self.store.remote else {"checkpoint_upload_fn": self._persist}),
        )
        self.extra["report_s"] = time.time() - t0  # what the previous report cost the loop (logged with the next)

    def _persist(self, checkpoint, dir_name: str):
        """Ray Train's upload, as a rename: the directory train() wrote becomes the persisted
        checkpoint (one copy on disk, never half there: it appears whole or not at all)."""
        import ray.train  # lazy: see the module docstring

        train_storage = self.train_context.get_storage()
        dest = Path(train_storage.build_checkpoint_path_from_name(dir_name))
        persist_directory(Path(checkpoint.path), dest)
        self.last_checkpoint = str(dest)
        return ray.train.Checkpoint(path=str(dest), filesystem=train_storage.storage_filesystem)

    def evaluate(self, final: dict) -> None:
        """Rank 0 evaluates the last checkpoint; every rank reports (a barrier)."""
        import ray.train  # lazy: see the module docstring

        evals = {}
        if self.rank == 0:
            evals = run_eval(self.cfg, self.last_checkpoint, self.trial_dir)
            self.store.upload(layout.trial(self.trial_id, layout.EVAL))  # an object store: the items the driver logs
        ray.train.report({**final, **self.extra, **evals})

    def record_fatal(self, error: StlmError) -> None:
        """A user-fixable error (a diverging loss, a bad setting, damaged data) fails the same way on every
        retry: record it for run_trial, which fails the trial with it, and spend no Ray Train retry on it.
        (With several workers only a diverging loss is known to stop every rank at once.)"""
        if self.rank == 0:
            write_fatal(self.trial_dir, error)  # on a full disk this raises: Ray Train's error then says it
            self.store.upload(layout.trial(self.trial_id, layout.FATAL))
        if self.world_size > 1 and not isinstance(error, NonFiniteLossError):
            raise error

    def clean_up(self) -> None:
        """An object store's run: the downloaded checkpoints and rank 0's staged ones go (the bucket keeps them)."""
        if self.store.remote:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if self.rank == 0:
                shutil.rmtree(Path(self.cfg.train.out_dir), ignore_errors=True)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # the worker's log (and the terminal with --verbose)


def _quiet_train_logs() -> None:
    """Ray Train logs every report at INFO under a logger named by its file path, which
    LoggingConfig(log_level=...) does not reach; keep the worker logs to warnings."""
    try:
        from ray.train.v2._internal.execution import context as train_context  # lazy: Ray

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except Exception:  # a Ray version without that module: only noisier
        pass


def run_eval(cfg: Config, checkpoint_dir: str | None, trial_dir: Path) -> dict[str, float]:
    path = checkpoint_dir or latest_checkpoint(Path(cfg.train.out_dir) / cfg.train.run_name)
    if path is None:
        raise StlmError(f"No final checkpoint to evaluate under {cfg.train.out_dir}.")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, tokenizer = load_model(path, device=device)
    items = None
    if cfg.eval.write_items:
        (trial_dir / layout.EVAL).mkdir(parents=True, exist_ok=True)
        items = trial_dir / layout.EVAL / layout.EVAL_ITEMS
    t0 = time.time()
    results = evaluate(
        model,
        tokenizer,
        cfg.eval.tasks,
        limit=cfg.eval.limit,
        seed=cfg.eval.seed,
        data_dir=cfg.eval.data_dir,
        batch_size=cfg.eval.batch_size,
        device=device,
        items_path=items,
        config=cfg,
    )
    out = flat_metrics(results)
    out["eval_s"] = time.time() - t0
    return out
