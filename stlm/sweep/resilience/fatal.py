"""A trial error no retry can fix, recorded by the worker in trials/<id>/fatal_error.json for the Tune trial to fail with.
"""

from __future__ import annotations

from stlm.sweep.resilience import layout

import json
from pathlib import Path



def write_fatal(trial_dir: Path, e: Exception) -> None:
    from stlm.atomic import write_atomic

    trial_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(trial_dir / layout.FATAL, json.dumps({"type": type(e).__name__, "message": str(e)}))


def read_fatal(trial_dir: Path, st=None) -> dict | None:
    """The fatal error a worker recorded (st in an object store: the bucket's copy, written on a node)."""
    if st is not None and st.remote:
        from stlm.sweep.resilience.storage import read_json

        return read_json(st, layout.trial(trial_dir.name, layout.FATAL))
    try:
        return json.loads((trial_dir / layout.FATAL).read_text())
    except (OSError, ValueError):
        return None
