"""The resolved sweep: every arm's config built from the base, its settings and the budget, solved and counted."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stlm import fmt
from stlm.config import (
    EMPTY_FILE_HINT,
    Config,
    build_config,
    parse_override,
    read_yaml,
    set_dotted,
    validate,
)
from stlm.errors import StlmError
from stlm.models import count_params, solve_budget
from stlm.sweep.plan.overrides import apply_sweep_overrides
from stlm.sweep.plan.schema import EMPTY_SWEEP_HINT, BudgetSpec, SweepSpec
from stlm.sweep.plan.validate import check_config_key, parse_spec
from stlm.train.loop import tokens_per_step


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


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _grid_arms(grid: dict[str, list]) -> list[tuple[str, dict]]:
    if not grid:
        return []
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, combo))
        if len(keys) == 1:
            name = fmt.setting(combo[0])
        else:
            name = ",".join(f"{k.rsplit('.', 1)[-1]}={fmt.setting(v)}" for k, v in settings.items())
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
            raise StlmError(
                f"base: config file {str(base_path)!r} (from {spec.base!r}, relative to the sweep file) does not exist."
            )
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


def solve(
    cfg: Config,
    budget: BudgetSpec | None,
    target: int | None = None,
    nearest: int | None = None,
    flops: float | None = None,
    workers: int = 1,
) -> Config:
    """Re-solve cfg.model to the budget (StlmError with the nearest feasible sizes when it cannot):
    to `target` (default: budget.target when it is one size), as near `nearest` (the control's count)
    as the tolerance allows; then train.max_steps from `flops` (the FLOPs the trial must get) or
    budget.tokens."""
    if budget is None:
        return cfg
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
        raise StlmError(
            f"{where} cannot meet {what} (free: {budget.free}, tolerance {budget.tolerance:g}): {e}"
        ) from None


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


def load_sweep(path: str | Path, overrides: Iterable[str] = ()) -> Sweep:
    """Read, validate and resolve a sweep file; every arm is built and budget-solved here."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise StlmError(f"Sweep file {str(p)!r} {'is a directory, not a file' if p.is_dir() else 'does not exist'}.")
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
        held = next(n for n in names if "@" in n)
        raise StlmError(
            f"budget.target is a list, so arm names get an @size suffix; arm {held!r} already holds an '@'. Rename it."
        )
    control = spec.control or names[0]
    budget, workers = spec.budget, spec.resources.workers
    arms = []
    for size in budget.targets if budget is not None else [None]:
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
            counted = count_params(cfg.model)
            arm = Arm(
                name=full,
                settings=settings,
                data=arm_data,
                cfg=cfg,
                count=counted,
                solved=solved,
                base=name,
                size=size,
                match=kw.get("nearest"),
                train_flops=kw.get("flops"),
            )
            if ctrl is None and budget is not None and (budget.compute == "match" or budget.flops is not None):
                # the control's training FLOPs: what every arm at this size gets
                arm.train_flops = kw.get("flops") or float(
                    counted.flops_per_token * tokens_per_step(cfg, workers) * cfg.train.max_steps
                )
            ctrl = ctrl or arm
            solved_arms[name] = arm
        arms += [solved_arms[n] for n in names]  # the sweep file's order
    return Sweep(spec=spec, path=path, overrides=overrides, arms=arms)


def absolutize(sweep: Sweep) -> None:
    """Relative paths in the config are relative to the driver's cwd; workers run elsewhere."""
    for arm in sweep.arms:
        d, e = arm.data.setdefault("data", {}), arm.data.setdefault("eval", {})
        src = d.get("source")
        if isinstance(src, str) and Path(src).expanduser().exists():
            d["source"] = str(Path(src).expanduser().resolve())
        for sec, key in ((d, "cache_dir"), (d, "gpt2_vocab_file"), (e, "data_dir")):
            if sec.get(key):
                sec[key] = str(Path(sec[key]).expanduser().resolve())
        cfg = arm.cfg
        arm.cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(
                cfg.data,
                source=d.get("source", cfg.data.source),
                cache_dir=d.get("cache_dir"),
                gpt2_vocab_file=d.get("gpt2_vocab_file"),
            ),
            eval=dataclasses.replace(cfg.eval, data_dir=e.get("data_dir")),
        )
