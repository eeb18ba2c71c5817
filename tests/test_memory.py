"""Memory: trials whose summed estimate does not fit run fewer at once (or are refused), and a trial that
Ray's memory monitor killed is named so, with the node's figures, and retried on a budget of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

from stlm.sweep.plan.sweep import load_sweep
from stlm.sweep.resilience.fatal import error_text
from stlm.sweep.resilience.low_memory import low_memory
from stlm.sweep.run.memory import free_memory, trial_memory
from stlm.sweep.run.preflight import local_resources

REPO = Path(__file__).resolve().parents[1]

# the raylet's paragraph when its memory monitor killed a trial's Ray Train worker (Ray 2.60, seen with
# RAY_memory_usage_threshold=0.35 and a 2.6 GB worker), as the trial's error ends
RAY_OOM = (
    "ray.train.WorkerGroupError: Training failed due to worker errors:\nA worker health check failed.\n"
    "2 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 192.0.2.2, ID: "
    "f73571c9da03e34c) was 8.39GB used / 23.54GB limit (0.356584)\nOOM kill reason: Memory usage 8953692160B "
    "exceeded threshold of 8846624768B (35.0% of 25276071936B limit)\nRay killed 2 worker(s) based on the killing "
    "policy\nRefer to the documentation on how to address the out of memory issue: https://docs.ray.io/en/latest"
)


def _sweep(tmp_path: Path, batch: int) -> Path:
    spec = {
        "name": "memory",
        "config": {
            "model": {"tokenizer": "bytes", "n_layers": 2, "d_model": 64, "n_heads": 2, "context_length": 256},
            "data": {"source": "generated", "max_chars": 100_000},
            "train": {"max_steps": 10, "batch_size": batch},
        },
        "grid": {"model.ffn": ["gelu", "swiglu"]},
        "control": "gelu",
        "seeds": [0],
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
    }
    path = tmp_path / "memory.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _batch_needing(tmp_path: Path, low: float, high: float) -> int:
    """A batch size whose trial needs between `low` and `high` bytes (the estimate grows linearly in it)."""
    one = trial_memory(load_sweep(_sweep(tmp_path, 1)))
    per_sequence = trial_memory(load_sweep(_sweep(tmp_path, 2))) - one
    batch = int((low + high) / 2 - one) // int(per_sequence)
    assert low < trial_memory(load_sweep(_sweep(tmp_path, batch))) < high
    return batch


def _dry_run(tmp_path: Path, sweep: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stlm.sweep", str(sweep), "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_two_trials_that_fit_one_at_a_time_are_limited_to_one_and_one_too_big_is_refused(tmp_path):
    assert local_resources()["CPU"] >= 2  # two trials would run at once by CPUs
    free = free_memory()
    sweep = _sweep(tmp_path, _batch_needing(tmp_path, 0.55 * free, 0.8 * free))
    p = _dry_run(tmp_path, sweep)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "memory: 2 trials at once would need about" in p.stdout and "running 1 at once" in p.stdout, p.stdout

    total = local_resources()["memory"]
    sweep = _sweep(tmp_path, _batch_needing(tmp_path, 1.2 * total, 1.6 * total))
    p = _dry_run(tmp_path, sweep)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert "resources: one trial needs about" in p.stderr and "Lower train.batch_size" in p.stderr, p.stderr


def test_small_trials_run_as_many_at_once_as_the_cpus_allow(tmp_path):
    p = _dry_run(tmp_path, _sweep(tmp_path, 4))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 at once fit in" in p.stdout and "running 1 at once" not in p.stdout, p.stdout


def test_a_kill_by_rays_memory_monitor_is_named_with_the_nodes_figures(tmp_path):
    reason = low_memory(RAY_OOM)
    assert reason.startswith(
        "killed for low memory by Ray's memory monitor: node 192.0.2.2 had 8.4 GB of its 23.5 GB in use, "
        "past the monitor's threshold of 8.8 GB (35%)."
    )
    assert low_memory("ray.exceptions.RayTaskError: RuntimeError: CUDA error: device-side assert") is None
    # what MLflow's stlm.error tag and the report lead with (Tune's error file of the trial)
    error_file = tmp_path / "error.txt"
    error_file.write_text(f"Traceback (most recent call last):\n  ...\n{RAY_OOM}\n")
    assert error_text(SimpleNamespace(error_file=str(error_file))).splitlines()[0] == reason


def test_low_memory_kills_are_retried_apart_from_crashes():
    """Ray Train's own policy with max_failures=1, wrapped: a low-memory kill (a bystander's, or the trial's own)
    and a crash are each retried once; a second of either is refused."""
    import ray.exceptions
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision, create_failure_policy
    from ray.train.v2.api.exceptions import WorkerGroupError

    from stlm.sweep.resilience.stall import StallClock
    from stlm.sweep.run.train_run import stall_policy_class

    clock = StallClock(explicit=None, budget=1, evaluates=False, t_start=0.0)
    policy = stall_policy_class()(create_failure_policy(FailureConfig(max_failures=1)), clock)
    oom = WorkerGroupError("killed", {0: ray.exceptions.OutOfMemoryError(RAY_OOM)})
    crash = WorkerGroupError("killed", {0: RuntimeError("worker died")})
    assert policy.make_decision(oom) == FailureDecision.RETRY
    assert policy.make_decision(crash) == FailureDecision.RETRY  # the low-memory kill spent none of max_failures
    assert policy.make_decision(oom) == FailureDecision.RAISE
    assert policy.make_decision(crash) == FailureDecision.RAISE
