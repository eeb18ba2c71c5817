"""The sweep file: which arms to compare, on which seeds, with which knobs searched, on what.

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
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0, max_concurrent: null}
    metric: val_bpb                      # or a list for multi-objective NSGA-II: [val_bpb, params]
    mode: min                            # or a list, one per metric
    eval: {tasks: [blimp], limit: 200}   # merged over the config's `eval` section
    tracking: {uri: null, experiment: stlm}
    max_failures: 1                      # retries of a trial from its last checkpoint
    log_checkpoint: false                # upload each trial's final checkpoint to MLflow

Validation follows stlm.config: unknown keys name the closest valid key, every error names
its dotted path, and every axis (grid, arms, search.params) must be a config leaf key.
Each arm is resolved and budget-solved here, so an infeasible arm fails before Ray starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from stlm.config import (
    Config,
    build_config,
    flatten,
    EMPTY_FILE_HINT,
    from_dict,
    parse_override,
    read_yaml,
    set_dotted,
    to_dict,
    EvalConfig,
    TrackingConfig,
)
from stlm.errors import StlmError

ALGORITHMS = ("tpe", "nsga2", "random")
PARAM_TYPES = ("loguniform", "uniform", "int", "categorical")
SCHEDULERS = ("none", "asha", "pbt")
FREE_DIMS = ("d_model", "ffn_dim", "n_layers")
EMPTY_SWEEP_HINT = ("A sweep file needs at least a `name` and a `base` config (or an inline `config`), and usually a `grid` "
                    "or `arms`; sweeps/quickstart.yaml is a small complete one.")

# Every leaf of the config ("model.ffn", "train.lr", ...): the only keys an axis may name.
CONFIG_KEYS: tuple[str, ...] = tuple(flatten(to_dict(Config())))


# --------------------------------------------------------------------------- schema


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
    flops: float | None = None  # training FLOPs per trial, every arm (train.max_steps = flops / (FLOPs/token x tokens/step))

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
    type: str = "none"  # none | asha (pbt is refused, see runner.py)
    grace_period: int = 100  # in units of time_attr (optimizer steps)
    reduction_factor: float = 2.0
    time_attr: str = "step"


@dataclass
class ResourcesSpec:
    workers: int = 1  # Ray Train workers per trial (DDP when > 1)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional shares a GPU, e.g. 0.25 for four 10M trials per GPU
    max_concurrent: int | None = None  # default: as many trials as the cluster's resources fit


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


# --------------------------------------------------------------------------- resolved sweep


@dataclass
class Arm:
    """One compared configuration: the resolved (and budget-solved) config every seed of it trains."""

    name: str
    settings: dict[str, Any]  # the dotted keys this arm sets
    data: dict  # the config as a plain dict (before the budget solve), what trials start from
    cfg: Config  # validated and budget-solved
    count: Any = None  # stlm.models.ParamCount of cfg.model
    solved: bool = True  # False: architecture search, the base shape misses the budget (each trial's shape is solved)
    base: str = ""  # the arm without its size (= name unless budget.target is a list)
    size: int | None = None  # the parameter target this arm was solved to
    match: int | None = None  # the control arm's count this arm was matched to (None: the control itself)
    train_flops: float | None = None  # the training FLOPs every trial of this arm gets (compute-matched budgets)

    def __post_init__(self):
        self.base = self.base or self.name


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path  # the sweep file (absolute)
    overrides: list[str]
    arms: list[Arm]
    notes: list[str] = field(default_factory=list)  # what the command-line overrides did beyond setting a value

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def control_arm(self) -> str:
        """The control arm's name (at the first size when the budget has several)."""
        base = self.spec.control or self.arms[0].base
        return next(a.name for a in self.arms if a.base == base)

    def control_of(self, arm: Arm) -> Arm:
        """The control arm at the same size as `arm`."""
        base = self.spec.control or self.arms[0].base
        return next(a for a in self.arms if a.base == base and a.size == arm.size)

    @property
    def sizes(self) -> list[int | None]:
        return self.spec.budget.targets if self.spec.budget is not None else [None]

    @property
    def cells(self) -> list[tuple[str, int]]:
        """(arm, seed) pairs, seed-major so an interrupted sweep has every arm on the early seeds."""
        return [(a.name, s) for s in self.spec.seeds for a in self.arms]

    @property
    def num_trials(self) -> int:
        return len(self.cells) * self.spec.search.samples

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise StlmError(f"Unknown arm {name!r}; the arms are {', '.join(a.name for a in self.arms)}.")


