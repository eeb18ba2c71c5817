"""A trial's errors: the one no retry can fix (trials/<id>/fatal_error.json, written by the worker for the Tune
trial to fail with), and the text of any failed trial's error (for MLflow and the disk guard)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from stlm.atomic import write_atomic
from stlm.sweep.resilience import layout
from stlm.sweep.resilience.low_memory import low_memory
from stlm.sweep.resilience.storage import read_json

ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*?:")


def write_fatal(trial_dir: Path, e: Exception) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(trial_dir / layout.FATAL, json.dumps({"type": type(e).__name__, "message": str(e)}))


def read_fatal(trial_dir: Path, store=None) -> dict | None:
    """The fatal error a worker recorded (store in an object store: the bucket's copy, written on a node)."""
    if store is not None and store.remote:
        return read_json(store, layout.trial(trial_dir.name, layout.FATAL))
    try:
        return json.loads((trial_dir / layout.FATAL).read_text())
    except (OSError, ValueError):
        return None


def error_text(trial) -> str:
    """'ExceptionType: message' of a failed Tune trial (first line; for a trial Ray's memory monitor killed, that
    and the node's figures), then the tail of its traceback."""
    path = getattr(trial, "error_file", None)
    text = ""
    try:
        if path and Path(path).is_file():
            text = re.sub(r"\x1b\[[0-9;]*m", "", Path(path).read_text())
    except OSError:
        pass
    if not text:
        return "trial failed (no error text recorded)"
    causes = [ln.strip() for ln in text.splitlines() if ERROR_LINE.match(ln.strip())]
    head = low_memory(text) or (causes[-1] if causes else text.strip().splitlines()[-1])
    return f"{head}\n\n{text[-3000:]}"
