"""Ray for a sweep: start a local Ray or attach to a cluster (bounded), the trials' environment, what fits at once."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from stlm.errors import StlmError
from stlm.offline import offline_reason
from stlm.sweep.plan.describe import trial_resources
from stlm.sweep.plan.sweep import Sweep
from stlm.sweep.resilience import layout
from stlm.sweep.run import reaper

# environment the workers need, passed through runtime_env when set in the driver
PASS_ENV = (
    "STLM_TRAIN_CONTROLLER",
    "STLM_CACHE",
    "STLM_GPT2_VOCAB",
    "STLM_BENCHMARKS",
    "STLM_QUIET",
    "MLFLOW_TRACKING_URI",
    "HF_HOME",
    "HF_DATASETS_CACHE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_OFFLINE",
    "STLM_OFFLINE",
    "TIKTOKEN_CACHE_DIR",
    # where an s3:// experiment dir is (not the credentials: each node has its own, see storage.py)
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)

HEAD_RESOURCE = "node:__internal_head__"  # every Ray head advertises 1 of it

HEALTH_CHECK_S = "0.5"  # Ray Train's controller polls its workers (and collects reports) this often; default 2 s


def _one_of(name: str, value: str, choices: dict[str, str]) -> None:
    """A switch in the driver's environment must be one of `choices` (the first is the default):
    a typo is refused before Ray starts instead of silently taking a path."""
    if value not in choices:
        (default, why), *others = choices.items()
        alternatives = " or ".join(f"{k!r} ({v})" for k, v in others)
        raise StlmError(
            f"{name}={value!r}: use {default!r} (the default: {why}) or {alternatives}; see stlm/sweep/train_run.py."
        )


def env_vars(*, driver_frees_pgs: bool) -> dict[str, str]:
    # lazy: train_run imports Ray, which --dry-run never starts
    from stlm.sweep.run.train_run import PG_CLEANUP_ENV

    env = {k: os.environ[k] for k in PASS_ENV if os.environ.get(k)}
    _one_of(
        "STLM_TRAIN_CONTROLLER",
        env.get("STLM_TRAIN_CONTROLLER", "in-trial"),
        {
            "in-trial": "Ray Train's controller runs in each Tune trial's process",
            "actor": "Ray Train's stock controller actor",
        },
    )
    _one_of(
        PG_CLEANUP_ENV,
        os.environ.get(PG_CLEANUP_ENV, "driver"),
        {
            "driver": "the sweep driver frees a killed trial's placement group",
            "ray": "Ray Train's cleaner actor per trial, with the dashboard",
        },
    )
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
    raise StlmError(
        f"No Ray cluster answers at {address!r} (--address / RAY_ADDRESS): nothing accepted a connection "
        f"to {host}:{port} within {timeout:g} s ({type(last).__name__}: {last}). Start the cluster "
        "(`ray start --head`, or `ray up cluster/l40.yaml`) and check the address and port, or leave "
        "--address out to run on a local Ray; --connect-timeout sets how long to wait."
    )


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


def init_ray(
    address: str | None,
    env: dict[str, str],
    *,
    exp_dir: Path,
    dashboard: bool,
    verbose: bool = False,
    connect_timeout: float = 30.0,
) -> None:
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
    # lazy: Ray, which --dry-run never starts
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_S)  # read by the Train controller
    if offline_reason():  # STLM_OFFLINE: Ray's usage report would go to usage-stats.ray.io
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = dict(env)
    kwargs: dict[str, Any] = dict(log_to_driver=verbose, logging_level=logging.WARNING)
    addr_dir = Path(exp_dir) / layout.RAY
    if not address:
        reaper.tie_to_this_process(exp_dir)  # its processes end with this driver, even a kill -9'd one
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
        raise StlmError(
            f"Could not start or reach {where}: {type(e).__name__}: {first}. "
            "Check --address / RAY_ADDRESS (and RAY_AUTH_MODE, which must match the cluster's)."
        ) from None
    if not address:
        gcs = ray.get_runtime_context().gcs_address
        (addr_dir / "ray").mkdir(parents=True, exist_ok=True)
        (addr_dir / "ray" / "ray_current_cluster").write_text(gcs)


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
            msg = (
                f"resources: each trial worker asks for {per:g} {key}, but the Ray cluster has "
                f"{cluster.get(key, 0):g} now."
            )
            if attached:
                print(f"warning: {msg} Trials wait until the autoscaler adds nodes with {key}s.", flush=True)
                continue
            raise StlmError(
                f"{msg} Lower resources.{'gpus' if key == 'GPU' else 'cpus'}_per_worker in the sweep "
                f"file, or attach to a cluster that has {key}s with --address."
            )
