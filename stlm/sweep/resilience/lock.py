"""One driver per experiment directory: `<exp_dir>.lock`, held from the moment a driver owns the directory.

    hold(exp_dir)          # in the driver, before it deletes (--overwrite) or writes anything there

The lock file sits beside the directory (so --overwrite can delete the directory while holding it)
and says who holds it: {"host", "pid", "boot_id", "start_ticks", "started", "command"}. A second
driver is refused with a message naming that host and pid. A driver that died leaves the file
behind; its successor takes it over once it is sure the owner is gone:

- POSIX record lock (fcntl.lockf) on the file, held for the driver's life: the kernel (or the NFS
  server's lock manager) drops it when the process dies, however it dies. Record locks are not
  inherited by child processes, so Ray's processes outliving a killed driver do not keep it.
- The file's content, for filesystems where that lock is not shared (NFS mounted with `nolock`):
  on the same host the owner is alive if its pid runs with the same start time since the same boot
  (a reused pid is not mistaken for it); on another host, if the file's heartbeat (its mtime,
  touched every HEARTBEAT_S) is younger than STALE_S.
A take-over rewrites the content and reads it back: of two successors racing, one wins.

An experiment directory in an object store (s3://bucket/prefix) has no record locks at all: its lock
is the object `<prefix>.lock` with the same content, its heartbeat a rewrite of the object every
HEARTBEAT_S (ObjectLock). Best effort: two drivers starting within the same fraction of a second on
different hosts could both believe they won; one after the other, the second is refused.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from stlm.errors import StlmError
from stlm.sweep.resilience import layout, storage
from stlm.sweep.resilience.storage import read_json

HEARTBEAT_S = 20.0
STALE_S = 90.0  # a lock untouched this long on another host belongs to a dead driver

_held: dict[str, DriverLock] = {}  # lock path -> the lock this process holds (kept open for its life)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def me() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot_id": _boot_id(),
        "start_ticks": _start_ticks(os.getpid()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv)[:300],
    }


def owner_alive(owner: dict, mtime: float, *, host: str | None = None, now: float | None = None) -> bool:
    """Whether the driver named in a lock file may still be running (pure logic; see the module doc)."""
    host = host or socket.gethostname()
    now = time.time() if now is None else now
    if not owner or "pid" not in owner:
        return False
    if owner.get("host") != host:
        return now - mtime < STALE_S
    if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
        return False  # the machine rebooted since
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    ticks = _start_ticks(pid)
    return owner.get("start_ticks") is None or ticks is None or ticks == owner["start_ticks"]


def describe(owner: dict) -> str:
    return (
        f"pid {owner.get('pid')} on host {owner.get('host')!r}"
        + (f", started {owner['started']}" if owner.get("started") else "")
        + (f" ({owner['command']})" if owner.get("command") else "")
    )


def take_over(lock, settle_s: float) -> dict:
    """The content rule both locks share: refuse a live owner other than this process, else write
    this process as the owner, wait `settle_s` and read it back (a successor that wrote at the same
    moment wins or loses here, never both). `lock` has _read() -> (owner, last beat), _write, _refuse."""
    owner, beat = lock._read()
    if (
        owner
        and (owner.get("host"), owner.get("pid")) != (socket.gethostname(), os.getpid())
        and owner_alive(owner, beat)
    ):
        raise lock._refuse(owner)
    mine = me()
    lock._write(mine)
    time.sleep(settle_s)
    now = lock._read()[0]
    if (now.get("host"), now.get("pid")) != (mine["host"], mine["pid"]):
        raise lock._refuse(now)  # another successor took it over at the same moment
    return mine


class DriverLock:
    def __init__(self, exp_dir: str | os.PathLike):
        self.exp_dir = Path(exp_dir).resolve()
        self.path = layout.lock_path(self.exp_dir)
        self.fd: int | None = None
        self._stop = threading.Event()

    def _read(self) -> tuple[dict, float]:
        try:
            st = os.fstat(self.fd)
            os.lseek(self.fd, 0, os.SEEK_SET)
            raw = os.read(self.fd, 1 << 16)
            return (json.loads(raw) if raw.strip() else {}), st.st_mtime
        except (OSError, ValueError):
            return {}, 0.0

    def _refuse(self, owner: dict) -> StlmError:
        return StlmError(
            f"The experiment directory {self.exp_dir} is in use by another sweep driver: {describe(owner)}. "
            f"Only one driver may run a sweep at a time (the lock is {self.path}). Wait for it to finish, stop it "
            "(Ctrl-C, or kill that pid; then continue with --resume), or choose another --experiment-dir."
        )

    def acquire(self) -> DriverLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._acquire()
        except BaseException:
            os.close(self.fd)
            self.fd = None
            raise
        threading.Thread(target=self._heartbeat, name="stlm-lock-heartbeat", daemon=True).start()
        atexit.register(self.release)
        return self

    def _acquire(self) -> None:

        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):  # held: the owner is alive
                raise self._refuse(self._owner()) from None
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # no shared record locks here (NFS mounted with nolock): the content alone decides
        take_over(self, settle_s=0.05)

    def _owner(self, wait_s: float = 2.0) -> dict:
        """The holder, as it wrote itself: a driver that took the lock a moment ago writes its pid just after
        (take_over), so an empty lock is read again for up to `wait_s` before it is called a starting driver."""
        deadline = time.monotonic() + wait_s
        while True:
            owner = self._read()[0]
            if owner.get("pid") or time.monotonic() > deadline:
                return owner or {"pid": "(not written yet)", "host": f"{socket.gethostname()} (a driver starting now)"}
            time.sleep(0.05)

    def _write(self, data: dict) -> None:
        raw = json.dumps(data).encode()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, raw)
        os.fsync(self.fd)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError, TypeError):
                os.utime(self.fd)

    def release(self) -> None:
        """Empty the file and unlock it (it stays: unlinking a locked file lets two drivers in)."""
        if self.fd is None:
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the record lock
        self.fd = None
        _held.pop(str(self.path), None)


class ObjectLock:
    """The lock of an experiment directory in an object store: `<prefix>.lock`, whose content says who
    holds it and when it last beat (see the module doc)."""

    def __init__(self, store):

        prefix, _, name = store.uri.rpartition("/")
        self.uri = store.uri
        self.store = storage.Storage(prefix, bucket_ok=True)  # beside the directory: --overwrite deletes that
        self.rel = f"{name}.lock"
        self._stop = threading.Event()

    def _read(self) -> tuple[dict, float]:

        owner = read_json(self.store, self.rel) or {}
        return owner, float(owner.get("heartbeat", 0.0))

    def _write(self, data: dict) -> None:
        self.store.write_bytes(self.rel, json.dumps({**data, "heartbeat": time.time()}).encode() if data else b"")

    def acquire(self) -> ObjectLock:
        self.mine = take_over(self, settle_s=0.5)
        threading.Thread(target=self._heartbeat, name="stlm-lock-heartbeat", daemon=True).start()
        atexit.register(self.release)
        return self

    def _refuse(self, owner: dict) -> StlmError:
        return StlmError(
            f"The experiment directory {self.uri} is in use by another sweep driver: {describe(owner)}. Only one "
            f"driver may run a sweep at a time (the lock is {self.store.uri}/{self.rel}, which that driver rewrites "
            f"every {HEARTBEAT_S:g} s; it counts as gone {STALE_S:g} s after its last beat). Wait for it to finish, "
            "stop it (then continue with --resume), or choose another --experiment-dir."
        )

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                self._write(self.mine)

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            self._write({})


def hold(exp_dir: str | os.PathLike, store=None) -> DriverLock:
    """Take the experiment directory's lock for the rest of this process (idempotent), or raise a
    StlmError naming the driver that holds it. With `store` in an object store, exp_dir is its mirror
    (locked as a local directory) and the bucket's lock object is taken too."""
    path = str(layout.lock_path(exp_dir))
    if path not in _held:
        _held[path] = DriverLock(exp_dir).acquire()
    if store is not None and store.remote and store.uri not in _held:
        _held[store.uri] = ObjectLock(store).acquire()
    return _held[path]
