"""Budget-matched ablations and hyperparameter searches on Ray Tune + Ray Train + Optuna + MLflow.

    python -m stlm.sweep sweeps/quickstart.yaml [key=value ...] [--dry-run] [--resume]

    spec.py      the sweep file schema: arms (grid / named), seeds, budget, search, resources
    space.py     every (arm, seed) cell x Optuna-sampled knobs; architecture search inside a budget
    runner.py    Tune function trainable -> TorchTrainer (Ray Train V2) per trial -> stlm.train.loop.train
    tracking.py  MLflow parent/child runs, resume-safe
    report.py    statistics and plots of a finished sweep (stlm report)

Importing this package does not import Ray.
"""

from stlm.sweep.plan.schema import SweepSpec
from stlm.sweep.plan.sweep import Sweep, load_sweep

__all__ = ["Sweep", "SweepSpec", "load_sweep"]
