"""The searched knobs of a sweep and their importances for the primary metric: Optuna's own fANOVA
(optuna.importance.get_param_importances, seeded) over an in-memory study of the finished trials. The report
shows them as knobs.png (plots.py), the table "Search: knob importances" and the parent run's importance/<knob>.

Which knobs were searched, and over what: the sweep records its space on the parent run as the
param `sweep.search` (Optuna distributions as JSON, see parent_params). A trial's sampled values
are its params `search.<knob>`. For a sweep that recorded no space the knobs are the `search.*`
params, else the params that vary between the trials of one arm, with ranges from the values seen.
Arm and seed are the cells of the sweep, never knobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stlm.fmt import missing, num
from stlm.sweep.analysis import compare
from stlm.sweep.plan.space import decode_space
from stlm.tracking import param_value

if TYPE_CHECKING:
    from stlm.sweep.analysis.arms import Analysis
    from stlm.sweep.analysis.trials import Trial


VALUE_PREFIX = "search."  # child-run params: search.<knob> = the value the trial used


# never knobs: the cell, and what the sweep derives from a trial's config
NOT_KNOBS = {"arm", "seed", "train.seed", "sweep.arm", "sweep.seed", "flops_per_token"}

NOT_KNOB_PREFIXES = ("params.", "sweep.", "arch.")

IMPORTANCE_SEED = 0  # fANOVA's random forest: the same trials give the same importances


@dataclass
class Knob:
    name: str
    dist: Any  # optuna BaseDistribution (declared, or inferred from the values)
    declared: bool
    values: dict[str, Any] = field(default_factory=dict)  # run_id -> the value the trial used

    @property
    def categorical(self) -> bool:
        from optuna.distributions import CategoricalDistribution  # lazy: optuna only when a search is reported

        return isinstance(self.dist, CategoricalDistribution)

    @property
    def log_axis(self) -> bool:
        """Log x: searched on a log scale, or positive values spanning two decades or more."""
        if self.categorical:
            return False
        if getattr(self.dist, "log", False):
            return True
        xs = [float(v) for v in self.values.values()]
        return bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 100

    def searched_range(self) -> str:
        seen = [self.values[k] for k in self.values]
        observed = (
            "seen " + ", ".join(dict.fromkeys(map(str, seen)))
            if self.categorical
            else f"seen {num(min(seen))}..{num(max(seen))}"
        )
        if not self.declared:
            return observed
        d = self.dist
        if self.categorical:
            return f"categorical [{', '.join(map(str, d.choices))}]"
        kind = "int" if type(d).__name__ == "IntDistribution" else "loguniform" if d.log else "uniform"
        step = f" step {num(d.step)}" if getattr(d, "step", None) not in (None, 1) else ""
        return f"{kind} {num(d.low)}..{num(d.high)}{step} ({observed})"


@dataclass
class KnobReport:
    knobs: list[Knob]  # the searched knobs that vary across the finished trials
    importances: dict[str, float]  # knob -> fANOVA importance (sums to 1); empty when absent
    n_trials: int  # finished trials the importances are computed over
    absent: str = ""  # why there are no importances
    constant: list[str] = field(default_factory=list)  # searched, but one value in every trial
    declared: bool = True  # the space came from the parent run (else inferred from the trials)

    def mlflow_metrics(self) -> dict[str, float]:
        return {compare.mlflow_key("importance", k): float(v) for k, v in self.importances.items()}


def analyse_knobs(a: Analysis, space_text: str | None) -> KnobReport:
    """The searched knobs of the finished trials and Optuna's importances of them for a.primary."""
    space = decode_space(space_text)
    trials = [t for t in a.finished if not missing(t.value(a.primary))]
    names = list(space) if space is not None else _inferred_names(a.finished)
    if not names:
        why = (
            "the sweep searched no knob (its parent run records no search space and no param varies "
            "between the trials of an arm)"
            if space is None
            else "the sweep searched no knob"
        )
        return KnobReport([], {}, 0, absent=why, declared=space is not None)

    knobs, constant = [], []
    for name in names:
        raw = {t.run_id: _param(t, name) for t in trials}
        raw = {k: v for k, v in raw.items() if v is not None}
        if not raw:
            constant.append(name)
            continue
        dist = space[name] if space is not None else _infer(list(raw.values()))
        knob = Knob(name, dist, space is not None)
        for rid, text in raw.items():
            knob.values[rid] = _parse(knob, text)
        knob.dist = _fit(knob.dist, list(knob.values.values()))  # a value outside the record (a changed range)
        if len({repr(v) for v in knob.values.values()}) > 1:
            knobs.append(knob)
        else:
            constant.append(name)
    report = KnobReport(knobs, {}, 0, constant=constant, declared=space is not None)
    usable = [t for t in trials if all(t.run_id in k.values for k in knobs)]
    report.n_trials = len(usable)
    if len(trials) < 2:
        report.absent = f"fewer than 2 finished trials have {a.primary} ({len(trials)} of {len(a.finished)} finished)"
    elif not knobs:
        report.absent = (
            f"no searched knob varies across the finished trials ({', '.join(constant)}: one value, or none recorded)"
        )
    elif len(usable) < 2:
        report.absent = (
            f"fewer than 2 finished trials have {a.primary} and every knob's value "
            f"({len(usable)} of {len(a.finished)} finished)"
        )
    elif len({t.value(a.primary) for t in usable}) < 2:
        report.absent = f"every finished trial has the same {a.primary}: there is no variance to attribute"
    else:
        report.importances = importances(usable, knobs, a.primary, a.modes[0])
    return report


