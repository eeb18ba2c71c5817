"""MLflow writes of a sweep, off the Tune loop: a write-ahead outbox drained by one thread.

Every MLflow write the sweep's callback wants (a trial's run and params, each metric point, the
artifacts, the end of a run) is an operation, a small dict:

    Tune's loop      outbox.put({"kind": "metrics", "trial": tid, "step": 40, ...})
                     -> one JSON line appended to <exp>/mlflow_outbox.jsonl, then queued (no network)
    drainer thread   apply(op) in order; when the write fails for a reason that can pass (server
                     away, 5xx, timeout) the same op again after 0.5, 1, 2, 2 ... s; `apply` records the
                     op's seq in the ledger together with its effect

So a tracking server that goes away stalls nothing: trials keep training and reporting, their
points wait in the queue and in the file, and are written, in order and once, when it is back.
A server away for longer than STLM_MLFLOW_OUTAGE_S (default 600 s) stops the sweep the way Ctrl-C
does (Tune saves its state); the file keeps what was not written, and `--resume` writes it.
The in-memory queue is bounded too (MAX_PENDING ops), for a server that answers too slowly to keep up.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from stlm.errors import StlmError
from stlm.sweep.resilience import storage

OUTAGE_ENV = "STLM_MLFLOW_OUTAGE_S"
DEFAULT_OUTAGE_S = 600.0
MAX_PENDING = 200_000  # ~1 KB each: a few hundred MB at worst, hours of results at a dead server
BACKOFF_S = (0.5, 2.0)  # first retry, longest wait between retries: back within 2 s of the server
log = logging.getLogger("stlm.sweep")

_SHARED: dict[str, Outbox] = {}  # one drainer per outbox file in this process (see Outbox.shared)


def outage_limit_s() -> float:
    raw = os.environ.get(OUTAGE_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_OUTAGE_S
    except ValueError:
        value = -1.0
    if value <= 0:
        raise StlmError(
            f"{OUTAGE_ENV}={raw!r}: give the seconds an unreachable MLflow server is waited for "
            f"before the sweep stops (default {DEFAULT_OUTAGE_S:g})."
        )
    return value


def is_transient(e: BaseException) -> bool:
    """A write that may succeed later (the server is away, overloaded, restarting), as opposed to one
    MLflow refuses (4xx: a bad value, a deleted run), which is skipped rather than retried for ever."""
    # lazy: mlflow, off the light import path of resilience/
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(e, RestException):
        status = e.get_http_status_code()
        return status >= 500 or status in (408, 429)
    if isinstance(e, MlflowException):
        # request failures (connection refused, retries used up) come as INTERNAL_ERROR; SQL stores
        # raise "database is locked" the same way
        return e.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
    return isinstance(e, (OSError, TimeoutError, ConnectionError)) or "Connection" in type(e).__name__


class Outbox:
    """Ordered, persisted, retried MLflow operations; `apply(op)` does one (and records op['seq'])."""

    def __init__(
        self, path: Path, apply: Callable[[dict], None], *, done_seq: int, where: str, outage_s: float | None = None
    ):
        self.path = Path(path)
        self.where = where  # the tracking URI, for messages
        self.outage_s = outage_limit_s() if outage_s is None else outage_s
        self._apply = apply
        self._cv = threading.Condition()
        self._ops: deque[dict] = deque()
        self._seq = done_seq
        self.failing_since: float | None = None  # monotonic time of the first failed try of the head op
        self.last_error = ""
        self.skipped: list[str] = []  # ops MLflow refused (not retried)
        self.applied = 0
        self.stop_reason: str | None = None  # set when the sweep was stopped for an unreachable server
        for op in self._read():  # an earlier driver's writes that never reached MLflow
            if op["seq"] > done_seq:
                self._ops.append(op)
            self._seq = max(self._seq, op["seq"])
        self.replayed = len(self._ops)
        self._file = open(self.path, "a")
        self._stop = False
        self._thread = threading.Thread(target=self._drain, name="stlm-mlflow-outbox", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls, path: Path, apply: Callable[[dict], None], **kwargs) -> Outbox:
        """The one Outbox of `path` in this process. A resumed sweep has two callback objects (the
        driver's and the one Tune unpickles from its state): both must feed one ordered drainer."""
        key = str(Path(path).resolve())
        box = _SHARED.get(key)
        if box is None or box._stop:
            box = _SHARED[key] = cls(path, apply, **kwargs)
        return box

    def _read(self) -> list[dict]:
        ops = []
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return ops
        for line in lines:
            try:
                ops.append(json.loads(line))
            except ValueError:  # the last line of a driver killed mid-write
                continue
        return ops

    # ------------------------------------------------------------------ the Tune loop's side

    def put(self, op: dict) -> None:
        with self._cv:
            self._seq += 1
            op = {**op, "seq": self._seq}
            self._file.write(json.dumps(op, default=str) + "\n")
            self._file.flush()  # survives a killed driver (not a lost machine); no fsync in the Tune loop
            self._ops.append(op)
            self._cv.notify_all()

        storage.changed(self.path)  # an object-store experiment dir: uploaded within seconds

    def pending(self) -> int:
        with self._cv:
            return len(self._ops)

    def outage_s_so_far(self) -> float:
        since = self.failing_since
        return 0.0 if since is None else time.monotonic() - since

    def overdue(self) -> str | None:
        """Why the sweep must stop (a server away too long, a queue too long), or None."""
        if self.outage_s_so_far() > self.outage_s:
            return (
                f"the MLflow tracking server at {self.where} has not accepted a write for "
                f"{self.outage_s_so_far():.0f} s ({OUTAGE_ENV}={self.outage_s:g}); last error: {self.last_error}"
            )
        if self.pending() > MAX_PENDING:
            return f"{self.pending()} MLflow writes are waiting for {self.where}, more than {MAX_PENDING}"
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """Until every queued op is written (True), the outage limit passes, or `timeout` (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._ops:
                if self.outage_s_so_far() > self.outage_s:
                    return False
                left = 1.0 if end is None else min(1.0, end - time.monotonic())
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=5)
        self._file.close()

    # ------------------------------------------------------------------ the drainer thread

    def _drain(self) -> None:
        wait = BACKOFF_S[0]
        while True:
            with self._cv:
                while not self._ops and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                op = self._ops[0]
            try:
                self._apply(op)
            except Exception as e:
                if is_transient(e):
                    with self._cv:
                        if self.failing_since is None:
                            self.failing_since = time.monotonic()
                            log.warning(
                                "MLflow at %s unreachable (%s); trials go on, their results are kept "
                                "and written when it is back",
                                self.where,
                                _first_line(e),
                            )
                        self.last_error = _first_line(e)
                        self._cv.wait(wait)  # close() wakes it
                    wait = min(2 * wait, BACKOFF_S[1])
                    continue
                self.skipped.append(f"{op.get('kind')} {op.get('trial', '')}: {_first_line(e)}")
                log.warning("MLflow refused %s (%s); skipped", op.get("kind"), _first_line(e))
            with self._cv:
                if self.failing_since is not None:
                    log.warning(
                        "MLflow at %s is back after %.0f s; writing the %d results kept meanwhile",
                        self.where,
                        self.outage_s_so_far(),
                        len(self._ops),
                    )
                self.failing_since, wait = None, BACKOFF_S[0]
                self._ops.popleft()
                self.applied += 1
                if not self._ops:  # everything is in MLflow (and its seq in the ledger): start the file afresh
                    self._file.truncate(0)

                    storage.changed(self.path)
                self._cv.notify_all()


def settle_all(timeout_s: float) -> None:
    """Before a driver exits at once (its Ray cluster lost): the queued writes land for up to `timeout_s`,
    then every drainer of this process stops, so no other thread writes the ledger after the caller; the
    writes still queued stay in their outbox file for --resume."""
    for box in list(_SHARED.values()):
        box.wait(timeout_s)
        box.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"
