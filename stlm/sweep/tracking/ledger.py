"""The ledger: trial id -> MLflow run and last logged step, kept in the experiment directory."""

from __future__ import annotations

import json
from pathlib import Path

from stlm.atomic import write_atomic
from stlm.sweep.resilience import layout, storage


def _write_json(path: Path, data: dict) -> None:
    """Atomic and durable (temp + fsync + rename); a full disk is a DiskFullError naming the path."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))


class Ledger:
    """trial_id -> MLflow run and last logged step, persisted in the experiment directory."""

    def __init__(self, exp_dir: Path):
        self.path = Path(exp_dir) / layout.LEDGER
        self.data: dict = {"parent_run_id": None, "trials": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())

    def save(self) -> None:
        _write_json(self.path, self.data)

        storage.changed(self.path)  # an object-store experiment dir: uploaded within seconds

    def remove_leftovers(self) -> None:
        """Temp files of a writer killed mid-write (or stopped by a full disk); call from the one writer."""
        for stale in self.path.parent.glob(f".{layout.LEDGER}.tmp-*"):
            stale.unlink(missing_ok=True)

    @property
    def trials(self) -> dict[str, dict]:
        return self.data["trials"]
