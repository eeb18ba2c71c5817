"""The sweep file's schema: which arms to compare, on which seeds, with which knobs searched, on what.

    sweep = load_sweep("sweeps/quickstart.yaml", overrides=["train.max_steps=30"])
    sweep.arms      # [Arm(name="rope", cfg=Config(...), count=ParamCount(...)), ...]
    sweep.spec      # the validated SweepSpec

A sweep file (every key optional except `name`; defaults shown):

    name: positional_encoding
    base: ../configs/baseline-50m.yaml   # config YAML, relative to this file
    config: {train: {max_steps: 2000}}   # inline config merged over `base`
    budget:                              # every arm re-solved to this size, as near the control arm as it gets
      target: 50M                        # parameters; a list [10M, 50M, 100M] runs every arm at every size
      tolerance: 0.01                    # |params - target| <= tolerance * target
      free: d_model                      # the dimension solved: d_model | ffn_dim | n_layers
      compute: none                      # match: every arm's train.max_steps gives it the control's training FLOPs
      tokens: null                       # training tokens per trial (sets train.max_steps), e.g. 300M
      flops: null                        # training FLOPs per trial of every arm (sets each arm's train.max_steps)
    grid:                                # every combination is an arm
      model.positional: [rope, learned, alibi]
    arms:                                # named multi-key arms (crossed with `grid` if both)
      - {name: gqa4, set: {model.n_kv_heads: 4}}
    control: rope                        # arm the others are compared with (default: the first)
    seeds: [0]                           # paired: seed s of every arm sees the same batches
    search:
      algorithm: tpe                     # tpe | nsga2 | random (Optuna samplers)
      samples: 1                         # trials PER (arm, seed) CELL: total = arms x seeds x samples
      params:                            # knobs Optuna samples (dotted config keys)
        train.lr: {type: loguniform, low: 3e-4, high: 3e-3}
      architecture: false                # true (or bounds, see ArchitectureSpec): search the shape
    scheduler: {type: none, grace_period: 100, reduction_factor: 2, time_attr: step}   # none | asha
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0, max_concurrent: null, stall_timeout: null}
    metric: val_bpb                      # or a list for multi-objective NSGA-II: [val_bpb, params]
    mode: min                            # or a list, one per metric
    eval: {tasks: [blimp], limit: 200}   # merged over the config's `eval` section
    tracking: {uri: null, experiment: stlm}
    max_failures: 1                      # retries of a trial from its last checkpoint (crashes; stalls apart)
    log_checkpoint: false                # upload each trial's final checkpoint to MLflow

Validation follows stlm.config: unknown keys name the closest valid key, every error names
its dotted path, and every axis (grid, arms, search.params) must be a config leaf key.
Each arm is resolved and budget-solved in sweep.py, so an infeasible arm fails before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stlm.config import (
    Config,
    flatten,
    to_dict,
)

ALGORITHMS = ("tpe", "nsga2", "random")

PARAM_TYPES = ("loguniform", "uniform", "int", "categorical")

SCHEDULERS = ("none", "asha", "pbt")

EMPTY_SWEEP_HINT = (
    "A sweep file needs at least a `name` and a `base` config (or an inline `config`), and usually a `grid` "
    "or `arms`; sweeps/quickstart.yaml is a small complete one."
)


# Every leaf of the config ("model.ffn", "train.lr", ...): the only keys an axis may name.
CONFIG_KEYS: tuple[str, ...] = tuple(flatten(to_dict(Config())))


@dataclass
class BudgetSpec:
    """Parameters: every arm is re-solved to `target` by changing one free dimension; the control
    arm lands nearest the target, every other arm nearest the control's actual count (within the
    tolerance). Compute (optional): each arm's train.max_steps is solved from the FLOPs it must get,
    flops_per_token x tokens, with tokens = steps x batch_size x grad_accum x context x workers."""

    target: int | list[int] | None = None  # total parameters, e.g. 10M, 50M, 1.5M; a list: every arm at every size
    tolerance: float = 0.01  # |params - target| <= tolerance * target
    free: str = "d_model"  # d_model | ffn_dim | n_layers
    compute: str = "none"  # none | match: every arm trains on the control arm's total training FLOPs
    tokens: int | None = None  # training tokens per trial, every arm (train.max_steps = tokens / tokens per step)
    flops: float | None = (
        None  # training FLOPs per trial, every arm (train.max_steps = flops / (FLOPs/token x tokens/step))
    )

    @property
    def targets(self) -> list[int | None]:
        """The sizes every arm runs at ([None]: parameters are not solved)."""
        return list(self.target) if isinstance(self.target, list) else [self.target]

    @property
    def sized(self) -> bool:
        """Several sizes: the size is an axis like the arms (arm names get an @size suffix)."""
        return isinstance(self.target, list)


@dataclass
class ArmSpec:
    name: str
    set: dict[str, Any] = field(default_factory=dict)  # dotted config key -> value


@dataclass
class ParamSpec:
    """One Optuna-searched knob."""

    type: str  # loguniform | uniform | int | categorical
    low: float | None = None
    high: float | None = None
    step: float | None = None  # uniform / int: grid step (optional)
    choices: list[Any] | None = None  # categorical


@dataclass
class ArchitectureSpec:
    """Search the shape inside the budget: Optuna picks these, the free dimension is solved.

    Bounds left null are derived from the budget (the feasible range is computed exactly
    with count_params before anything launches, so every sampled point meets the budget).
    """

    n_layers: list[int] | None = None  # [low, high]
    n_heads: list[int] | None = None  # candidate head counts (default 1, 2, 4, 8, 16)
    kv_heads: bool = True  # also search n_kv_heads among the divisors of n_heads (GQA / MQA)
    ffn_multiple: list[float] | None = None  # [low, high], sampled in steps of 0.25
    lr: list[float] | None = None  # [low, high] loguniform; null = do not search lr here


@dataclass
class SearchSpec:
    algorithm: str = "tpe"
    samples: int = 1  # per (arm, seed) cell
    params: dict[str, Any] = field(default_factory=dict)  # dotted key -> ParamSpec
    architecture: ArchitectureSpec | bool = False
    sampler_seed: int = 0  # Optuna sampler seed (the search is reproducible)


@dataclass
class SchedulerSpec:
    type: str = "none"  # none | asha (pbt is refused: see _validate_scheduler)
    grace_period: int = 100  # in units of time_attr (optimizer steps)
    reduction_factor: float = 2.0
    time_attr: str = "step"


@dataclass
class ResourcesSpec:
    workers: int = 1  # Ray Train workers per trial (DDP when > 1)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional shares a GPU, e.g. 0.25 for four 10M trials per GPU
    max_concurrent: int | None = None  # default: as many trials as the cluster's resources fit
    # seconds a trial's workers may go without a report before the trial counts as stalled (then retried from its
    # last checkpoint); null: derived from the trial's own report intervals (resilience/stall.py: stall_limit)
    stall_timeout: float | None = None


@dataclass
class SweepSpec:
    name: str
    base: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    budget: BudgetSpec | None = None
    grid: dict[str, Any] = field(default_factory=dict)
    arms: list[ArmSpec] = field(default_factory=list)
    control: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    search: SearchSpec = field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    metric: str | list[str] = "val_bpb"
    mode: str | list[str] = "min"
    eval: dict[str, Any] = field(default_factory=dict)  # merged over the config's eval section
    tracking: dict[str, Any] = field(default_factory=dict)  # merged over the config's tracking section
    max_failures: int = 1
    log_checkpoint: bool = False

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        return [self.mode] * len(self.metrics) if isinstance(self.mode, str) else list(self.mode)

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1
