"""A local Ray's processes end with the sweep driver that started them, however it ends (kill -9 too).

ray.init starts the GCS, the raylet and Ray's monitors with PR_SET_PDEATHSIG, so they die with the
driver, and the workers follow their raylet within about 2 s. The raylet's agents (dashboard agent,
runtime-env agent) do not: they wait for the GCS for Ray's gcs_rpc_server_reconnect_timeout_s (60 s)
first. Measured on 2 cores: alive 60.3 s after a kill -9 of the driver mid-trial, and 60.5 s after a
driver that lost its GCS exited.

So before a local Ray starts, the driver starts a watcher: a small process that holds the read end of a
pipe whose write end only the driver holds. Meanwhile it notes the driver's descendants, every 0.25 s
while Ray starts, every 5 s after 30 s; however the driver ends (return, os._exit, kill -9), the read
returns end-of-file, and the watcher SIGKILLs the descendants it noted and every process whose
environment carries the driver's mark (MARKER_ENV: the experiment directory and a token of this driver,
set before Ray starts, so every Ray process inherits it; a worker started after the last note is found
by it), then exits, within a second of the driver. Both are needed: Ray's agents overwrite their
environment with their process title, and a worker's parent, the raylet, is gone with the driver.

Only the standard library: the watcher runs this file as a script (`python -I reaper.py MARK PID`) and
is up in milliseconds, without stlm's, torch's or Ray's imports. Linux (it reads /proc); elsewhere a no-op.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARKER_ENV = "STLM_SWEEP_RAY"  # "<experiment dir>#<token>": tests find a sweep's processes by the directory
# the descendants noted every 0.25 s while Ray starts (a scan: 1.3 ms on 2 idle cores, 12 ms at load 9), then every 5 s
NOTE_S, NOTE_SLOW_S, NOTE_FAST_FOR_S = 0.25, 5.0, 30.0
REAP_S = 10.0  # a raylet could start a worker between two passes: kill until a pass finds none, this long at most

_tie: tuple[subprocess.Popen, int] | None = None  # the watcher and the pipe's write end, held until exit


def tie_to_this_process(exp_dir: Path) -> str:
    """Mark this process's environment for the Ray it is about to start and start the watcher that reaps
    this process's descendants and what carries the mark once it is gone; the mark ("" without /proc)."""
    global _tie
    if _tie is not None:
        return os.environ[MARKER_ENV]
    if not Path("/proc/self/environ").is_file():
        return ""
    mark = f"{Path(exp_dir).resolve()}#{uuid.uuid4().hex[:12]}"
    read_end, write_end = os.pipe()  # not inheritable: Ray's processes, exec'd, never hold the write end
    watcher = subprocess.Popen(
        [sys.executable, "-I", __file__, mark, str(os.getpid())],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or a kill of the driver's process group leaves it to do its job
    )
    os.close(read_end)
    _tie = (watcher, write_end)
    os.environ[MARKER_ENV] = mark  # after the watcher started: it does not carry the mark itself
    return mark


def marked(mark: str) -> list[int]:
    """The live processes whose environment carries `mark` (a zombie's environment reads empty)."""
    entry = f"{MARKER_ENV}={mark}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if entry in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def _stat(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ..., [19] start time)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[int, bytes]:
    """pid -> start time of every live process below `root` (but this one)."""
    children: dict[int, list[tuple[int, bytes]]] = {}
    for name in os.listdir("/proc"):
        stat = _stat(int(name)) if name.isdigit() else None
        if stat and stat[0] != b"Z":
            children.setdefault(int(stat[1]), []).append((int(name), stat[19]))
    found, todo = {}, [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            if pid != os.getpid() and pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def reap(mark: str, noted: dict[int, bytes], limit_s: float = REAP_S) -> int:
    """SIGKILL the `noted` processes (pid -> start time: the same process, not a pid used again) and every
    process carrying `mark` but this one, until none is left; how many were killed."""
    killed = 0
    for pid, started in noted.items():
        stat = _stat(pid)
        killed += bool(stat and stat[19] == started and _kill(pid))
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        left = [pid for pid in marked(mark) if pid != os.getpid()]
        if not left:
            break
        killed += sum(_kill(pid) for pid in left)
        time.sleep(0.1)
    return killed


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except OSError:  # exited meanwhile
        return False


def _watch(mark: str, driver: int) -> None:
    """The watcher: note the driver's descendants until it is gone, then reap them and its Ray."""
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's Ctrl-C or hang-up is the driver's to handle
        signal.signal(sig, signal.SIG_IGN)
    noted: dict[int, bytes] = {}
    start = time.monotonic()
    while True:
        every = NOTE_S if time.monotonic() - start < NOTE_FAST_FOR_S else NOTE_SLOW_S
        if select.select([0], [], [], every)[0] and not os.read(0, 4096):
            break  # end of file: the driver's write end is closed, the driver is gone
        if os.getppid() != driver:  # re-parented: gone too (never note the tree of its new parent)
            break
        noted = descendants(driver)
    reap(mark, noted)


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]))
