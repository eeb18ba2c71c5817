"""SIGINT and SIGTERM end a command the same way, within a bounded time.

    guard = Interrupts.install(grace_s=12)     # in main(), before any work
    guard.on_force_exit(lambda: end_parent_run("KILLED"))
    with guard.tune_running():                  # Ray Tune stops gracefully (and saves) on the first signal
        tuner.fit()

The first SIGINT or SIGTERM raises KeyboardInterrupt in the main thread (the CLI prints
"interrupted" and exits 130, every `finally` and `except KeyboardInterrupt` on the way runs),
or, while Ray Tune runs, asks Tune to stop and save its experiment state (what Tune's own SIGINT
handler does, here driven by SIGTERM too: `kill` and schedulers send SIGTERM). A second signal
raises KeyboardInterrupt at once. If the process is still alive `grace_s` seconds after the
first signal, a watchdog thread runs the force-exit hooks (mark the MLflow run KILLED) and
exits with status 130: a driver never outlives a stop request by more than a few seconds.

A KeyboardInterrupt raised while a finalizer runs (a weakref callback, a `__del__`, SQLAlchemy
tidying its class registry) is only printed by Python as "Exception ignored in ...", and the command
would run on until the watchdog. sys.unraisablehook catches that case and raises it again in the
main thread, as a second signal would.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

GRACE_S = 12.0  # the bound is 15 s from the signal to the driver's exit


class Interrupts:
    _installed: Interrupts | None = None

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.hooks: list[Callable[[], None]] = []
        self.signals = 0
        self.last_signal = signal.SIGINT
        self.in_tune = False
        self._watchdog: threading.Timer | None = None

    @classmethod
    def install(cls, grace_s: float = GRACE_S) -> Interrupts:
        """Handle SIGINT and SIGTERM in this (main-thread) process; idempotent."""
        if cls._installed is None:
            cls._installed = cls(grace_s)
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, cls._installed._handle)
                # Tune's own SIGINT handler would take Ctrl-C away from us; its SIGUSR1 one is used instead
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
                sys.unraisablehook = cls._installed._unraisable(sys.unraisablehook)
        return cls._installed

    def reclaim(self) -> None:
        """Take SIGINT/SIGTERM back after ray.init, whose core worker installs a C++ failure handler
        that aborts the driver on SIGTERM (a core dump's worth of stack, no cleanup)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def on_force_exit(self, hook: Callable[[], None]) -> None:
        self.hooks.append(hook)

    @contextlib.contextmanager
    def tune_running(self):
        self.in_tune = True
        try:
            yield
        finally:
            self.in_tune = False

    def _handle(self, sig, frame) -> None:
        self.signals += 1
        self.last_signal = sig
        name = signal.Signals(sig).name
        if self.signals == 1:
            self._watchdog = threading.Timer(self.grace_s, self._force_exit, args=(name,))
            self._watchdog.daemon = True
            self._watchdog.start()
            tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
            if self.in_tune and callable(tune_stop):
                print(
                    f"\n{name}: stopping the sweep (Tune saves its state; a second signal stops at once).",
                    file=sys.stderr,
                    flush=True,
                )
                tune_stop(signal.SIGUSR1, frame)  # Tune's handler: stop, checkpoint the experiment, return
                return
        raise KeyboardInterrupt(name)

    def _unraisable(self, previous):
        def hook(info) -> None:
            if isinstance(info.exc_value, KeyboardInterrupt) and self.signals:
                # our interrupt landed in a finalizer, which swallows it: deliver it again a moment later
                # from another thread, once the finalizer has returned (raised here, it would be swallowed
                # too; and Thread.start waits, where the signal would land again)
                _thread.start_new_thread(self._deliver_again, ())
                return
            previous(info)

        return hook

    def _deliver_again(self) -> None:
        time.sleep(0.05)
        _thread.interrupt_main(self.last_signal)

    def _force_exit(self, name: str) -> None:
        print(f"\n{name} {self.grace_s:.0f} s ago and still running: exiting now.", file=sys.stderr, flush=True)
        self.run_hooks()
        os._exit(130)

    def run_hooks(self) -> None:
        """The force-exit hooks, before an os._exit (here, or when a sweep's Ray cluster is lost)."""
        for hook in self.hooks:
            try:
                hook()
            except Exception as e:  # noqa: BLE001 - exiting anyway; say what was not recorded
                print(f"(while exiting: {type(e).__name__}: {e})", file=sys.stderr, flush=True)