# --------------------------------------------------------------------------- validation helpers


def check_config_key(key: str, where: str) -> None:
    """An axis must name a config leaf ('model.ffn'); say which one was meant otherwise."""
    if key in CONFIG_KEYS:
        return
    sections = {k.rsplit(".", 1)[0] for k in CONFIG_KEYS}
    if key in sections:
        raise StlmError(f"{where}: {key!r} is a config section, not a value; name a key inside it "
                        f"(e.g. {next(k for k in CONFIG_KEYS if k.startswith(key + '.'))!r}).")
    close = difflib.get_close_matches(key, CONFIG_KEYS, n=1, cutoff=0.5)
    if not close:  # 'model.positonal_encoding' -> compare the last part too
        last = key.rsplit(".", 1)[-1]
        by_last = difflib.get_close_matches(last, [k.rsplit(".", 1)[-1] for k in CONFIG_KEYS], n=1, cutoff=0.5)
        close = [k for k in CONFIG_KEYS if by_last and k.endswith("." + by_last[0])][:1]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise StlmError(f"{where}: {key!r} is not a config key.{hint} Axes must be dotted config keys "
                    "such as model.positional or train.lr (see stlm/config.py).")


def _choice(value: str, allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise StlmError(f"{where}: {value!r} is not one of {', '.join(allowed)}.{hint}")


def _parse_params(params: dict) -> dict[str, ParamSpec]:
    out = {}
    for key, raw in params.items():
        where = f"search.params.{key}"
        check_config_key(str(key), "search.params")
        p = from_dict(ParamSpec, raw, where)
        _choice(p.type, PARAM_TYPES, f"{where}.type")
        if p.type == "categorical":
            if not p.choices:
                raise StlmError(f"{where}: type categorical needs a non-empty `choices` list.")
        else:
            if p.low is None or p.high is None:
                raise StlmError(f"{where}: type {p.type} needs `low` and `high`.")
            if not p.low < p.high:
                raise StlmError(f"{where}: low ({p.low}) must be below high ({p.high}).")
            if p.type == "loguniform" and p.low <= 0:
                raise StlmError(f"{where}: loguniform needs low > 0, got {p.low}.")
        out[str(key)] = p
    return out


def _validate_spec(spec: SweepSpec) -> None:
    if not spec.name or not str(spec.name).replace("-", "_").replace(".", "_").isidentifier():
        raise StlmError(f"name: {spec.name!r} must be a short identifier (letters, digits, _ - .): "
                        "it names the experiment directory and MLflow tags.")
    if spec.budget is not None:
        _validate_budget(spec)
    for key, values in spec.grid.items():
        check_config_key(str(key), "grid")
        if not isinstance(values, list) or not values:
            raise StlmError(f"grid.{key}: expected a non-empty list of values, got {values!r}.")
    names = [a.name for a in spec.arms]
    for i, a in enumerate(spec.arms):
        for key in a.set:
            check_config_key(str(key), f"arms[{i}].set ({a.name})")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise StlmError(f"arms: names must be unique, {', '.join(sorted(dup))} repeats.")
    if not spec.seeds:
        raise StlmError("seeds: give at least one seed.")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise StlmError(f"seeds: {spec.seeds} has repeats.")
    s = spec.search
    _choice(s.algorithm, ALGORITHMS, "search.algorithm")
    if s.samples < 1:
        raise StlmError(f"search.samples must be >= 1, got {s.samples}.")
    s.params = _parse_params(s.params)
    for key in s.params:
        setters = [f"grid.{key}"] if key in spec.grid else []
        setters += [f"arms[{i}] ({a.name})" for i, a in enumerate(spec.arms) if key in a.set]
        if setters:
            raise StlmError(f"search.params.{key}: {setters[0]} also sets it; a key is either an arm's choice "
                            "or searched, not both.")
    if isinstance(s.architecture, ArchitectureSpec) or s.architecture is True:
        if spec.budget is None:
            raise StlmError("search.architecture needs a `budget`: the shape is searched inside a parameter budget.")
        if spec.budget.free != "d_model":
            raise StlmError("search.architecture searches n_layers, n_heads and ffn_multiple and solves "
                            "d_model: set budget.free: d_model.")
        clash = [k for k in s.params if k in ("model.n_layers", "model.n_heads", "model.n_kv_heads",
                                               "model.ffn_multiple", "model.d_model")]
        if clash:
            raise StlmError(f"search.params.{clash[0]}: already searched by search.architecture; remove it.")
    if s.architecture is True:
        s.architecture = ArchitectureSpec()
    if s.architecture is False:
        s.architecture = None
    sc = spec.scheduler
    _choice(sc.type, SCHEDULERS, "scheduler.type")
    if sc.type == "pbt":
        raise StlmError(
            "scheduler.type: pbt is not supported. Population-based training mutates a trial's "
            "hyperparameters mid-run and copies weights between trials; that breaks the sweep's "
            "contract that every (arm, seed) cell trains one fixed configuration from its own seed, "
            "and each trial is a nested Ray Train run whose checkpoints Tune does not own. Use asha "
            "(early stopping on `step`) or none.")
    if sc.time_attr != "step":
        raise StlmError(f"scheduler.time_attr: only 'step' is reported monotonically by every trial, got {sc.time_attr!r}.")
    if sc.grace_period < 1 or sc.reduction_factor <= 1:
        raise StlmError("scheduler: grace_period must be >= 1 and reduction_factor > 1.")
    r = spec.resources
    if r.workers < 1 or r.cpus_per_worker < 0 or r.gpus_per_worker < 0:
        raise StlmError("resources: workers must be >= 1 and cpus_per_worker / gpus_per_worker >= 0.")
    if r.gpus_per_worker > 1 and not float(r.gpus_per_worker).is_integer():
        raise StlmError(f"resources.gpus_per_worker: above 1 it must be whole, got {r.gpus_per_worker}.")
    if r.max_concurrent is not None and r.max_concurrent < 1:
        raise StlmError("resources.max_concurrent must be >= 1 (or null).")
    metrics, modes = spec.metrics, spec.modes
    if len(metrics) != len(modes):
        raise StlmError(f"mode: give one mode per metric ({len(metrics)} metrics, {len(modes)} modes).")
    for i, m in enumerate(modes):
        _choice(m, ("min", "max"), f"mode[{i}]" if isinstance(spec.mode, list) else "mode")
    if spec.multi_objective and s.algorithm == "tpe":
        pass  # Optuna's TPE handles several objectives; nsga2 is the usual choice
    if spec.multi_objective and sc.type == "asha":
        pass  # ASHA stops on the first metric
    from_dict(EvalConfig, spec.eval, "eval")
    from_dict(TrackingConfig, spec.tracking, "tracking")
    if spec.max_failures < 0:
        raise StlmError("max_failures must be >= 0.")


def _validate_budget(spec: SweepSpec) -> None:
    b = spec.budget
    _choice(b.free, FREE_DIMS, "budget.free")
    _choice(b.compute, ("none", "match"), "budget.compute")
    if isinstance(b.target, list):
        if not b.target:
            raise StlmError("budget.target: an empty list; give one size (50M) or several ([10M, 50M, 100M]).")
        if len(set(b.target)) != len(b.target):
            raise StlmError(f"budget.target: {b.target} has repeats.")
        if spec.search.architecture:
            raise StlmError("budget.target: an architecture search needs one size, not a list.")
    for t in b.targets:
        if t is not None and t <= 0:
            raise StlmError(f"budget.target must be positive, got {t}.")
    if not 0 < b.tolerance < 0.5:
        raise StlmError(f"budget.tolerance must be in (0, 0.5), got {b.tolerance}.")
    if b.tokens is not None and b.tokens <= 0:
        raise StlmError(f"budget.tokens must be positive, got {b.tokens}.")
    if b.flops is not None and not b.flops > 0:
        raise StlmError(f"budget.flops must be positive, got {b.flops}.")
    if b.flops is not None and (b.tokens is not None or b.compute == "match"):
        raise StlmError("budget.flops fixes every arm's training FLOPs already; drop budget.tokens / budget.compute "
                        "(tokens then follow from each arm's FLOPs per token).")
    if b.target is None and b.tokens is None and b.flops is None and b.compute == "none":
        raise StlmError("budget: give a parameter target (budget.target), a compute budget (budget.compute: match, "
                        "budget.tokens or budget.flops), or both.")
    if b.tokens is not None or b.flops is not None or b.compute == "match":
        for key in ("train.max_steps",):
            if key in spec.search.params or key in spec.grid or any(key in a.set for a in spec.arms):
                raise StlmError(f"{key} is solved from the compute budget (budget.compute / tokens / flops); "
                                "it cannot also be an axis or a searched knob.")


def parse_spec(data: dict) -> SweepSpec:
    if "name" not in data:
        raise StlmError("A sweep file needs a `name` (it names the experiment directory and the MLflow tags).")
    try:
        spec = from_dict(SweepSpec, data)
    except StlmError as e:
        raise StlmError(str(e).replace("Unknown config key", "Unknown sweep key")) from None
    _validate_spec(spec)
    return spec


# --------------------------------------------------------------------------- arms


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "null"
    return str(v)


def _grid_arms(grid: dict[str, list]) -> list[tuple[str, dict]]:
    if not grid:
        return []
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, combo))
        if len(keys) == 1:
            name = _fmt(combo[0])
        else:
            name = ",".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in settings.items())
        out.append((name, settings))
    return out


