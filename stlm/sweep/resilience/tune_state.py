"""Ray Tune's experiment state, written whole or not at all.

Ray Tune (2.60) writes experiment_state-<session>.json in place: TuneController.save_to_dir opens
the file with "w" and json.dumps into it. A driver killed, or a disk filled, during that write leaves
a truncated file, and --resume then cannot read it (Tune starts a new experiment instead). The
searcher's and the callbacks' files beside it are already written to a temp name and renamed.

install() swaps in the same method with that one write made atomic (stlm.atomic.write_atomic:
temp + fsync + rename; a full disk raises DiskFullError, which ends the sweep cleanly). It is
applied only where Tune's method still has the shape it replaces; elsewhere Tune's is kept.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

from stlm.atomic import write_atomic

# what TuneController.save_to_dir must contain for the copy below to be the same method
EXPECTED = (
    "_get_trial_checkpoints()",
    "__getstate__()",
    "experiment_driver_staging_path",
    "json.dump(runner_state, f, cls=TuneFunctionEncoder)",
    "_search_alg.save_to_dir",
    "_callbacks.save_to_dir",
)


def _save_to_dir(self) -> None:
    """TuneController.save_to_dir, with the experiment state written atomically."""
    # lazy: Ray, imported only by a driver that runs Tune
    from ray.tune.utils.serialization import TuneFunctionEncoder

    runner_state = {
        "trial_data": list(self._get_trial_checkpoints().values()),
        "runner_data": self.__getstate__(),
        "stats": {"start_time": self._start_time},
    }
    staging = self._storage.experiment_driver_staging_path
    os.makedirs(staging, exist_ok=True)
    write_atomic(Path(staging, self.experiment_state_file_name), json.dumps(runner_state, cls=TuneFunctionEncoder))
    self._search_alg.save_to_dir(staging, session_str=self._session_str)
    self._callbacks.save_to_dir(staging, session_str=self._session_str)


def install() -> bool:
    """Make Tune's experiment-state write atomic in this process; False where Tune's method differs."""
    # lazy: Ray, imported only by a driver that runs Tune
    from ray.tune.execution.tune_controller import TuneController

    current = TuneController.save_to_dir
    if current is _save_to_dir:
        return True
    try:
        source = inspect.getsource(current)
    except (OSError, TypeError):
        return False
    if not all(part in source for part in EXPECTED):
        return False
    TuneController.save_to_dir = _save_to_dir
    return True
