"""End to end: sweeps through Ray Tune + Ray Train + Optuna + MLflow for real: ASHA stopping trials, a trial on two
workers, a killed worker restarted from its checkpoint, the driver freeing a killed trial's workers. The helpers
here (starting a sweep, killing its process group, waiting for a step) serve the other end-to-end files; the
quickstart sweep itself, stopped and resumed, and what MLflow and its UI show of it, are in test_quickstart.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

MAX_STEPS = 30
OVERRIDES = [
    f"train.max_steps={MAX_STEPS}",
    "train.eval_interval=10",
    "train.log_interval=10",
    "train.warmup_steps=3",
    "train.batch_size=8",
    "train.eval_batches=2",
    "data.max_chars=400000",
    "data.bpe_train_chars=200000",
]


def _env() -> dict:
    env = dict(os.environ, STLM_QUIET="1", RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    env.pop("RAY_ADDRESS", None)  # always a local Ray of its own
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    # own session: the driver and the Ray processes it starts form one process group we can kill
    return subprocess.Popen(
        [sys.executable, "-m", "stlm.sweep", *args],
        cwd=cwd,
        env=_env(),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=60)


STAT_FIELDS = {"state": 0, "ppid": 1, "pgrp": 2, "session": 3}  # /proc/<pid>/stat, after the ")" of the name


def live_pids(field: str, value: int) -> list[int]:
    """The live (not zombie) processes whose stat `field` (ppid, pgrp or session) is `value`."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if d.name.isdigit() and int(stat[STAT_FIELDS[field]]) == value and stat[0] != "Z":
                out.append(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _wait_group_empty(pgid: int, timeout: float) -> list[str]:
    """The command lines of the live processes still in a process group after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for pid in live_pids("pgrp", pgid):
            with contextlib.suppress(OSError):
                left.append(
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
                )
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _wait_for_step(p: subprocess.Popen, exp_dir: Path, step: int, log: Path) -> None:
    """Until the driver has a trial's result at `step` or later (its MLflow ledger says so); fails
    if the sweep ends or 240 s pass first."""
    ledger = exp_dir / "mlflow_state.json"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if ledger.is_file():
            trials = json.loads(ledger.read_text()).get("trials", {})
            if any(t.get("last_step", -1) >= step for t in trials.values()):
                return
        time.sleep(0.1)
    pytest.fail(f"no result at step {step} within 240 s (or the sweep ended first):\n" + log.read_text()[-3000:])


def _child_runs(exp_dir: Path):
    """(MLflow client, the trial runs under the sweep's parent run), from the sweep's sweep.json."""
    from mlflow.tracking import MlflowClient

    info = json.loads((exp_dir / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    runs = client.search_runs(
        [client.get_run(info["parent_run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'",
    )
    return client, runs


PG_SCRIPT = """
import time, ray
from ray.util.placement_group import placement_group, placement_group_table
from stlm.sweep.run.train_run import FreeDeadTrialsPlacementGroups, orphaned_placement_groups

ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
own = placement_group([{"CPU": 1}])  # made by the driver, as Tune makes its trials' groups
ray.get(own.ready())

@ray.remote(num_cpus=0)
class Trial:  # makes its workers' group, as Ray Train does inside a trial
    def start_workers(self):
        pg = placement_group([{"CPU": 1}])
        ray.get(pg.ready())
        return pg

trial = Trial.remote()
workers = ray.get(trial.start_workers.remote())
job = ray.get_runtime_context().get_job_id()
alive_orphans = len(orphaned_placement_groups(job))
ray.kill(trial)  # what Tune does to a trial ASHA stops
deadline = time.time() + 30
while not orphaned_placement_groups(job) and time.time() < deadline:
    time.sleep(0.1)
kept = placement_group_table(workers)["state"]  # Ray itself keeps it until the job ends
FreeDeadTrialsPlacementGroups(every_s=0).on_step_begin(0, [])
state = lambda pg: placement_group_table(pg)["state"]
print("RESULT", alive_orphans, kept, state(workers), state(own))
"""


def test_the_driver_frees_the_workers_of_a_killed_trial(tmp_path):
    """What lets a local ASHA sweep run without Ray Train's cleaner actors and the dashboard: once the
    actor that made a placement group is killed, the driver's callback frees that group's CPUs
    (Ray alone keeps it until the job ends), and leaves the driver's own groups alone."""
    r = subprocess.run(
        [sys.executable, "-c", PG_SCRIPT], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180
    )
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    assert line, r.stdout[-2000:] + r.stderr[-4000:]
    assert line[0].split()[1:] == ["0", "CREATED", "REMOVED", "CREATED"]


def test_asha_stops_trials_and_the_sweep_goes_on(tmp_path, shared_data):
    """ASHA on `step`: stopped trials free their Ray Train workers (no hang), finished ones still get
    their end-of-training eval, a failing arm is recorded as failed and the others run on."""
    spec = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())
    # broken: weights drawn with std 1e38 overflow float32, so its loss is NaN at step 1 on any host
    # (CPU or GPU) and training stops with NonFiniteLossError
    spec.update(
        name="asha",
        base=str(REPO / "configs" / "quickstart.yaml"),
        grid={},
        arms=[{"name": "ok", "set": {}}, {"name": "broken", "set": {"model.init_std": 1e38}}],
        control="ok",
        seeds=[0],
        scheduler={"type": "asha", "grace_period": 10, "reduction_factor": 2},
        max_failures=0,
    )
    spec["search"]["samples"] = 4  # ok: 4 trials racing through the rungs; broken: 4 trials that diverge
    spec["eval"] = {"tasks": ["blimp"], "limit": 4, "data_dir": str(shared_data / "benchmarks")}
    sweep_file = tmp_path / "asha.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    p = _start([str(sweep_file), *OVERRIDES], tmp_path, tmp_path / "asha.log")
    try:
        rc = p.wait(timeout=420)  # a leaked placement group would hang the sweep here
    finally:
        _kill_group(p)
    out = (tmp_path / "asha.log").read_text()
    assert rc == 1, out[-4000:]  # some trials failed (the broken arm), the sweep itself completed
    client, runs = _child_runs(tmp_path / "sweep_runs" / "asha")
    assert len(runs) == 8
    by_status: dict[str, list] = {}
    for r in runs:
        by_status.setdefault(r.data.tags["stlm.status"], []).append(r)
    assert {r.data.tags["stlm.arm"] for r in by_status["failed"]} == {"broken"} and len(by_status["failed"]) == 4
    for r in by_status["failed"]:
        assert r.info.status == "FAILED" and "training loss became nan at step 1" in r.data.tags["stlm.error"], (
            r.data.tags["stlm.error"]
        )
    ok = by_status.get("finished", []) + by_status.get("stopped", [])
    assert len(ok) == 4 and by_status.get("finished")
    for r in ok:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_bpb")]
        assert steps == sorted(set(steps))
        finished = r.data.tags["stlm.status"] == "finished"
        assert (max(steps) == MAX_STEPS) == finished
        assert ("eval/blimp/acc" in r.data.metrics) == finished  # stopped trials are not evaluated


def test_a_trial_with_two_workers_trains_data_parallel(tmp_path):
    """resources.workers: 2 gives a trial two Ray Train workers in one torch.distributed group: the
    tokens count both ranks' batches, rank 0's reports reach MLflow, and the trial finishes."""
    steps, batch, context = 6, 2, 32
    spec = {
        "name": "ddp",
        "config": {
            "model": {"tokenizer": "bytes", "n_layers": 1, "d_model": 32, "n_heads": 2, "context_length": context},
            "data": {"source": "generated", "max_chars": 200000, "num_proc": 1},
            "train": {
                "max_steps": steps,
                "batch_size": batch,
                "eval_interval": 3,
                "log_interval": 3,
                "eval_batches": 1,
                "warmup_steps": 1,
            },
        },
        "arms": [{"name": "ddp", "set": {}}],
        "control": "ddp",
        "seeds": [0],
        "resources": {"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0},
    }
    sweep_file = tmp_path / "ddp.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    p = _start([str(sweep_file)], tmp_path, tmp_path / "ddp.log")
    try:
        rc = p.wait(timeout=300)
    finally:
        _kill_group(p)
    assert rc == 0, (tmp_path / "ddp.log").read_text()[-4000:]
    client, [run] = _child_runs(tmp_path / "sweep_runs" / "ddp")
    assert run.data.tags["stlm.status"] == "finished"
    assert run.data.metrics["tokens"] == steps * batch * context * 2  # two ranks' batches per step
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_bpb")] == [3, 6]


def _train_workers_of(exp_dir: Path) -> list[int]:
    """PIDs of the Ray Train worker processes of this sweep's own local Ray (their environment
    points RAY_TMPDIR into the experiment directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker")
                and str(exp_dir).encode() in (proc / "environ").read_bytes()
            ):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return pids


def test_a_killed_train_worker_is_restarted_from_its_checkpoint(tmp_path):
    """A Train worker killed mid-trial (OOM killer, a bad node) costs a retry, not the trial:
    the worker group restarts from the last checkpoint, the trial finishes, and its MLflow
    history has each validation once."""
    steps = 80
    spec = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())
    spec.update(
        name="retry",
        base=str(REPO / "configs" / "quickstart.yaml"),
        grid={},
        arms=[{"name": "rope", "set": {}}],
        control="rope",
        seeds=[0],
        max_failures=1,
    )
    spec["search"]["samples"] = 1
    sweep_file = tmp_path / "retry.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    exp_dir = tmp_path / "sweep_runs" / "retry"
    p = _start([str(sweep_file), *OVERRIDES, f"train.max_steps={steps}"], tmp_path, tmp_path / "retry.log")
    try:
        # the driver has the step-10 result: Ray Train registered its checkpoint before passing it on
        _wait_for_step(p, exp_dir, 10, tmp_path / "retry.log")
        killed = _train_workers_of(exp_dir)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        assert killed, (
            "no Train worker to kill before the trial ended:\n" + (tmp_path / "retry.log").read_text()[-3000:]
        )
        rc = p.wait(timeout=300)
    finally:
        _kill_group(p)
    assert rc == 0, (tmp_path / "retry.log").read_text()[-4000:]
    client, [run] = _child_runs(exp_dir)
    assert run.data.tags["stlm.status"] == "finished"
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_step")]
    assert 10 <= max(resumed) < steps  # the restarted worker began at a checkpoint, not at step 0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_bpb")] == list(range(10, steps + 1, 10))