def arm_settings(spec: SweepSpec) -> list[tuple[str, dict]]:
    """(name, {dotted key: value}) of every arm: grid combinations x named arms (either alone is fine)."""
    grid = _grid_arms(spec.grid)
    named = [(a.name, dict(a.set)) for a in spec.arms]
    if grid and named:
        arms = [(f"{n}/{g}", {**s, **gs}) for n, s in named for g, gs in grid]
    else:
        arms = grid or named or [("base", {})]
    names = [n for n, _ in arms]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise StlmError(f"Two arms would share the name {sorted(dup)[0]!r}; give the arms distinct values or names.")
    return arms


def base_data(spec: SweepSpec, sweep_path: Path) -> dict:
    """The config every arm starts from: `base` file, then the inline `config`, eval and tracking."""
    data: dict = {}
    if spec.base:
        base_path = (sweep_path.parent / spec.base).resolve()
        if not base_path.is_file():
            raise StlmError(f"base: config file {str(base_path)!r} (from {spec.base!r}, relative to the sweep "
                            "file) does not exist.")
        data = read_yaml(base_path)
    data = deep_merge(data, spec.config)
    if spec.eval:
        data = deep_merge(data, {"eval": spec.eval})
    if spec.tracking:
        data = deep_merge(data, {"tracking": spec.tracking})
    return data


