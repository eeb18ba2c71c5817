"""Run a sweep on Ray: Tune schedules trials, each trial is a Ray Train (V2) run.

    Tuner(run_trial)                       one Tune trial per (arm, seed, sample)
      OptunaSearch(SearchSpace)            pins the cell, samples the knobs (space.py)
      ASHAScheduler(time_attr="step")      optional early stopping on the reported step
      MLflowSweepCallback                  parent + child runs, resume-safe (tracking.py)
    run_trial(config)                      a Tune *function* trainable: Train V2 refuses Tuner(TorchTrainer)
      Train run (train_run.py).fit()       RunConfig(name=<trial id>, storage_path=<exp>/train):
                                           a retried or restored trial resumes from its last
                                           Train checkpoint; Train's controller runs in this
                                           trial's process and reports straight to Tune
        worker_loop: stlm.train.loop.train(cfg, report=ray.train.report, resume_from=get_checkpoint())
                     then the eval tasks on rank 0, reported as eval/<task>/<metric>

The Tune function reserves {"cpu": 0, "memory": 1}: with Tune's default of one CPU per trial
the Train workers of a trial could not be placed on a small machine (DESIGN.md).

Experiment directory (absolute, default ./sweep_runs/<name>):
    sweep.json            what stlm report reads (contract)   plan.pkl       the resolved sweep (resume)
    mlflow_state.json     trial -> MLflow run ledger            tune/          Tune's experiment state
    train/<trial id>/     Ray Train checkpoints (the only copies) trials/<trial id>/  config.yaml, eval items, fatal_error.json
    data/                 a cluster's prepared corpora (cluster_data.py)

The experiment directory may be an object-store URI (s3://bucket/prefix, storage.py): Tune and Train
then keep their state and checkpoints in the bucket themselves (Ray Train uploads each checkpoint,
and a resumed worker downloads the one it continues from); trials/<id>/ is written on the node and
uploaded; the driver works in a local mirror of its own files, uploaded as they change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from stlm.config import Config, dump_yaml
from stlm.errors import StlmError
from stlm.offline import offline_reason
from stlm.sweep.space import ARM, SEED, SearchSpace
from stlm.sweep.spec import Sweep, count

# environment the workers need, passed through runtime_env when set in the driver
PASS_ENV = ("STLM_TRAIN_CONTROLLER", "STLM_CACHE", "STLM_GPT2_VOCAB", "STLM_BENCHMARKS", "STLM_QUIET", "MLFLOW_TRACKING_URI",
            "HF_HOME", "HF_DATASETS_CACHE", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "STLM_OFFLINE",
            "TIKTOKEN_CACHE_DIR",
            # where an s3:// experiment dir is (not the credentials: each node has its own, see storage.py)
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
HEAD_RESOURCE = "node:__internal_head__"  # every Ray head advertises 1 of it
HEALTH_CHECK_S = "0.5"  # Ray Train's controller polls its workers (and collects reports) this often; default 2 s


@dataclasses.dataclass
class Context:
    """Everything a trial needs, pickled once into the object store (tune.with_parameters)."""

    sweep: Sweep
    space: SearchSpace
    exp_dir: str  # the experiment directory: an absolute path, or an object-store URI (storage.py)


def prepare_trial(ctx: Context, config: dict, trial_id: str):
    """(Config, ParamCount, trial dir) of a trial: arm + seed + knobs, budget-solved, absolute paths."""
    from stlm.sweep import storage

    cfg = ctx.space.resolve(config)
    trial_dir = storage.open(ctx.exp_dir).local / "trials" / trial_id  # (an object store's: this machine's copy)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(trial_dir / "checkpoints"),
                                                             run_name="run"))
    return cfg, count(cfg), trial_dir


# --------------------------------------------------------------------------- inside a Ray Train worker


def worker_loop(lc: dict) -> None:
    import ray.train

    _quiet_train_logs()

    from stlm.config import build_config
    from stlm.train.loop import NonFiniteLossError, train

    # start-up: from the Tune trial starting to this worker running (Tune actor, Train controller,
    # placement group, worker actor, torch.distributed); logged with every report
    cfg = build_config(lc["config"])
    from stlm.sweep import storage as storage_mod
    from stlm.sweep.cluster_data import STORE, localize

    st = storage_mod.open(lc.get("exp") or Path(lc["trial_dir"]).parents[1])
    tid = lc.get("trial_id") or Path(lc["trial_dir"]).name
    trial_dir = st.local / "trials" / tid  # an object store's: this node's copy, uploaded
    if st.remote:  # train() stages its checkpoints on this node; Ray Train uploads them
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(trial_dir / "checkpoints")))
    localize(cfg, st.ray(STORE))  # on a cluster: this node's copy of the corpus
    extra = {"params": lc["params"], "flops_per_token": lc["flops_per_token"],
             "startup_s": time.time() - lc["t_start"], "max_steps": cfg.train.max_steps}
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    # this trial's Ray Train run, <exp>/train/<trial id>; in an object store, a local directory that
    # receives the registered checkpoints this worker resumes from (its own: ranks share no files)
    storage = Path(lc["storage_dir"]) if not st.remote else st.local / "restore" / f"{tid}-{os.getpid()}"
    run_rel = f"train/{tid}"
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

            write_atomic(Path(checkpoint_dir) / HISTORY_FILE, "".join(json.dumps(m) + "\n" for m in history))
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
            st.download(f"{run_rel}/{SNAPSHOT_FILE}", storage / SNAPSHOT_FILE)
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
                st.upload(f"trials/{tid}/eval")  # an object store: the items the driver logs to MLflow
            ray.train.report({**final, **extra, **evals})  # a barrier: every rank reports
    except StlmError as e:
        # A user-fixable error (a diverging loss, a bad setting, damaged data) fails the same way on every
        # retry: record it for run_trial, which fails the trial with it, and spend no Ray Train retry on it.
        # (With several workers only a diverging loss is known to stop every rank at once.)
        if rank == 0:
            write_fatal(trial_dir, e)  # on a full disk this raises: Ray Train's error then says it
            st.upload(f"trials/{tid}/{FATAL_FILE}")
        if world_size > 1 and not isinstance(e, NonFiniteLossError):
            raise
    finally:
        if st.remote:  # the downloaded checkpoints and rank 0's staged ones: the bucket keeps them
            import shutil

            shutil.rmtree(storage, ignore_errors=True)
            if rank == 0:
                shutil.rmtree(Path(cfg.train.out_dir), ignore_errors=True)


HISTORY_FILE = "stlm_reports.jsonl"
FATAL_FILE = "fatal_error.json"  # in trials/<id>/: a trial error no retry can fix
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's registered checkpoints


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # the worker's log (and the terminal with --verbose)


def persisted_name(step: int) -> str:
    """A persisted checkpoint's directory name: the step, plus a token so that a step written again
    after a fallback never lands on (and is never deleted as) an older directory of the same step."""
    import uuid

    from stlm.train.checkpoint import step_dir_name

    return f"{step_dir_name(int(step))}-{uuid.uuid4().hex[:8]}"


def persist_directory(src: Path, dest: Path) -> None:
    """Move a finished checkpoint directory to `dest` atomically: a rename on the same filesystem,
    else a copy into a hidden temp directory there, renamed once complete."""
    import errno
    import shutil

    from stlm.atomic import disk_full_guard, fsync_dir

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}.tmp")
        size = sum(f.stat().st_size for f in src.iterdir())
        try:
            with disk_full_guard(dest, size):
                shutil.copytree(src, tmp)
                os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(src, ignore_errors=True)
    fsync_dir(dest.parent)


def registered_checkpoints(storage: Path, latest: str | None) -> list[Path]:
    """The checkpoints Ray Train registered for this run (its snapshot, plus the latest it hands back),
    oldest first, none past the latest."""
    import re

    from stlm.train.checkpoint import step_of

    if latest is None:
        return []
    names = {Path(latest).name}
    try:
        names |= set(re.findall(r"step_\d+-[0-9a-f]+", (storage / SNAPSHOT_FILE).read_text()))
    except OSError:
        pass
    top = step_of(latest)
    found = [storage / n for n in names if top is not None and (step_of(n) or 0) <= top] or [Path(latest)]
    return sorted(found, key=lambda p: (step_of(p) or 0, p == Path(latest)))


def resume_point(storage: Path, latest: str | None, say=None, fetch=None) -> Path | None:
    """The registered checkpoint to continue from: the newest intact one (a damaged one is named and
    skipped); None for a fresh run. No intact one left is a CorruptCheckpointError. `fetch(path)`
    brings a candidate here before it is checked (an object store's checkpoint)."""
    from stlm.train.checkpoint import CorruptCheckpointError, intact, newest_intact

    candidates = registered_checkpoints(storage, latest)
    if not candidates:
        return None
    start = newest_intact(candidates, say=say, fetch=fetch)
    if start is None:
        raise CorruptCheckpointError(f"Every checkpoint Ray Train registered for this trial is damaged, so it "
                                     f"cannot continue: {intact(candidates[-1])}")
    return start


def discard_unregistered(storage: Path, latest: str | None, staging: Path, say=None, remote=None) -> None:
    """Delete this run's checkpoints that Ray Train never registered (persisted after its latest one by
    an attempt whose driver had stopped listening, or left in the local staging directory by a killed
    worker) and half-copied temp directories. remote=(Storage, run dir): the run is in an object store
    (storage is then the local directory its snapshot was downloaded to)."""
    import shutil

    registered = set(registered_checkpoints(storage, latest))
    if remote is not None:  # the bucket's step_* "directories" (an upload cut short is one too)
        st, rel = remote
        names = {p.name for p in registered}
        gone = [n for n in st.names(rel) if (n.startswith("step_") and n not in names) or n.startswith(".step_")]
        for n in gone:
            st.delete(f"{rel}/{n}")
        stale = [Path(st.uri) / rel / n for n in gone]
    else:
        stale = [p for p in storage.glob("step_*") if p not in registered] + list(storage.glob(".step_*"))
    if staging.is_dir():
        stale += list(staging.glob("step_*")) + list(staging.glob(".step_*"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if stale and say is not None:
        say(f"discarded {len(stale)} checkpoint(s) Ray Train had not registered: {', '.join(p.name for p in stale)}"
            + (f" (its latest is {Path(latest).name})" if latest else ""))


def write_fatal(trial_dir: Path, e: Exception) -> None:
    from stlm.atomic import write_atomic

    trial_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(trial_dir / FATAL_FILE, json.dumps({"type": type(e).__name__, "message": str(e)}))


def read_fatal(trial_dir: Path, st=None) -> dict | None:
    """The fatal error a worker recorded (st in an object store: the bucket's copy, written on a node)."""
    if st is not None and st.remote:
        from stlm.sweep.storage import read_json

        return read_json(st, f"trials/{trial_dir.name}/{FATAL_FILE}")
    try:
        return json.loads((trial_dir / FATAL_FILE).read_text())
    except (OSError, ValueError):
        return None


HISTORY_FILE = "stlm_reports.jsonl"


def read_history(path: str) -> list[dict]:
    """The reports saved with a checkpoint by worker_loop, oldest first (else the checkpoint's own
    metrics, memory-mapped so the optimizer state is not read)."""
    f = Path(path) / HISTORY_FILE
    if f.is_file():
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    import torch

    try:
        state = torch.load(Path(path) / "trainer.pt", map_location="cpu", weights_only=False, mmap=True)
        metrics = state.get("metrics")
        return [dict(metrics)] if metrics else []
    except Exception:  # another checkpoint layout: nothing to replay
        return []


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
        (trial_dir / "eval").mkdir(parents=True, exist_ok=True)
        items = trial_dir / "eval" / "items.jsonl"
    t0 = time.time()
    results = evaluate(model, tokenizer, cfg.eval.tasks, limit=cfg.eval.limit, seed=cfg.eval.seed,
                       data_dir=cfg.eval.data_dir, batch_size=cfg.eval.batch_size, device=device,
                       items_path=items, config=cfg)
    out = flat_metrics(results)
    out["eval_s"] = time.time() - t0
    return out


# --------------------------------------------------------------------------- the Tune trial


def run_trial(config: dict, ctx: Context) -> None:
    import ray.train
    from ray import tune

    from stlm.sweep.train_run import trainer_class

    from stlm.sweep import storage as storage_mod

    trial_id = tune.get_context().get_trial_id()
    if config.get("arch.infeasible"):
        raise StlmError(f"trial {trial_id}: the sampled shape {config} cannot meet the budget (not launched).")
    cfg, counted, trial_dir = prepare_trial(ctx, config, trial_id)
    if report_finished(ctx, trial_id):  # --resume after a kill that came before Tune saved this trial's end
        return
    st = storage_mod.open(ctx.exp_dir)
    fatal = read_fatal(trial_dir, st)
    if fatal and fatal["type"] == "NonFiniteLossError":  # the same config diverges the same way again
        raise StlmError(fatal["message"])
    (trial_dir / FATAL_FILE).unlink(missing_ok=True)  # any other error may be gone now: try again
    if st.remote:
        st.delete(f"trials/{trial_id}/{FATAL_FILE}")
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "config.yaml").write_text(dump_yaml(cfg))
    st.upload(f"trials/{trial_id}/config.yaml")
    r = ctx.sweep.spec.resources
    use_gpu = r.gpus_per_worker > 0
    per_worker = {"CPU": r.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = r.gpus_per_worker
    Trainer, report_callbacks = trainer_class(r.workers)
    storage_path = st.ray("train")  # a path, or the bucket's URI: Ray Train uploads the checkpoints there
    trainer = Trainer(
        worker_loop,
        train_loop_config={
            "config": dataclasses.asdict(cfg), "params": counted.total, "flops_per_token": counted.flops_per_token,
            "trial_dir": str(trial_dir), "t_start": time.time(), "storage_dir": f"{storage_path}/{trial_id}",
            "exp": ctx.exp_dir, "trial_id": trial_id,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=r.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
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
    trainer.fit()  # raises TrainingFailedError once max_failures retries are spent: Tune marks the trial ERROR
    fatal = read_fatal(trial_dir, st)
    if fatal:  # the workers stopped on an error no retry can fix (worker_loop): the trial fails with it
        from stlm.atomic import DiskFullError

        error = DiskFullError if fatal["type"] == DiskFullError.__name__ else StlmError  # the sweep stops on the former
        raise error(fatal["message"])


def report_finished(ctx: Context, trial_id: str) -> bool:
    """If MLflow already holds this trial as FINISHED (the ledger says so), report its last metrics
    again instead of running anything: the MLflow callback logs no point twice."""
    from ray import tune

    from stlm import tracking as T
    from stlm.sweep.tracking import Ledger

    from stlm.sweep import storage
    from stlm.sweep.tracking import STATE_FILE

    st = storage.open(ctx.exp_dir)
    if st.remote:  # the driver's ledger, as last uploaded (the driver may run on another machine)
        entry = ((storage.read_json(st, STATE_FILE) or {}).get("trials") or {}).get(trial_id) or {}
    else:
        entry = Ledger(Path(ctx.exp_dir)).trials.get(trial_id) or {}
    if entry.get("status") != "finished":
        return False
    try:
        run = T.mlflow_client(os.environ.get("MLFLOW_TRACKING_URI")).get_run(entry["run_id"])
    except Exception:  # MLflow unreachable or the run gone: run the trial (from its checkpoints) instead
        return False
    metrics = dict(run.data.metrics)
    if "step" not in metrics:
        return False
    tune.report({**metrics, "step": int(metrics["step"])})
    return True


# --------------------------------------------------------------------------- the driver


def _one_of(name: str, value: str, choices: dict[str, str]) -> None:
    """A switch in the driver's environment must be one of `choices` (the first is the default):
    a typo is refused before Ray starts instead of silently taking a path."""
    if value not in choices:
        (default, why), *others = choices.items()
        alternatives = " or ".join(f"{k!r} ({v})" for k, v in others)
        raise StlmError(f"{name}={value!r}: use {default!r} (the default: {why}) or {alternatives}; "
                        "see stlm/sweep/train_run.py.")


def env_vars(*, driver_frees_pgs: bool) -> dict[str, str]:
    from stlm.sweep.train_run import PG_CLEANUP_ENV

    env = {k: os.environ[k] for k in PASS_ENV if os.environ.get(k)}
    _one_of("STLM_TRAIN_CONTROLLER", env.get("STLM_TRAIN_CONTROLLER", "in-trial"),
            {"in-trial": "Ray Train's controller runs in each Tune trial's process",
             "actor": "Ray Train's stock controller actor"})
    _one_of(PG_CLEANUP_ENV, os.environ.get(PG_CLEANUP_ENV, "driver"),
            {"driver": "the sweep driver frees a killed trial's placement group",
             "ray": "Ray Train's cleaner actor per trial, with the dashboard"})
    env.setdefault("STLM_QUIET", "1")  # no progress bars from trials
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_S)
    if driver_frees_pgs:  # the driver's FreeDeadTrialsPlacementGroups replaces Ray Train's cleaner actor
        env[PG_CLEANUP_ENV] = "driver"
    return env


def wait_for_address(address: str, timeout: float) -> None:
    """Return once something accepts TCP connections at the cluster address, else StlmError within
    `timeout` seconds. ray.init itself retries an address where nothing listens for minutes, printing
    "Failed to connect to GCS", and a SIGTERM does not stop it."""
    if address in ("auto", "local"):
        return  # resolved by Ray from this machine's files
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        host, port = hostport, "10001" if address.startswith("ray://") else "6379"
    deadline, last = time.monotonic() + timeout, None
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(0.1, min(3.0, left))):
                return
        except OSError as e:
            last = e
        if left <= 0:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    raise StlmError(f"No Ray cluster answers at {address!r} (--address / RAY_ADDRESS): nothing accepted a connection "
                    f"to {host}:{port} within {timeout:g} s ({type(last).__name__}: {last}). Start the cluster "
                    "(`ray start --head`, or `ray up cluster/l40.yaml`) and check the address and port, or leave "
                    "--address out to run on a local Ray; --connect-timeout sets how long to wait.")


@contextlib.contextmanager
def _time_limit(seconds: float, what: str):
    """SIGALRM-bounded block in the main thread (ray.init against an address that accepts connections
    but never answers as a Ray GCS); elsewhere, unbounded."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{what} did not finish within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def init_ray(address: str | None, env: dict[str, str], *, exp_dir: Path, dashboard: bool,
             verbose: bool = False, connect_timeout: float = 30.0) -> None:
    """Attach to `address`, else start a local Ray with every core (and the dashboard only if asked).

    The dashboard's only use in a local sweep is Ray Train's PlacementGroupCleaner, which asks its
    state API whether a trial's Train controller still lives and otherwise frees the workers'
    placement group. When ASHA stops a trial that controller dies ungracefully; without a cleaner
    the group is never freed and the next trials wait for ever (measured: a 2-core ASHA sweep hung
    in its second wave). stlm's driver frees those groups itself where it can
    (train_run.FreeDeadTrialsPlacementGroups), and then a local Ray starts without the dashboard:
    10 processes fewer, each waking many times a second beside the training (benchmarks/RESULTS.md).

    With Ray's cleaner (dashboard=True): the cleaner finds "its" cluster without an address: from
    RAY_ADDRESS, else the ray_current_cluster file under $RAY_TMPDIR/ray (written by `ray start`,
    not by ray.init), else by looking for GCS processes, which fails once a second Ray instance
    runs on the machine. So a local sweep writes its GCS address to <exp>/ray/ray/ray_current_cluster
    and points its workers' RAY_TMPDIR there.

    Worker logs reach the terminal only with verbose (they are in the Ray session's logs either
    way); a failing trial's error is printed by Tune and kept in the final table and MLflow.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_S)  # read by the Train controller
    if offline_reason():  # STLM_OFFLINE: Ray's usage report would go to usage-stats.ray.io
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = dict(env)
    kwargs: dict[str, Any] = dict(log_to_driver=verbose, logging_level=logging.WARNING)
    addr_dir = Path(exp_dir) / "ray"
    if not address:
        env["RAY_TMPDIR"] = str(addr_dir)
        # One machine has no spot preemptions to watch: Ray Train's watcher is one more actor process
        # per trial (2.7 CPU-s of start-up measured on 2 cores) polling every 5 s. Clusters keep it.
        env.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        kwargs.update(include_dashboard=dashboard, dashboard_host="127.0.0.1")
    kwargs["runtime_env"] = {"env_vars": env}
    try:
        if address:
            wait_for_address(address, connect_timeout)
            with _time_limit(connect_timeout, f"Connecting to the Ray cluster at {address!r}"):
                ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", num_cpus=os.cpu_count(), **kwargs)
    except StlmError:
        raise
    except Exception as e:  # a bad address, an unreachable or refusing cluster
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        first = (str(e).strip().splitlines() or [""])[0]
        raise StlmError(f"Could not start or reach {where}: {type(e).__name__}: {first}. "
                        "Check --address / RAY_ADDRESS (and RAY_AUTH_MODE, which must match the cluster's).") from None
    if not address:
        gcs = ray.get_runtime_context().gcs_address
        (addr_dir / "ray").mkdir(parents=True, exist_ok=True)
        (addr_dir / "ray" / "ray_current_cluster").write_text(gcs)


def trial_resources(sweep: Sweep) -> dict[str, float]:
    r = sweep.spec.resources
    out = {"CPU": r.workers * r.cpus_per_worker}
    if r.gpus_per_worker:
        out["GPU"] = r.workers * r.gpus_per_worker
    return out


def default_concurrency(sweep: Sweep, cluster: dict[str, float]) -> int:
    """How many trials the cluster fits at once; every trial when it fits none yet (an autoscaling
    cluster adds GPU nodes only once trials ask for them)."""
    if sweep.spec.resources.max_concurrent:
        return sweep.spec.resources.max_concurrent
    need = trial_resources(sweep)
    fits = [math.floor(cluster.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0]
    n = min(fits) if fits else 1
    return n if n >= 1 else sweep.num_trials


def check_cluster(sweep: Sweep, cluster: dict[str, float], attached: bool) -> None:
    """A local Ray that lacks a resource would wait for ever: refuse. A cluster may autoscale: warn."""
    r = sweep.spec.resources
    for key, per in (("CPU", r.cpus_per_worker), ("GPU", r.gpus_per_worker)):
        if per and cluster.get(key, 0) < per:
            msg = (f"resources: each trial worker asks for {per:g} {key}, but the Ray cluster has "
                   f"{cluster.get(key, 0):g} now.")
            if attached:
                print(f"warning: {msg} Trials wait until the autoscaler adds nodes with {key}s.", flush=True)
                continue
            raise StlmError(f"{msg} Lower resources.{'gpus' if key == 'GPU' else 'cpus'}_per_worker in the sweep "
                            f"file, or attach to a cluster that has {key}s with --address.")


def _finishing_asha():
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
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from stlm.sweep import tune_state

    tune_state.install()  # Tune's experiment state written whole or not at all (tune_state.py)

    FinishingASHA = _finishing_asha()

    sweep, space = ctx.sweep, ctx.space
    spec = sweep.spec
    # On the head: a trial's process runs its Ray Train controller, which restarts the workers from the
    # last checkpoint when their node is lost (a spot preemption); on a preemptible node it would die with them.
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                    {"cpu": 0, "memory": 1, HEAD_RESOURCE: 0.001})
    from stlm.sweep import storage

    tune_dir = storage.open(ctx.exp_dir).ray("tune")  # a path, or the bucket's URI (Tune uploads its state)
    run_config = tune.RunConfig(
        name="tune", storage_path=ctx.exp_dir, callbacks=callbacks, progress_reporter=reporter, verbose=1,
        failure_config=tune.FailureConfig(max_failures=0),  # retries happen inside Ray Train (spec.max_failures)
    )
    if resume:
        # finished trials stay finished; unfinished and errored ones run again from their Ray Train
        # checkpoints (same Train run name and storage path); the Optuna study comes back with the
        # searcher state, so the cells not yet started are still pinned
        try:
            return tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
        except Exception as e:  # state missing or unreadable: say what to do instead of Tune's traceback
            raise StlmError(f"--resume: Tune could not restore {tune_dir} ({type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:300]}). The sweep was probably stopped before "
                            "Tune saved its first state; start it again with --overwrite.") from None

    metric = spec.metrics if spec.multi_objective else spec.metrics[0]
    mode = spec.modes if spec.multi_objective else spec.modes[0]
    points = space.points()
    searcher = OptunaSearch(space=space, metric=metric, mode=mode, points_to_evaluate=points, sampler=space.sampler())
    scheduler = None
    if spec.scheduler.type == "asha":
        max_t = max(a.cfg.train.max_steps for a in sweep.arms)
        scheduler = FinishingASHA(time_attr="step", metric=spec.metrics[0], mode=spec.modes[0], max_t=max_t + 1,
                                  grace_period=min(spec.scheduler.grace_period, max_t),
                                  reduction_factor=spec.scheduler.reduction_factor)
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=len(points), max_concurrent_trials=concurrency,
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


def distinct_corpora(sweep: Sweep):
    """The first arm of each distinct (data, tokenizer, vocabulary): the arms whose corpus is prepared."""
    seen = set()
    for arm in sweep.arms:
        key = (repr(arm.cfg.data), arm.cfg.model.tokenizer, arm.cfg.model.vocab_size)
        if key not in seen:
            seen.add(key)
            yield arm


def prepare_data_locally(sweep: Sweep, log=print) -> None:
    """Tokenize every distinct (data, tokenizer) once in the driver, so trials start on a warm cache."""
    from stlm.data import prepare

    for arm in distinct_corpora(sweep):
        t0 = time.time()
        prepare(arm.cfg)
        log(f"data ready for arm {arm.name} ({arm.cfg.data.source}, {arm.cfg.model.tokenizer}) in {time.time() - t0:.1f}s")
