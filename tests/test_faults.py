"""Faults a sweep must survive without losing or duplicating anything (issue 20).

Fast: the experiment-directory lock (refusal naming host and pid, take-over from a dead driver, the
content rules for filesystems without shared locks), atomic writes on a full disk, the token-shard
bounds check. Slow (real CLI, Ray, MLflow): see the end-to-end tests below.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stlm.errors import StlmError
from stlm.sweep import lock

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from stlm.sweep.lock import hold
hold(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def _holder(exp_dir: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(exp_dir)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_driver_is_refused_and_a_dead_drivers_successor_takes_over(tmp_path):
    exp_dir = tmp_path / "sweep_runs" / "quick"
    owner = _holder(exp_dir)
    try:
        with pytest.raises(StlmError) as e:
            lock.hold(exp_dir)
        msg = str(e.value)
        assert f"pid {owner.pid} on host {socket.gethostname()!r}" in msg and str(exp_dir) in msg
        assert "\n" not in msg
    finally:
        owner.send_signal(signal.SIGKILL)  # the driver dies without cleaning up: the file stays behind
        owner.wait()
    assert json.loads(lock.lock_path(exp_dir).read_text())["pid"] == owner.pid
    mine = lock.hold(exp_dir)  # its successor takes over
    try:
        assert json.loads(lock.lock_path(exp_dir).read_text())["pid"] == os.getpid()
        assert lock.hold(exp_dir) is mine  # the same driver asking again
    finally:
        mine.release()
    assert lock.lock_path(exp_dir).read_text() == ""  # released: the next driver starts without a question


def test_without_shared_locks_the_file_content_decides(tmp_path):
    """NFS mounted with nolock: a record lock proves nothing across hosts, so the content decides."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        alive = {"host": socket.gethostname(), "pid": sleeper.pid, "boot_id": lock._boot_id(),
                 "start_ticks": lock._start_ticks(sleeper.pid)}
        now = time.time()
        assert lock.owner_alive(alive, now)
        assert not lock.owner_alive({**alive, "start_ticks": alive["start_ticks"] + 1}, now)  # pid reused since
        assert not lock.owner_alive({**alive, "boot_id": "another-boot"}, now)
        other = {"host": "node-7", "pid": 1234}
        assert lock.owner_alive(other, now - 10, now=now)  # heartbeat 10 s old: alive
        assert not lock.owner_alive(other, now - lock.STALE_S - 1, now=now)  # no heartbeat: dead
        # a live owner's file without any record lock on it (as on a nolock mount) still refuses
        exp_dir = tmp_path / "exp"
        lock.lock_path(exp_dir).write_text(json.dumps(alive))
        with pytest.raises(StlmError, match=f"pid {sleeper.pid} on host"):
            lock.hold(exp_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.hold(exp_dir).release()  # and once it is dead, the directory is free


def test_the_ledger_survives_a_full_disk(tmp_path, monkeypatch):
    from stlm.atomic import DiskFullError
    from stlm.sweep.tracking import Ledger

    ledger = Ledger(tmp_path)
    ledger.trials["t1"] = {"run_id": "r1", "last_step": 10}
    ledger.save()
    ledger.trials["t1"]["last_step"] = 20

    def full(fd):  # where a full disk (or NFS quota) shows up for a small write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match=r"mlflow_state.json is full: .* free.*--resume"):
        ledger.save()
    monkeypatch.undo()
    assert Ledger(tmp_path).trials["t1"]["last_step"] == 10  # the last complete state, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow_state.json"]  # no temp file left
