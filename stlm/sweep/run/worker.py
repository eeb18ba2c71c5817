"""Inside a Ray Train worker: train (resuming from the registered checkpoint), report to Tune, evaluate.
"""

from __future__ import annotations

from stlm.sweep.resilience import layout

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from stlm.config import Config
from stlm.errors import StlmError
from stlm.sweep.resilience.checkpoints import (
    discard_unregistered,
    persist_directory,
    persisted_name,
    read_history,
    resume_point,
)
from stlm.sweep.resilience.fatal import write_fatal


def worker_loop(lc: dict) -> None:
    import ray.train

    _quiet_train_logs()

    from stlm.config import build_config
    from stlm.train.loop import NonFiniteLossError, train

    # start-up: from the Tune trial starting to this worker running (Tune actor, Train controller,
    # placement group, worker actor, torch.distributed); logged with every report
    cfg = build_config(lc["config"])
    from stlm.sweep.resilience import storage as storage_mod
    from stlm.sweep.run.cluster_data import localize

    st = storage_mod.open(lc.get("exp") or Path(lc["trial_dir"]).parents[1])
    tid = lc.get("trial_id") or Path(lc["trial_dir"]).name
    trial_dir = st.local / layout.trial(tid)  # an object store's: this node's copy, uploaded
    if st.remote:  # train() stages its checkpoints on this node; Ray Train uploads them
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(trial_dir / "checkpoints")))
    localize(cfg, st.ray(layout.DATA))  # on a cluster: this node's copy of the corpus
    extra = {"params": lc["params"], "flops_per_token": lc["flops_per_token"],
             "startup_s": time.time() - lc["t_start"], "max_steps": cfg.train.max_steps}
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    # this trial's Ray Train run, <exp>/train/<trial id>; in an object store, a local directory that
    # receives the registered checkpoints this worker resumes from (its own: ranks share no files)
    storage = Path(lc["storage_dir"]) if not st.remote else st.local / layout.RESTORE / f"{tid}-{os.getpid()}"
    run_rel = layout.train_run(tid)
    last = {"ckpt": None}
    history: list[dict] = []  # every training report of this run, carried inside each checkpoint

    def move_into_storage(checkpoint, dir_name: str):
        """Ray Train's upload, as a rename: the directory train() wrote becomes the persisted
        checkpoint (one copy on disk, never half there: it appears whole or not at all)."""
        dest = Path(ctx.get_storage().build_checkpoint_path_from_name(dir_name))
        persist_directory(Path(checkpoint.path), dest)
        last["ckpt"] = str(dest)
        return ray.train.Checkpoint(path=str(dest), filesystem=ctx.get_storage().storage_filesystem)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        history.append(dict(metrics))
        ckpt = None
        if checkpoint_dir and Path(checkpoint_dir).parent == storage:  # already persisted (a finished run restored)
            last["ckpt"] = checkpoint_dir
        elif checkpoint_dir:  # rank 0: the history travels with the checkpoint Ray Train persists
            from stlm.atomic import write_atomic

            write_atomic(Path(checkpoint_dir) / layout.HISTORY, "".join(json.dumps(m) + "\n" for m in history))
            ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir)
        t0 = time.time()
        if ckpt is not None and st.remote:  # Ray Train's own upload; the local copy stays for the eval
            last["ckpt"] = checkpoint_dir  # (train() prunes the older local ones itself)
        ray.train.report({**metrics, **extra}, checkpoint=ckpt, checkpoint_dir_name=persisted_name(metrics["step"]) if ckpt else None,
                         **({} if st.remote else {"checkpoint_upload_fn": move_into_storage}))
        extra["report_s"] = time.time() - t0  # what the previous report cost the loop (logged with the next)

    try:
        # Where to continue is decided by what Ray Train registered: its newest checkpoint, or the newest
        # intact one before it. Anything else (a local checkpoint a killed attempt left behind, or one
        # persisted after the last registered one) is discarded, never resumed from or pruned into.
        restored = ray.train.get_checkpoint()
        latest = restored.path if restored is not None else None
        fetch = None
        if st.remote:  # the registered checkpoints, downloaded into `storage` as they are tried
            import shutil

            shutil.rmtree(storage, ignore_errors=True)
            storage.mkdir(parents=True)
            st.download(f"{run_rel}/{layout.SNAPSHOT}", storage / layout.SNAPSHOT)
            latest = str(storage / Path(latest).name) if latest else None
            fetch = lambda p: p if p.exists() else st.download(f"{run_rel}/{p.name}", p) or p  # noqa: E731
        start = resume_point(storage, latest, say=_say, fetch=fetch)
        if rank == 0:
            discard_unregistered(storage, latest, staging=Path(cfg.train.out_dir) / cfg.train.run_name, say=_say,
                                 remote=(st, run_rel) if st.remote else None)
        if start is None:
            extra["resumed_from_step"] = 0
            final = train(cfg, report=report)
        else:
            from stlm.train.checkpoint import read_meta

            d = str(start)
            extra["resumed_from_step"] = int(read_meta(d).get("step", 0))
            # Replay the reports up to this checkpoint. Results reach MLflow through the Tune driver,
            # which lags the workers: a driver killed after Ray Train persisted this checkpoint may
            # not have logged the last few reports. The MLflow callback skips the steps it has.
            earlier = read_history(d)
            if earlier and earlier[-1].get("step", -1) >= cfg.train.max_steps:
                earlier = earlier[:-1]  # a finished run: train() reports its last point again itself
            for m in earlier:
                report(m, None)
            final = train(cfg, report=report, resume_from=d)

        if cfg.eval.tasks:
            evals = {}
            if rank == 0:
                evals = run_eval(cfg, last["ckpt"], trial_dir)
                st.upload(layout.trial(tid, layout.EVAL))  # an object store: the items the driver logs to MLflow
            ray.train.report({**final, **extra, **evals})  # a barrier: every rank reports
    except StlmError as e:
        # A user-fixable error (a diverging loss, a bad setting, damaged data) fails the same way on every
        # retry: record it for run_trial, which fails the trial with it, and spend no Ray Train retry on it.
        # (With several workers only a diverging loss is known to stop every rank at once.)
        if rank == 0:
            write_fatal(trial_dir, e)  # on a full disk this raises: Ray Train's error then says it
            st.upload(layout.trial(tid, layout.FATAL))
        if world_size > 1 and not isinstance(e, NonFiniteLossError):
            raise
    finally:
        if st.remote:  # the downloaded checkpoints and rank 0's staged ones: the bucket keeps them
            import shutil

            shutil.rmtree(storage, ignore_errors=True)
            if rank == 0:
                shutil.rmtree(Path(cfg.train.out_dir), ignore_errors=True)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # the worker's log (and the terminal with --verbose)


def _quiet_train_logs() -> None:
    """Ray Train logs every report at INFO under a logger named by its file path, which
    LoggingConfig(log_level=...) does not reach; keep the worker logs to warnings."""
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except Exception:  # a Ray version without that module: only noisier
        pass


def run_eval(cfg: Config, checkpoint_dir: str | None, trial_dir: Path) -> dict[str, float]:
    import torch

    from stlm.eval import evaluate, flat_metrics
    from stlm.train.checkpoint import latest_checkpoint, load_model

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
    results = evaluate(model, tokenizer, cfg.eval.tasks, limit=cfg.eval.limit, seed=cfg.eval.seed,
                       data_dir=cfg.eval.data_dir, batch_size=cfg.eval.batch_size, device=device,
                       items_path=items, config=cfg)
    out = flat_metrics(results)
    out["eval_s"] = time.time() - t0
    return out
