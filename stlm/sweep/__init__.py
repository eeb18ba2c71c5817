"""Budget-matched ablations and hyperparameter searches on Ray Tune + Ray Train + Optuna + MLflow.

    python -m stlm.sweep sweeps/quickstart.yaml [key=value ...] [--dry-run] [--resume]   (= stlm sweep)
    stlm report sweep_runs/quickstart

The package in layers; a module imports only from its own layer or the ones below (import-linter, pyproject.toml):

    run/          how a sweep runs on Ray: the driver, pre-flight, Ray, the Tuner, one trial, one Train worker
    report/       `stlm report`: tables, plots, report.md / report.html
    analysis/     the numbers: trials read back from MLflow, per-arm statistics, the arm comparison, knob importances
    tracking/     MLflow: the ledger, the parent and trial runs, the Tune callback
    resilience/   the experiment directory survives kills, full disks and outages: its layout, storage, lock, outbox
    plan/         what will run: the sweep file, overrides, arms solved to the budget, the search space, the dry run

Importing this package (or plan/) does not import Ray or MLflow.
"""

from stlm.sweep.plan.schema import SweepSpec
from stlm.sweep.plan.sweep import Sweep, load_sweep

__all__ = ["Sweep", "SweepSpec", "load_sweep"]