def importances(trials: list[Trial], knobs: list[Knob], metric: str, mode: str) -> dict[str, float]:
    """optuna.importance.get_param_importances (fANOVA, seeded) over an in-memory study of the trials."""
    import optuna  # lazy: optuna only when a search is reported
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    dists = {k.name: k.dist for k in knobs}
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={k.name: k.values[t.run_id] for k in knobs}, distributions=dists, value=t.value(metric)
            )
            for t in trials
        ]
    )
    got = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED))
    return {k: float(v) for k, v in got.items()}


def best_per_arm(a: Analysis) -> dict[str, Trial]:
    """Each arm's best finished trial on the primary metric, over all its seeds and samples."""
    scored = [t for t in a.finished if not missing(t.value(a.primary))]  # an arm without a value has no best
    return {t.arm: t for t in compare.best_per_cell(scored, lambda t: t.arm, lambda t: t.value(a.primary), a.modes[0])}


def _param(t: Trial, name: str) -> str | None:
    """The value a trial used: its search.<knob> param, else the knob in its flattened config."""
    return t.params.get(VALUE_PREFIX + name, t.params.get(name))


def _inferred_names(trials: list[Trial]) -> list[str]:
    """A sweep that recorded no space: its search.* params, else the params varying within an arm."""
    names = sorted({k[len(VALUE_PREFIX) :] for t in trials for k in t.params if k.startswith(VALUE_PREFIX)})
    if not names:
        by_arm: dict[str, dict[str, set]] = {}
        for t in trials:
            for k, v in t.params.items():
                by_arm.setdefault(t.arm, {}).setdefault(k, set()).add(v)
        names = sorted({k for seen in by_arm.values() for k, vs in seen.items() if len(vs) > 1})
    return [n for n in names if n not in NOT_KNOBS and not n.startswith(NOT_KNOB_PREFIXES)]


def _number(text: str) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _infer(texts: list[str]):
    """A distribution for values seen as param strings: ints, floats (log when >= 2 decades) or categories."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # lazy: optuna

    nums = [_number(s) for s in texts]
    if texts and all(x is not None for x in nums):
        if all(float(x).is_integer() and "." not in s and "e" not in s.lower() for x, s in zip(nums, texts)):
            return IntDistribution(int(min(nums)), int(max(nums)))
        lo, hi = min(nums), max(nums)
        return FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100) if lo < hi else FloatDistribution(lo, lo)
    return CategoricalDistribution(sorted(set(texts)))


def _parse(knob: Knob, text: str) -> Any:
    """A param string back as the distribution's value (MLflow keeps params as text)."""
    if knob.categorical:
        return next((c for c in knob.dist.choices if param_value(c) == text or str(c) == text), text)
    x = _number(text)
    if x is None:
        return text
    return int(x) if type(knob.dist).__name__ == "IntDistribution" else x


def _fit(dist, values: list):
    """`dist` widened to hold every value the trials used (Optuna refuses a trial outside its distribution)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # lazy: optuna

    if not values:
        return dist
    if isinstance(dist, CategoricalDistribution) or any(isinstance(v, str) for v in values):
        choices = list(dist.choices) if isinstance(dist, CategoricalDistribution) else []
        return CategoricalDistribution(choices + [v for v in dict.fromkeys(values) if v not in choices])
    if all(_holds(dist, v) for v in values):
        return dist
    lo, hi = min(dist.low, *values), max(dist.high, *values)
    if isinstance(dist, IntDistribution):
        return IntDistribution(int(lo), int(hi), log=dist.log and lo > 0)
    return FloatDistribution(lo, hi, log=dist.log and lo > 0)


def _holds(dist, value) -> bool:
    """A numeric distribution holds `value`: within its bounds and on its step grid (what Optuna checks
    before it takes a trial)."""
    if not dist.low <= value <= dist.high:
        return False
    step = getattr(dist, "step", None)
    if step is None:
        return True
    k = (value - dist.low) / step
    return math.isclose(k, round(k), abs_tol=1e-8)
