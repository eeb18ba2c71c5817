"""The sweep file validated: every key checked, every error naming its dotted path (the schema: schema.py)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from stlm.config import (
    EvalConfig,
    TrackingConfig,
    from_dict,
)
from stlm.errors import StlmError
from stlm.models.params import FREE_DIMS
from stlm.sweep.plan.schema import (
    ALGORITHMS,
    CONFIG_KEYS,
    PARAM_TYPES,
    SCHEDULERS,
    ArchitectureSpec,
    ParamSpec,
    ResourcesSpec,
    SchedulerSpec,
    SweepSpec,
)


def check_config_key(key: str, where: str) -> None:
    """An axis must name a config leaf ('model.ffn'); say which one was meant otherwise."""
    if key in CONFIG_KEYS:
        return
    sections = {k.rsplit(".", 1)[0] for k in CONFIG_KEYS}
    if key in sections:
        raise StlmError(
            f"{where}: {key!r} is a config section, not a value; name a key inside it "
            f"(e.g. {next(k for k in CONFIG_KEYS if k.startswith(key + '.'))!r})."
        )
    close = difflib.get_close_matches(key, CONFIG_KEYS, n=1, cutoff=0.5)
    if not close:  # 'model.positonal_encoding' -> compare the last part too
        last = key.rsplit(".", 1)[-1]
        by_last = difflib.get_close_matches(last, [k.rsplit(".", 1)[-1] for k in CONFIG_KEYS], n=1, cutoff=0.5)
        close = [k for k in CONFIG_KEYS if by_last and k.endswith("." + by_last[0])][:1]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise StlmError(
        f"{where}: {key!r} is not a config key.{hint} Axes must be dotted config keys "
        "such as model.positional or train.lr (see stlm/config.py)."
    )


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
    """Each section in turn, in this order: the first problem found is the one reported."""
    _validate_name(spec.name)
    if spec.budget is not None:
        _validate_budget(spec)
    _validate_axes(spec)
    _validate_seeds(spec.seeds)
    _validate_search(spec)
    _validate_scheduler(spec.scheduler)
    _validate_resources(spec.resources)
    _validate_objectives(spec)
    from_dict(EvalConfig, spec.eval, "eval")
    from_dict(TrackingConfig, spec.tracking, "tracking")
    if spec.max_failures < 0:
        raise StlmError("max_failures must be >= 0.")


def _validate_name(name: str) -> None:
    if not name or not str(name).replace("-", "_").replace(".", "_").isidentifier():
        raise StlmError(
            f"name: {name!r} must be a short identifier (letters, digits, _ - .): "
            "it names the experiment directory and MLflow tags."
        )


def _validate_axes(spec: SweepSpec) -> None:
    """The grid's keys and values, the arms' keys and names."""
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


def _validate_seeds(seeds: list[int]) -> None:
    if not seeds:
        raise StlmError("seeds: give at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise StlmError(f"seeds: {seeds} has repeats.")


def _validate_search(spec: SweepSpec) -> None:
    """Checks the search section and puts it in its parsed form: params as ParamSpecs, architecture as an
    ArchitectureSpec or None."""
    s = spec.search
    _choice(s.algorithm, ALGORITHMS, "search.algorithm")
    if s.samples < 1:
        raise StlmError(f"search.samples must be >= 1, got {s.samples}.")
    s.params = _parse_params(s.params)
    for key in s.params:
        setters = [f"grid.{key}"] if key in spec.grid else []
        setters += [f"arms[{i}] ({a.name})" for i, a in enumerate(spec.arms) if key in a.set]
        if setters:
            raise StlmError(
                f"search.params.{key}: {setters[0]} also sets it; a key is either an arm's choice "
                "or searched, not both."
            )
    if isinstance(s.architecture, ArchitectureSpec) or s.architecture is True:
        _validate_architecture_search(spec)
    if s.architecture is True:
        s.architecture = ArchitectureSpec()
    if s.architecture is False:
        s.architecture = None


def _validate_architecture_search(spec: SweepSpec) -> None:
    """The shape is searched inside a parameter budget, by solving d_model, and owns the shape's keys."""
    if spec.budget is None:
        raise StlmError("search.architecture needs a `budget`: the shape is searched inside a parameter budget.")
    if spec.budget.free != "d_model":
        raise StlmError(
            "search.architecture searches n_layers, n_heads and ffn_multiple and solves "
            "d_model: set budget.free: d_model."
        )
    shape_keys = ("model.n_layers", "model.n_heads", "model.n_kv_heads", "model.ffn_multiple", "model.d_model")
    clash = [k for k in spec.search.params if k in shape_keys]
    if clash:
        raise StlmError(f"search.params.{clash[0]}: already searched by search.architecture; remove it.")