def apply_settings(data: dict, settings: dict[str, Any]) -> dict:
    data = copy.deepcopy(data)
    for key, value in settings.items():
        set_dotted(data, key, value)
    return data


def tokens_per_step(cfg: Config, workers: int = 1) -> int:
    """Training tokens one optimizer step consumes (batch_size is per Ray Train worker)."""
    t = cfg.train
    return t.batch_size * t.grad_accum * cfg.model.context_length * workers


def solve(cfg: Config, budget: BudgetSpec | None, target: int | None = None, nearest: int | None = None,
          flops: float | None = None, workers: int = 1) -> Config:
    """Re-solve cfg.model to the budget (StlmError with the nearest feasible sizes when it cannot):
    to `target` (default: budget.target when it is one size), as near `nearest` (the control's count)
    as the tolerance allows; then train.max_steps from `flops` (the FLOPs the trial must get) or
    budget.tokens."""
    if budget is None:
        return cfg
    from stlm.config import validate
    from stlm.models import count_params, solve_budget

    if target is None and not budget.sized:
        target = budget.target
    if target is not None:
        model = solve_budget(cfg.model, target, free=budget.free, tolerance=budget.tolerance, nearest=nearest)
        cfg = dataclasses.replace(cfg, model=model)
    per_step = tokens_per_step(cfg, workers)
    steps = None
    if flops is not None:
        steps = round(flops / (count_params(cfg.model).flops_per_token * per_step))
    elif budget.tokens is not None:
        steps = round(budget.tokens / per_step)
    if steps is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=max(1, steps)))
        validate(cfg)
    return cfg


