"""<exp>/sweep.json, the experiment directory's contract with `stlm report`: names, MLflow ids, the summary."""

from __future__ import annotations

import json
from pathlib import Path

from stlm.atomic import write_atomic
from stlm.sweep.plan.sweep import Sweep
from stlm.sweep.resilience import layout, storage


def write_sweep_json(
    exp_dir: Path,
    sweep: Sweep,
    tracking_uri: str,
    experiment: str,
    parent_run_id: str | None,
    extra: dict | None = None,
    *,
    where: str | None = None,
) -> Path:
    """<exp>/sweep.json (`where`: the experiment directory as the user named it, an s3:// URI included).
    Keys already there and not given again (a resumed sweep's summary) are kept."""
    data = {
        "name": sweep.name,
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "parent_run_id": parent_run_id,
        "metric": sweep.spec.metrics[0] if not sweep.spec.multi_objective else sweep.spec.metrics,
        "mode": sweep.spec.modes[0] if not sweep.spec.multi_objective else sweep.spec.modes,
        "control_arm": sweep.control_arm,
        "arms": [a.name for a in sweep.arms],
        "seeds": list(sweep.spec.seeds),
        "spec_path": str(sweep.path),
        "overrides": list(sweep.overrides),
        "experiment_dir": where or str(exp_dir),
        "num_trials": sweep.num_trials,
        "arm_settings": {a.name: a.settings for a in sweep.arms},
        "arm_params": {a.name: a.count.total for a in sweep.arms},
    }
    path = exp_dir / layout.SWEEP_JSON
    if path.is_file():
        old = json.loads(path.read_text())
        old.update({k: v for k, v in data.items() if v is not None})
        data = old
    data.update(extra or {})
    write_atomic(path, json.dumps(data, indent=2, default=str))
    storage.changed(path)  # an object-store experiment dir: uploaded within seconds (and at the end)
    return path