def _validate_scheduler(sc: SchedulerSpec) -> None:
    _choice(sc.type, SCHEDULERS, "scheduler.type")
    if sc.type == "pbt":
        raise StlmError(
            "scheduler.type: pbt is not supported. Population-based training mutates a trial's "
            "hyperparameters mid-run and copies weights between trials; that breaks the sweep's "
            "contract that every (arm, seed) cell trains one fixed configuration from its own seed, "
            "and each trial is a nested Ray Train run whose checkpoints Tune does not own. Use asha "
            "(early stopping on `step`) or none."
        )
    if sc.time_attr != "step":
        raise StlmError(
            f"scheduler.time_attr: only 'step' is reported monotonically by every trial, got {sc.time_attr!r}."
        )
    if sc.grace_period < 1 or sc.reduction_factor <= 1:
        raise StlmError("scheduler: grace_period must be >= 1 and reduction_factor > 1.")


def _validate_resources(r: ResourcesSpec) -> None:
    if r.workers < 1 or r.cpus_per_worker < 0 or r.gpus_per_worker < 0:
        raise StlmError("resources: workers must be >= 1 and cpus_per_worker / gpus_per_worker >= 0.")
    if r.gpus_per_worker > 1 and not float(r.gpus_per_worker).is_integer():
        raise StlmError(f"resources.gpus_per_worker: above 1 it must be whole, got {r.gpus_per_worker}.")
    if r.max_concurrent is not None and r.max_concurrent < 1:
        raise StlmError("resources.max_concurrent must be >= 1 (or null).")
    if r.stall_timeout is not None and not r.stall_timeout > 0:
        raise StlmError(
            f"resources.stall_timeout must be a positive number of seconds (or null: derived from each trial's "
            f"report intervals), got {r.stall_timeout}."
        )


def _validate_objectives(spec: SweepSpec) -> None:
    """One mode (min or max) per metric.

    Several objectives are allowed with any search and scheduler: Optuna's TPE handles them (nsga2 is the
    usual choice), and ASHA stops trials on the first metric.
    """
    metrics, modes = spec.metrics, spec.modes
    if len(metrics) != len(modes):
        raise StlmError(f"mode: give one mode per metric ({len(metrics)} metrics, {len(modes)} modes).")
    for i, m in enumerate(modes):
        _choice(m, ("min", "max"), f"mode[{i}]" if isinstance(spec.mode, list) else "mode")


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
        raise StlmError(
            "budget.flops fixes every arm's training FLOPs already; drop budget.tokens / budget.compute "
            "(tokens then follow from each arm's FLOPs per token)."
        )
    if b.target is None and b.tokens is None and b.flops is None and b.compute == "none":
        raise StlmError(
            "budget: give a parameter target (budget.target), a compute budget (budget.compute: match, "
            "budget.tokens or budget.flops), or both."
        )
    if b.tokens is not None or b.flops is not None or b.compute == "match":
        for key in ("train.max_steps",):
            if key in spec.search.params or key in spec.grid or any(key in a.set for a in spec.arms):
                raise StlmError(
                    f"{key} is solved from the compute budget (budget.compute / tokens / flops); "
                    "it cannot also be an axis or a searched knob."
                )


def parse_spec(data: dict) -> SweepSpec:
    if "name" not in data:
        raise StlmError("A sweep file needs a `name` (it names the experiment directory and the MLflow tags).")
    try:
        spec = from_dict(SweepSpec, data)
    except StlmError as e:
        raise StlmError(str(e).replace("Unknown config key", "Unknown sweep key")) from None
    _validate_spec(spec)
    return spec
