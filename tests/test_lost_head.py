"""A lost Ray head (issue 28, item 3): the sweep notices, says so in one paragraph with the --resume command,
exits 75, and leaves no process behind, however its driver ends.

Fast: the GCS probe against a live, a frozen and a closed port; the reaper against a fake driver killed
with kill -9. Slow (real CLI, Ray, MLflow): the sweep's own gcs_server killed mid-trial, then --resume.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stlm.sweep.run import head_watch, reaper

REPO = Path(__file__).resolve().parents[1]
LINGER_S = 15  # the bound: no process of the sweep outlives its driver by more than this


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _left_after(pids, seconds: float) -> list[int]:
    """The pids still alive (zombies are not) once they are all gone or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def test_the_gcs_probe_tells_a_live_server_from_a_frozen_or_closed_one():
    """A gRPC server answers an HTTP/2 preface with a SETTINGS frame; a frozen GCS's kernel still accepts
    the connection but nothing answers, which a bare TCP connect would take for alive."""
    live, frozen = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()

    def answer() -> None:
        conn, _ = live.accept()
        with conn:
            conn.recv(len(head_watch.HTTP2_PREFACE))
            conn.sendall(bytes([0, 0, 0, head_watch.SETTINGS, 0, 0, 0, 0, 0]))

    threading.Thread(target=answer, daemon=True).start()
    try:
        assert head_watch.gcs_problem("127.0.0.1", live.getsockname()[1], timeout=5) is None
        assert "timed out" in head_watch.gcs_problem("127.0.0.1", frozen.getsockname()[1], timeout=0.5)
        assert "ConnectionRefusedError" in head_watch.gcs_problem("127.0.0.1", closed_port, timeout=2)
    finally:
        live.close()
        frozen.close()


FAKE_DRIVER = """
import subprocess, sys, time
from stlm.sweep.run import reaper
reaper.tie_to_this_process(sys.argv[1])
child = subprocess.Popen(["sleep", "300"])  # carries the mark and is a descendant
# its parent exits at once: carries the mark only
orphan = subprocess.run(["sh", "-c", "sleep 300 > /dev/null 2>&1 & echo $!"], capture_output=True, text=True)
bare = subprocess.Popen(["env", "-i", "sleep", "300"])  # no environment (Ray's agents overwrite theirs): a descendant
print(child.pid, orphan.stdout.strip(), bare.pid, flush=True)
time.sleep(300)
"""


def test_processes_tied_to_a_driver_end_with_its_kill_9(tmp_path):
    """What a local sweep's Ray gets (reaper.py): after a kill -9 of the driver, its child, an orphaned
    process that only carries its mark and a child without any environment are all killed, and the
    watcher exits too."""
    driver = subprocess.Popen(
        [sys.executable, "-c", FAKE_DRIVER, str(tmp_path / "exp")],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    pids = [int(p) for p in driver.stdout.readline().split()]
    watcher = [
        int(d.name)
        for d in Path("/proc").iterdir()
        if d.name.isdigit() and f"reaper.py\0{tmp_path / 'exp'}#".encode() in (d / "cmdline").read_bytes()
    ]
    try:
        assert len(pids) == 3 and all(_alive(p) for p in pids) and len(watcher) == 1
        time.sleep(2 * reaper.NOTE_S)  # the watcher notes the driver's descendants every NOTE_S
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        assert _left_after(pids + watcher, LINGER_S) == []
    finally:
        for pid in pids + [driver.pid]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_gcs_stops_the_sweep_with_its_resume_command(tmp_path):
    """The sweep's own gcs_server killed (-9) mid-trial, with --head-timeout 8: the driver exits 75 within
    30 s with one paragraph (what was lost, nothing finished lost, the --resume command) and its runs
    KILLED, not Ray's "Failed to connect to GCS" after 60 s; no process of the sweep (Ray's agents
    included) is alive 15 s later; the printed command finishes the sweep with one run per cell."""
    from test_faults import _check_sweep, _fault_sweep, _processes_of
    from test_sweep_e2e import _child_runs, _env, _kill_group, _start, _wait_for_step, live_pids

    sweep = _fault_sweep(tmp_path, "lost", [{"name": "ok", "set": {}}])
    exp_dir = tmp_path / "sweep_runs" / "lost"
    log = tmp_path / "first.log"
    p = _start([str(sweep), "--head-timeout", "8"], tmp_path, log)
    try:
        _wait_for_step(p, exp_dir, 10, log)
        ours = set(_processes_of(exp_dir)) | set(live_pids("session", p.pid))  # the agents: by session
        gcs = [pid for pid in ours if b"gcs_server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(gcs) == 1, sorted(ours)
        os.kill(gcs[0], signal.SIGKILL)
        t_kill = time.monotonic()
        rc = p.wait(timeout=90)
        noticed_s = time.monotonic() - t_kill
        ours |= set(_processes_of(exp_dir)) | set(live_pids("session", p.pid))
        left = _left_after(ours - {p.pid}, LINGER_S)
    finally:
        _kill_group(p)
    out = log.read_text()
    print(f"lost GCS: the driver exited {noticed_s:.1f}s after the kill, status {rc}")
    assert rc == head_watch.LOST_EXIT and noticed_s <= 30, (rc, noticed_s, out[-3000:])
    said = out[out.index("error: Stopped: the sweep's local Ray is gone") :]
    silent = re.search(r"has not answered for (\d+) s \(ConnectionRefusedError", said)
    assert silent and 8 <= int(silent[1]) <= 30 and "Nothing finished is lost" in said, said
    assert "Traceback" not in out and "Failed to connect to GCS" not in out, out[-3000:]
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] for pid in left]
    client, runs = _child_runs(exp_dir)
    info = json.loads((exp_dir / "sweep.json").read_text())
    assert client.get_run(info["parent_run_id"]).info.status == "KILLED"
    assert [r for r in runs if r.info.status == "RUNNING"] == []

    command = said.split("Continue the sweep with:\n")[1].splitlines()[0].strip()
    assert command.endswith(f"--resume --experiment-dir {exp_dir}"), command
    again = subprocess.run(
        [sys.executable, *command.split()[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=400, env=_env()
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _check_sweep(exp_dir, "ok")  # one FINISHED run per cell, each eval step once, a report, nothing left running
