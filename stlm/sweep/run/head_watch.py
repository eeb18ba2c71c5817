"""A sweep whose Ray cluster goes away (its GCS or head killed) stops within --head-timeout seconds, saying so.

Left to Ray, the driver's Ray client waits gcs_rpc_server_reconnect_timeout_s (60 s) for a lost GCS,
then ends the process with "Failed to connect to GCS within 60 seconds ... The program will terminate":
exit 1, no word from stlm, no --resume hint. Instead a daemon thread asks the GCS every PROBE_S seconds
whether it is there, and once it has not answered for the limit the driver
  1. lets the MLflow writes already queued land (briefly) and stops the outbox's writer, so no other
     thread writes the ledger after this one;
  2. runs the force-exit hooks (the trial runs left RUNNING and the parent run marked KILLED, as when a
     stop request runs out of time); 1 and 2 within CLEANUP_S, should the tracking server be gone too;
  3. prints one paragraph: what was lost, that nothing finished is lost, the command that continues;
  4. exits with LOST_EXIT at once (os._exit: Ray's own shutdown would wait on the dead GCS); the local
     Ray's remaining processes are reaped as the driver exits (reaper.py).
The experiment directory is then as a kill -9 of the driver leaves it, which --resume continues from:
Tune's last saved state, Ray Train's registered checkpoints, the ledger and the outbox file.

The probe is an HTTP/2 client preface sent to the GCS's gRPC port. A live server answers with a
SETTINGS frame at once; a killed one refuses the connection; a frozen one (SIGSTOP) or a dead machine
lets the connect or the answer time out. (A bare TCP connect takes a frozen GCS for a live one: its
kernel still accepts.) With RAY_USE_TLS the port speaks TLS first, and the TCP connect is the probe.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from stlm.sweep.resilience.outbox import settle_all

DEFAULT_LIMIT_S = 30.0  # --head-timeout: how long the head may be silent before the sweep stops
PROBE_S = 2.0  # how often the GCS is asked; also the longest a probe waits for its answer
CLEANUP_S = 5.0  # steps 1 and 2 above, at most
LOST_EXIT = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; the same command with --resume continues

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS
SETTINGS = 4  # the frame type a gRPC server sends first


def gcs_problem(host: str, port: int, timeout: float) -> str | None:
    """None when the GCS at host:port answers within `timeout` seconds, else what happened instead."""
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if os.environ.get("RAY_USE_TLS", "0").lower() not in ("0", "false", ""):
                return None  # TLS first: the connect is all a probe can ask without Ray's certificates
            s.settimeout(max(0.05, timeout - (time.monotonic() - start)))
            s.sendall(HTTP2_PREFACE)
            frame = b""
            while len(frame) < 9:
                chunk = s.recv(9 - len(frame))
                if not chunk:
                    break
                frame += chunk
    except OSError as e:  # refused, timed out, unreachable, reset
        return f"{type(e).__name__}: {e}"
    if len(frame) < 4 or frame[3] != SETTINGS:
        return f"no gRPC answer (got {frame!r})"
    return None


def watch(host: str, port: int, limit_s: float, on_lost: Callable[[str, float], None], probe_s: float = PROBE_S):
    """Start a daemon thread that calls on_lost(problem, seconds silent) once the GCS at host:port has
    not answered for `limit_s` seconds (at most limit_s after the last answer, give or take 0.1 s)."""

    def loop() -> None:
        last_ok = time.monotonic()
        while True:
            left = last_ok + limit_s - time.monotonic()
            problem = gcs_problem(host, port, timeout=min(probe_s, max(0.1, left)))
            now = time.monotonic()
            if problem is None:
                last_ok = now
            elif now - last_ok >= limit_s:
                on_lost(problem, now - last_ok)
                return
            time.sleep(probe_s if problem is None else min(probe_s, max(0.0, last_ok + limit_s - now)))

    thread = threading.Thread(target=loop, name="stlm-head-watch", daemon=True)
    thread.start()
    return thread


def watch_cluster(limit_s: float, *, address: str | None, resume_cmd: str, guard) -> None:
    """Watch the GCS of the Ray this driver is connected to; lost: stop the sweep as described above."""
    import ray  # lazy: the driver calls this once Ray is up

    if address and address.startswith("ray://"):  # Ray Client: its server on the head (gRPC too) is what answers
        gcs = address.split("://", 1)[1].rstrip("/")
        gcs = gcs if gcs.rpartition(":")[2].isdigit() else f"{gcs}:10001"
    else:
        gcs = ray.get_runtime_context().gcs_address
    host, _, port = gcs.rpartition(":")
    what = (
        f"the Ray cluster at {address!r} is gone: its head (GCS at {gcs})"
        if address
        else f"the sweep's local Ray is gone: its GCS (at {gcs})"
    )

    def stop(problem: str, silent_s: float) -> None:
        done = threading.Thread(target=_end_runs, args=(guard,), name="stlm-head-lost-cleanup", daemon=True)
        done.start()
        done.join(CLEANUP_S)
        again = "Once the cluster is back (`ray up`, or `ray start --head`), continue" if address else "Continue"
        print(
            f"\nerror: Stopped: {what} has not answered for {silent_s:.0f} s ({problem}). Nothing finished is "
            "lost: finished trials keep their results and MLflow runs, and unfinished ones continue from their "
            f"last checkpoint. {again} the sweep with:\n  {resume_cmd}\n(exit status {LOST_EXIT}; --head-timeout "
            f"sets how long the head may be silent, now {limit_s:g} s"
            + ("" if not done.is_alive() else f"; the MLflow runs were not ended within {CLEANUP_S:g} s: --resume does")
            + ")",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(LOST_EXIT)

    watch(host.strip("[]"), int(port), limit_s, stop)


def _end_runs(guard) -> None:
    settle_all(timeout_s=2.0)  # the ledger has one writer from here on
    if guard is not None:
        guard.run_hooks()