def resolve_config(data: dict, budget: BudgetSpec | None, where: str, **solve_kw) -> Config:
    try:
        cfg = build_config(data)
    except StlmError as e:
        raise StlmError(f"{where}: {e}") from None
    try:
        return solve(cfg, budget, **solve_kw)
    except StlmError as e:
        target = solve_kw.get("target") or budget.target
        what = f"the budget of {target:,} parameters" if isinstance(target, int) else "its budget"
        raise StlmError(f"{where} cannot meet {what} "
                        f"(free: {budget.free}, tolerance {budget.tolerance:g}): {e}") from None


def size_label(n: int) -> str:
    """50_000_000 -> '50M', 1_500_000 -> '1.5M', 800_000 -> '800k' (the @size suffix of sized arm names)."""
    for unit, div in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= div:
            return f"{n / div:g}{unit}"
    return str(n)


def split_sized(name: str) -> tuple[str, str | None]:
    """'rope@10M' -> ('rope', '10M'); 'rope' -> ('rope', None)."""
    base, at, label = name.rpartition("@")
    return (base, label) if at else (name, None)


def count(cfg: Config):
    from stlm.models import count_params

    return count_params(cfg.model)


def load_sweep(path: str | Path, overrides: Iterable[str] = ()) -> Sweep:
    """Read, validate and resolve a sweep file; every arm is built and budget-solved here."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise StlmError(f"Sweep file {str(p)!r} does not exist.")
    p = p.resolve()
    try:
        raw = read_yaml(p)
    except StlmError as e:
        msg = str(e).replace("Config file", "Sweep file")
        if msg.endswith(EMPTY_FILE_HINT):  # what a sweep file needs, not a config
            msg = msg.replace(EMPTY_FILE_HINT, EMPTY_SWEEP_HINT)
        raise StlmError(msg) from None
    try:
        spec = parse_spec(raw)
    except StlmError as e:
        raise StlmError(f"In sweep file {str(p)}: {e}") from None
    overrides = list(overrides)
    try:
        config_overrides, notes = apply_sweep_overrides(raw, overrides)
        spec = parse_spec(raw)
        sweep = resolve_sweep(spec, p, config_overrides)
    except StlmError as e:
        raise StlmError(f"In sweep file {str(p)}: {e}") from None
    sweep.overrides, sweep.notes = overrides, notes
    return sweep


# --------------------------------------------------------------------------- command-line overrides

# Top-level sweep keys a `key=value` on the command line sets in the sweep file itself; any other
# key is a config key (eval.* and tracking.* are both: as config keys they win over the sweep's).
SWEEP_OVERRIDE_KEYS = ("name", "base", "budget", "grid", "control", "seeds", "search", "scheduler", "resources",
                       "metric", "mode", "max_failures", "log_checkpoint")
ARCH_SEARCHED = ("model.n_layers", "model.n_heads", "model.n_kv_heads", "model.ffn_multiple", "model.d_model")


def _leaves(cls, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        sub = next((t for t in (BudgetSpec, SearchSpec, SchedulerSpec, ResourcesSpec, ArchitectureSpec)
                    if t.__name__ in str(f.type)), None)
        out += _leaves(sub, key + ".") if sub is not None else [key]
    return out


SWEEP_KEYS: tuple[str, ...] = tuple(k for k in _leaves(SweepSpec) if k.split(".")[0] in SWEEP_OVERRIDE_KEYS)


def _no_such_key(key: str, text: str) -> StlmError:
    """An override naming neither a sweep key nor a config key: suggest the closest of both."""
    keys = SWEEP_KEYS + CONFIG_KEYS
    close = [k for k in keys if k.endswith("." + key)][:1]  # 'cpus_per_worker' -> 'resources.cpus_per_worker'
    close = close or difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # 'seed' -> 'seeds', 'cpus_per_worker' -> 'resources.cpus_per_worker'
        last = key.rsplit(".", 1)[-1]
        by_last = difflib.get_close_matches(last, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.7)
        close = [k for k in keys if by_last and k.rsplit(".", 1)[-1] == by_last[0]][:1]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return StlmError(f"override {text!r}: {key!r} is neither a sweep key nor a config key.{hint} Sweep keys "
                     f"({', '.join(SWEEP_OVERRIDE_KEYS)}, e.g. search.samples=1 or resources.cpus_per_worker=1) "
                     "set the sweep file; any other dotted key (train.lr=3e-4) sets the base config.")


def _set_search_param(raw: dict, rest: str, value: Any, text: str) -> None:
    """search.params.<config key>[.<field>]=value: the param names are dotted config keys themselves."""
    params = raw.setdefault("search", {}).setdefault("params", {}) or {}
    raw["search"]["params"] = params
    name = next((p for p in params if rest == p or rest.startswith(p + ".")), None)
    if name is None or rest == name:
        if value is None:  # search.params.train.lr=null: stop searching it
            params.pop(rest, None)
            return
        check_config_key(rest, f"override {text!r}")
        params[rest] = value  # a whole {type: ..., low: ..., high: ...} mapping, validated with the file
        return
    field_name = rest[len(name) + 1:]
    fields = [f.name for f in dataclasses.fields(ParamSpec)]
    if field_name not in fields:
        close = difflib.get_close_matches(field_name, fields, n=1)
        hint = f" Did you mean 'search.params.{name}.{close[0]}'?" if close else ""
        raise StlmError(f"override {text!r}: {field_name!r} is not a field of a searched knob.{hint} "
                        f"Fields: {', '.join(fields)}.")
    if not isinstance(params[name], dict):
        raise StlmError(f"override {text!r}: search.params.{name} is not a mapping in the sweep file.")
    params[name][field_name] = value


def apply_sweep_overrides(raw: dict, overrides: Iterable[str]) -> tuple[list[str], list[str]]:
    """Apply the sweep-level `key=value` overrides to the raw sweep file `raw` (in place).

    Returns (the config overrides, notes). A config override of a knob the sweep searches pins it:
    the knob leaves search.params (said in the notes, which --dry-run prints); one of a key an arm
    or the grid sets, or that search.architecture searches, is refused (it would be overwritten).
    """
    config_overrides, notes = [], []
    for text in overrides:
        key, value = parse_override(text)
        head = key.split(".", 1)[0]
        if head == "config" and "." in key:
            key, text = key[len("config."):], text[len("config."):]
            head = key.split(".", 1)[0]
        elif head in SWEEP_OVERRIDE_KEYS:
            rest = key[len(head) + 1:]
            if key.startswith("search.params."):
                _set_search_param(raw, key[len("search.params."):], value, text)
            elif head == "grid" and rest:
                check_config_key(rest, f"override {text!r}")
                raw.setdefault("grid", {})[rest] = value
            elif key in SWEEP_KEYS or (head in ("search", "budget") and rest in ("", "architecture")):
                parent = raw
                for part in key.split(".")[:-1]:  # budget: null / architecture: true become sections
                    if not isinstance(parent.get(part), dict):
                        parent[part] = {}
                    parent = parent[part]
                parent[key.rsplit(".", 1)[-1]] = value
            else:
                raise _no_such_key(key, text)
            continue
        if key not in CONFIG_KEYS:
            if key in {k.rsplit(".", 1)[0] for k in CONFIG_KEYS}:
                check_config_key(key, f"override {text!r}")  # a section: its own message
            raise _no_such_key(key, text)
        searched = (raw.get("search") or {}).get("params") or {}
        if key in searched:
            del searched[key]
            note = (f"{text} pins a knob the sweep searches: search.params.{key} is not searched in this run; "
                    "every trial uses the given value")
            search = raw["search"]
            if not searched and not search.get("architecture") and int(search.get("samples", 1) or 1) > 1:
                note += f"; with nothing left to search each cell runs once (search.samples {search['samples']} -> 1)"
                search["samples"] = 1
            notes.append(note + ".")
        arch = (raw.get("search") or {}).get("architecture")
        if arch not in (None, False) and key in ARCH_SEARCHED:
            raise StlmError(f"override {text!r}: search.architecture searches (or solves) {key} in this sweep, "
                            "so a fixed value would be overwritten; set search.architecture=false to fix the shape.")
        setters = [f"grid.{key}"] if key in (raw.get("grid") or {}) else []
        setters += [f"arms ({a.get('name')})" for a in (raw.get("arms") or []) if key in (a.get("set") or {})]
        if setters:
            raise StlmError(f"override {text!r}: {key} is set by {setters[0]} (it is what the arms compare), "
                            f"so the override would be overwritten; override grid.{key}=[...] instead, or edit the arms.")
        config_overrides.append(text)
    return config_overrides, notes


def resolve_sweep(spec: SweepSpec, path: Path, overrides: list[str]) -> Sweep:
    data = base_data(spec, path)
    for text in overrides:  # command-line key.sub=value apply to the base config
        key, value = parse_override(text)
        check_config_key(key, f"override {text!r}")
        set_dotted(data, key, value)
    settings_of = arm_settings(spec)
    names = [n for n, _ in settings_of]
    if spec.control is not None and spec.control not in names:
        close = difflib.get_close_matches(spec.control, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise StlmError(f"control: {spec.control!r} is not an arm.{hint} The arms are {', '.join(names)}.")
    if spec.budget is not None and spec.budget.sized and any("@" in n for n in names):
        raise StlmError(f"budget.target is a list, so arm names get an @size suffix; arm {next(n for n in names if '@' in n)!r} "
                        "already holds an '@'. Rename it.")
    control = spec.control or names[0]
    budget, workers = spec.budget, spec.resources.workers
    arms = []
    for size in (budget.targets if budget is not None else [None]):
        # the control first: every other arm is matched to its actual count and, if asked, its compute
        order = sorted(settings_of, key=lambda ns: ns[0] != control)
        ctrl: Arm | None = None
        solved_arms: dict[str, Arm] = {}
        for name, settings in order:
            full = f"{name}@{size_label(size)}" if budget is not None and budget.sized else name
            arm_data = apply_settings(data, settings)
            seeded = apply_settings(arm_data, {"train.seed": spec.seeds[0]})
            kw = {"target": size, "workers": workers}
            if ctrl is not None and not spec.search.architecture:
                kw["nearest"] = ctrl.count.total if ctrl.solved and size is not None else None
                kw["flops"] = ctrl.train_flops
            elif budget is not None and budget.flops is not None:
                kw["flops"] = budget.flops
            solved = True
            try:
                cfg = resolve_config(seeded, budget, f"arm {full!r}", **kw)
            except StlmError:
                if not spec.search.architecture:
                    raise
                # architecture search: the base shape is only a template, every trial's shape is solved
                cfg, solved = resolve_config(seeded, None, f"arm {full!r}"), False
            counted = count(cfg)
            arm = Arm(name=full, settings=settings, data=arm_data, cfg=cfg, count=counted, solved=solved, base=name,
                      size=size, match=kw.get("nearest"), train_flops=kw.get("flops"))
            if ctrl is None and budget is not None and (budget.compute == "match" or budget.flops is not None):
                # the control's training FLOPs: what every arm at this size gets
                arm.train_flops = kw.get("flops") or float(counted.flops_per_token * tokens_per_step(cfg, workers)
                                                           * cfg.train.max_steps)
            ctrl = ctrl or arm
            solved_arms[name] = arm
        arms += [solved_arms[n] for n in names]  # the sweep file's order
    return Sweep(spec=spec, path=path, overrides=overrides, arms=arms)


MATCH_GOAL = 0.005  # the largest pairwise parameter gap between the arms of one size that we accept silently


def param_gaps(sweep: Sweep) -> dict[str, float]:
    """arm -> (params - control's params) / control's params, against the control at the same size."""
    return {a.name: (a.count.total - sweep.control_of(a).count.total) / sweep.control_of(a).count.total
            for a in sweep.arms}


def largest_gap(counts: Iterable[int]) -> float:
    """The largest pairwise relative gap between parameter counts: (max - min) / min."""
    counts = list(counts)
    return (max(counts) - min(counts)) / min(counts) if counts else 0.0


def gap_notes(sweep: Sweep) -> list[str]:
    """One line per size: the largest pairwise gap; and for every arm past MATCH_GOAL, why the
    free dimension could not bring it closer to the control."""
    from stlm.models.params import _step, neighbours

    b = sweep.spec.budget
    lines = []
    for size in sweep.sizes:
        arms = [a for a in sweep.arms if a.size == size and a.solved]
        if len(arms) < 2:
            continue
        gap = largest_gap(a.count.total for a in arms)
        where = f" at {size_label(size)}" if b is not None and b.sized else ""
        ok = "" if gap <= MATCH_GOAL else f" (above {MATCH_GOAL:.1%})"
        lines.append(f"largest pairwise parameter gap{where}: {gap:.2%}{ok}")
        if b is None or b.target is None or gap <= MATCH_GOAL:
            continue
        for a in arms:
            c = sweep.control_of(a).count.total
            n = a.count.total
            if abs(n - c) / c <= MATCH_GOAL / 2:
                continue
            lo, hi = neighbours(a.cfg.model, b.free)
            other = lo if n > c else hi
            side = "below" if n > c else "above"
            why = ("outside the tolerance" if other is None or abs(other - size) > b.tolerance * size
                   else "farther from the control")
            step = _step(a.cfg.model, b.free)
            lines.append(f"  {a.name}: {b.free} moves in steps of {step}, {abs(n - (other or n)):,} parameters a step here; "
                         f"{n:,} is {(n - c) / c:+.2%} from the control's {c:,}, and the next size {side} "
                         + (f"({other:,}, {(other - c) / c:+.2%}) is {why}" if other else "does not exist"))
    return lines


def describe_training(sweep: Sweep) -> list[str]:
    """Per arm: tokens per trial and training FLOPs per trial (flops_per_token x tokens)."""
    workers = sweep.spec.resources.workers
    rows = []
    for a in sweep.arms:
        tokens = a.cfg.train.max_steps * tokens_per_step(a.cfg, workers)
        rows.append((a.name, a.cfg.train.max_steps, tokens, a.count.flops_per_token * tokens))
    return rows


def human(n: float) -> str:
    """12_345_678 -> '12.35M'."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{2 if abs(n) / div < 100 else 1}f}{unit}"
    return f"{n:g}" if isinstance(n, float) and not math.isfinite(n) else str(int(n))
