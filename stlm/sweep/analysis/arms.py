"""The statistics of a sweep's arms: per-arm summaries and paired differences against the control, from its trials."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from stlm import stats
from stlm.errors import StlmError
from stlm.sweep.analysis import compare
from stlm.sweep.analysis.trials import BASE_FINAL_METRICS, EVAL_RE, Trial
from stlm.sweep.plan.sweep import split_sized


@dataclass
class Analysis:
    name: str
    parent_run_id: str
    tracking_uri: str
    metrics: list[str]  # objectives; metrics[0] is the primary metric
    modes: list[str]
    control: str
    arms: list[str]
    finished: list[Trial]
    excluded: list[Trial]  # failed / stopped / running: listed, not averaged
    final_keys: list[str]  # metrics summarised per arm
    summaries: dict[str, dict[str, stats.Summary]]  # key -> arm -> Summary
    diffs: dict[str, dict[str, stats.PairedDiff | None]]  # key -> arm -> treatment - control
    pareto: list[Trial]
    pareto_x: str = "params.total"  # the second objective, plotted against the primary one
    chosen: list[Trial] = field(default_factory=list)  # one finished trial per (arm, seed): what the statistics use
    control_of: dict[str, str] = field(default_factory=dict)  # arm -> its control (the control arm at its size)
    sizes: list[str] = field(default_factory=list)  # size labels of a sized sweep (arm names end in @label)
    record: dict = field(default_factory=dict)  # compare.record of the primary metric: what MLflow and sweep.json get
    # analysis.knobs.KnobReport, the searched knobs and their importances (build_report sets it); untyped here
    # because knobs.py reads an Analysis, and the import would go both ways
    knobs: Any = None

    def is_control(self, arm: str) -> bool:
        return self.control_of.get(arm, self.control) == arm

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def searched(self) -> bool:
        """Several finished trials per (arm, seed) (an Optuna search): the best of each cell is compared."""
        return len(self.chosen) < len(self.finished)

    def by_arm(self) -> dict[str, list[Trial]]:
        out: dict[str, list[Trial]] = defaultdict(list)
        for t in self.chosen:
            out[t.arm].append(t)
        return out


def best_per_cell(trials: list[Trial], metric: str, mode: str) -> list[Trial]:
    """One trial per (arm, seed): the best on `metric` when a search ran several samples in a cell
    (compare.RULE, the rule every output of a sweep uses)."""
    return compare.best_per_cell(
        trials, lambda t: (t.arm, t.seed if t.seed is not None else t.run_id), lambda t: t.value(metric), mode
    )


def _final_keys(trials: list[Trial], metrics: list[str]) -> list[str]:
    keys = [m for m in metrics if m not in ("params", "params.total")]
    keys += [k for k in BASE_FINAL_METRICS if k not in keys]
    evals = sorted({k for t in trials for k in t.metrics if EVAL_RE.match(k) and not k.endswith("_stderr")})
    keys += evals
    return [k for k in keys if any(t.value(k) is not None for t in trials)]


def _per_seed(trials: list[Trial], key: str) -> dict[Any, float]:
    """seed -> value; two finished runs with one seed (a resumed duplicate) keep the later one."""
    out = {}
    for t in trials:
        v = t.value(key)
        if v is not None and not math.isnan(v):
            out[t.seed if t.seed is not None else t.run_id] = v
    return out


def analyse(
    trials: list[Trial],
    *,
    name: str,
    parent_run_id: str,
    tracking_uri: str,
    metrics: list[str],
    modes: list[str],
    control: str | None,
    order: list[str] | None = None,
    sizes: list[str] | None = None,
) -> Analysis:
    """The comparison of the arms from a sweep's trials: every final metric per arm and against its control over
    one trial per (arm, seed) cell, the excluded trials, and the Pareto front of a multi-objective sweep."""
    finished = [t for t in trials if t.status == "finished"]
    excluded = [t for t in trials if t.status != "finished"]
    if not finished:
        by_status = sorted(Counter(t.status for t in trials).items())
        counts = ", ".join(f"{s}: {n}" for s, n in by_status) or "no child runs at all"
        raise StlmError(
            f"Sweep parent run {parent_run_id} in {tracking_uri!r} holds no finished trials ({counts}); "
            "nothing to report. Wait for the sweep to finish, or check its failed trials in the MLflow UI."
        )
    rank = {a: i for i, a in enumerate(order or [])}  # the sweep file's arm order, else by name
    arms = sorted({t.arm for t in finished}, key=lambda a: (rank.get(a, len(rank)), a))
    sizes = list(sizes or [])
    arms, control, control_of = controls(arms, control, sizes, name)
    chosen = best_per_cell(finished, metrics[0], modes[0])
    by_arm: dict[str, list[Trial]] = defaultdict(list)
    for t in chosen:
        by_arm[t.arm].append(t)
    keys = _final_keys(finished, metrics)
    summaries: dict[str, dict[str, stats.Summary]] = {}
    diffs: dict[str, dict[str, stats.PairedDiff | None]] = {}
    for key in keys:
        per_seed = {arm: _per_seed(by_arm[arm], key) for arm in arms}
        summaries[key], diffs[key] = compare.compare_arms(per_seed, arms, control_of)
    primary = metrics[0] if metrics[0] in summaries else (keys[0] if keys else metrics[0])
    points = [(t.arm, t.seed, t.n_params, t.value(primary)) for t in chosen] if sizes else None
    rec = compare.record(primary, summaries.get(primary, {}), diffs.get(primary, {}), control_of, arms, points)
    pareto, x_key = pareto_trials(finished, metrics, modes)
    return Analysis(
        name,
        parent_run_id,
        tracking_uri,
        metrics,
        modes,
        control,
        arms,
        finished,
        excluded,
        keys,
        summaries,
        diffs,
        pareto,
        x_key,
        chosen,
        control_of,
        sizes,
        rec,
    )


def controls(arms: list[str], control: str | None, sizes: list[str], name: str):
    """(arms with the control first, the control, arm -> its control): a sized sweep compares 'rope@10M' with
    the control at 10M. The control defaults to an arm named control or baseline, else the first."""
    if control is None:
        control = next((a for a in ("control", "baseline") if a in arms), arms[0])
    if sizes:
        base = split_sized(control)[0]
        control_of = {arm: f"{base}@{split_sized(arm)[1]}" for arm in arms}
        missing = sorted({c for c in control_of.values() if c not in arms})
        if missing:
            raise StlmError(
                f"Control arm {base!r} has no finished trial at {', '.join(missing)} in sweep {name!r}; "
                f"arms with finished trials: {', '.join(arms)}."
            )
        return arms, control_of[arms[0]], control_of
    if control not in arms:
        raise StlmError(
            f"Control arm {control!r} has no finished trial in sweep {name!r}; arms with finished trials: "
            f"{', '.join(arms)}."
        )
    arms = [control] + [a for a in arms if a != control]
    return arms, control, {arm: control for arm in arms}


def pareto_trials(finished: list[Trial], metrics: list[str], modes: list[str]) -> tuple[list[Trial], str]:
    """A multi-objective sweep's Pareto front of the primary metric against the second objective (the parameter
    count when it is one), and that objective's key; no front for one objective."""
    x_key = "params.total"
    if len(metrics) < 2:
        return [], x_key
    x_key = next((m for m in metrics[1:] if m in ("params", "params.total")), metrics[1])
    y_key = metrics[0]
    mode_of = dict(zip(metrics, modes))
    pts = [(t, t.value(y_key), t.value(x_key)) for t in finished]
    pts = [(t, y, x) for t, y, x in pts if y is not None and x is not None]
    idx = stats.pareto_front([(x, y) for _, y, x in pts], (mode_of.get(x_key, "min"), mode_of.get(y_key, "min")))
    return [pts[i][0] for i in idx], x_key
