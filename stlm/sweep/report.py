"""`stlm report SWEEP_DIR_OR_PARENT_RUN`: the statistics report of a sweep, read back from MLflow.

    stlm report sweep_runs/ffn_sharing-2026...      # a sweep dir (holds sweep.json)
    stlm report 3f2a...c9 --tracking-uri sqlite:////abs/mlflow.db --control baseline

The sweep wrote one parent run and one child run per trial (tags stlm.arm, stlm.seed,
stlm.status; params incl. params.total; metric histories keyed by step; final
eval/<task>/acc metrics). This module turns them into:

  report.md / report.html   per-arm mean, sd and 95% t interval of every final metric
                            across seeds; the PAIRED difference of every arm against the
                            control arm (paired by seed) with its 95% interval and whether
                            it excludes zero; failed / stopped trials listed, not averaged
  curves.png                loss curves per arm (mean across seeds, band = +/- 1 sd)
  diffs.png                 paired differences vs control with their intervals
  params.png                final metric against parameter count, one point per trial
  benchmarks.png            benchmark accuracy per arm and task with error bars
  pareto.png                multi-objective sweeps: the Pareto front (metric vs params)
  knobs.png                 a search: the metric against each searched knob, and the knobs'
                            importances (Optuna's fANOVA) as a table and parent-run metrics
                            importance/<knob> (search_report.py)

and logs them to the parent run as artifacts under report/. The statistics live in
stlm.stats (Student t and power from scipy.stats).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from stlm import stats
from stlm.errors import StlmError
from stlm.sweep import compare, search_report
from stlm.sweep.spec import split_sized

CURVE_METRICS = ("val_bpb", "val_loss", "train_loss")  # histories plotted per arm
BASE_FINAL_METRICS = ("val_bpb", "val_loss", "train_loss")  # final values summarised per arm
EVAL_RE = re.compile(r"^eval/([^/]+)/(.+)$")  # eval/<task>/<metric>
PARAM_ALIASES = {"params": ("params.total",)}  # a sweep's `metric: [val_bpb, params]` objective
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
STATUS_FROM_MLFLOW = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "stopped", "RUNNING": "running", "SCHEDULED": "running"}


# --------------------------------------------------------------------------- reading MLflow


@dataclass
class Trial:
    run_id: str
    run_name: str
    arm: str
    seed: Any  # int when the tag parses as one
    status: str  # finished | failed | stopped | running
    params: dict[str, str]
    metrics: dict[str, float]  # final (latest-step) values
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    error: str = ""

    def value(self, key: str) -> float | None:
        """A final metric, or a numeric param (params.total, flops_per_token) under the same name."""
        if key in self.metrics:
            return self.metrics[key]
        for k in (key, *PARAM_ALIASES.get(key, ())):
            if k in self.params:
                try:
                    return float(self.params[k])
                except ValueError:
                    return None
        return None

    @property
    def n_params(self) -> float | None:
        return self.value("params.total")


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _get_run(client, run_id: str, tracking_uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise StlmError(
            f"MLflow run {run_id!r} does not exist in the tracking store {tracking_uri!r} "
            f"(pass the sweep's parent run id, or the sweep dir holding sweep.json; set --tracking-uri). [{e.error_code}]"
        ) from None


def _parse_seed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def load_trials(client, parent, tracking_uri: str) -> list[Trial]:
    """All child runs of the parent run, with final metrics and the curve histories."""
    pid = parent.info.run_id
    runs, token = [], None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{pid}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    trials = []
    for r in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        tags = r.data.tags
        status = tags.get("stlm.status") or STATUS_FROM_MLFLOW.get(r.info.status, r.info.status.lower())
        history = {}
        for key in CURVE_METRICS:
            if key in r.data.metrics:
                pts = client.get_metric_history(r.info.run_id, key)
                history[key] = sorted((m.step, m.value) for m in pts)
        trials.append(
            Trial(
                run_id=r.info.run_id,
                run_name=r.info.run_name or r.info.run_id[:8],
                arm=tags.get("stlm.arm", "(all)"),
                seed=_parse_seed(tags.get("stlm.seed")),
                status=status,
                params=dict(r.data.params),
                metrics=dict(r.data.metrics),
                history=history,
                error=tags.get("stlm.error", ""),
            )
        )
    return trials


def _tag_list(text: str | None) -> list[str] | None:
    """A tag holding a list: JSON ('["val_bpb", "params.total"]') or comma-separated."""
    if not text:
        return None
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        v = [t.strip() for t in text.split(",") if t.strip()]
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


# --------------------------------------------------------------------------- statistics


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
    knobs: search_report.KnobReport | None = None  # the searched knobs and their importances (build_report sets it)

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
    return compare.best_per_cell(trials, lambda t: (t.arm, t.seed if t.seed is not None else t.run_id),
                                 lambda t: t.value(metric), mode)


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
    trials: list[Trial], *, name: str, parent_run_id: str, tracking_uri: str, metrics: list[str], modes: list[str],
    control: str | None, order: list[str] | None = None, sizes: list[str] | None = None,
) -> Analysis:
    finished = [t for t in trials if t.status == "finished"]
    excluded = [t for t in trials if t.status != "finished"]
    if not finished:
        counts = ", ".join(f"{s}: {n}" for s, n in sorted(_count(t.status for t in trials).items())) or "no child runs at all"
        raise StlmError(
            f"Sweep parent run {parent_run_id} in {tracking_uri!r} holds no finished trials ({counts}); "
            "nothing to report. Wait for the sweep to finish, or check its failed trials in the MLflow UI."
        )
    rank = {a: i for i, a in enumerate(order or [])}  # the sweep file's arm order, else by name
    arms = sorted({t.arm for t in finished}, key=lambda a: (rank.get(a, len(rank)), a))
    sizes = list(sizes or [])
    if control is None:
        control = next((a for a in ("control", "baseline") if a in arms), arms[0])
    if sizes:  # a sized sweep: 'rope@10M' is compared with the control at 10M
        base = split_sized(control)[0]
        control_of = {arm: f"{base}@{split_sized(arm)[1]}" for arm in arms}
        missing = sorted({c for c in control_of.values() if c not in arms})
        if missing:
            raise StlmError(f"Control arm {base!r} has no finished trial at {', '.join(missing)} in sweep {name!r}; "
                            f"arms with finished trials: {', '.join(arms)}.")
        control = control_of[arms[0]]
    else:
        if control not in arms:
            raise StlmError(
                f"Control arm {control!r} has no finished trial in sweep {name!r}; arms with finished trials: {', '.join(arms)}."
            )
        arms = [control] + [a for a in arms if a != control]
        control_of = {arm: control for arm in arms}

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

    pareto: list[Trial] = []
    x_key = "params.total"
    if len(metrics) > 1:
        x_key = next((m for m in metrics[1:] if m in ("params", "params.total")), metrics[1])
        y_key = metrics[0]
        mode_of = dict(zip(metrics, modes))
        pts = [(t, t.value(y_key), t.value(x_key)) for t in finished]
        pts = [(t, y, x) for t, y, x in pts if y is not None and x is not None]
        idx = stats.pareto_front([(x, y) for _, y, x in pts], (mode_of.get(x_key, "min"), mode_of.get(y_key, "min")))
        pareto = [pts[i][0] for i in idx]
    return Analysis(name, parent_run_id, tracking_uri, metrics, modes, control, arms, finished, excluded, keys, summaries,
                    diffs, pareto, x_key, chosen, control_of, sizes, rec)


def _count(items) -> dict:
    out: dict = defaultdict(int)
    for x in items:
        out[x] += 1
    return dict(out)


# --------------------------------------------------------------------------- formatting


def fmt(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if abs(x) >= 10_000:
        return f"{x:+,.0f}" if signed else f"{x:,.0f}"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def fmt_ci(lo: float | None, hi: float | None, signed: bool = False) -> str:
    if lo is None:
        return "n/a"
    return f"[{fmt(lo, signed)}, {fmt(hi, signed)}]"


def _verdict(d: stats.PairedDiff | None, mode: str | None) -> str:
    """excludes zero: yes/no (n/a without an interval); for the primary metric say which way is better."""
    if d is None or d.excludes_zero is None:
        return "n/a"
    if not d.excludes_zero:
        return "no"
    if mode is None:
        return "yes"
    better = (d.mean < 0) == (mode == "min")
    return "yes (better)" if better else "yes (worse)"


def summary_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    """One row per arm for the primary metric: the table `stlm report` prints."""
    key, mode = a.primary, a.modes[0]
    versus = "the control at its size" if a.sizes else a.control
    head = ["arm", "n", f"{key} mean", "sd", "95% CI", f"diff vs {versus}", "diff 95% CI", "excl. 0", "params",
            "params vs control"]
    rows = []
    by_arm = a.by_arm()
    mean_params = {arm: _mean([t.n_params for t in by_arm[arm] if t.n_params is not None]) for arm in a.arms}
    for arm in a.arms:
        s = a.summaries.get(key, {}).get(arm)
        d = a.diffs.get(key, {}).get(arm)
        n_params = [t.n_params for t in by_arm[arm] if t.n_params is not None]
        rows.append(
            [
                arm,
                str(s.n if s else 0),
                fmt(s.mean if s else None),
                fmt(s.std if s else None),
                fmt_ci(s.lo, s.hi) if s else "n/a",
                "(control)" if a.is_control(arm) else fmt(d.mean if d else None, signed=True),
                "" if a.is_control(arm) else (fmt_ci(d.lo, d.hi, signed=True) if d else "n/a"),
                "" if a.is_control(arm) else _verdict(d, mode),
                f"{sum(n_params) / len(n_params):,.0f}" if n_params else "n/a",
                _gap(mean_params[arm], mean_params.get(a.control_of.get(arm, a.control))),
            ]
        )
    return head, rows


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _gap(n: float | None, ctrl: float | None) -> str:
    return "n/a" if n is None or not ctrl else f"{(n - ctrl) / ctrl:+.2%}"


def param_gap_lines(a: Analysis) -> list[str]:
    """The largest pairwise gap in parameters between the arms of each size (from the trials' params.total)."""
    by_arm, out = a.by_arm(), []
    groups: dict[str, list[float]] = defaultdict(list)
    for arm in a.arms:
        ns = [t.n_params for t in by_arm[arm] if t.n_params is not None]
        if ns:
            groups[split_sized(arm)[1] if a.sizes else ""].append(sum(ns) / len(ns))
    for size, counts in groups.items():
        if len(counts) > 1:
            gap = (max(counts) - min(counts)) / min(counts)
            out.append(f"Largest pairwise parameter gap between the arms{' at ' + size if size else ''}: {gap:.2%}.")
    return out


def metrics_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["metric", "arm", "n", "mean", "sd", "95% CI"]
    rows = []
    for key in a.final_keys:
        for arm in a.arms:
            s = a.summaries[key].get(arm)
            if s:
                rows.append([key, arm, str(s.n), fmt(s.mean), fmt(s.std), fmt_ci(s.lo, s.hi)])
    return head, rows


def diffs_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["metric", "arm", "pairs", f"mean (arm - {'control' if a.sizes else a.control})", "sd", "95% CI", "excludes 0"]
    rows = []
    mode_of = dict(zip(a.metrics, a.modes))
    for key in a.final_keys:
        for arm in [x for x in a.arms if not a.is_control(x)]:
            d = a.diffs[key].get(arm)
            if d is None:
                rows.append([key, arm, "0", "n/a", "n/a", "n/a", "n/a"])
            else:
                mode = mode_of.get(key) or ("max" if EVAL_RE.match(key) else "min")
                rows.append([key, arm, str(d.n), fmt(d.mean, True), fmt(d.std), fmt_ci(d.lo, d.hi, True), _verdict(d, mode)])
    return head, rows


def excluded_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["run", "arm", "seed", "status", f"last {a.primary}", "note"]
    rows = [
        [t.run_id, t.arm, str(t.seed), t.status, fmt(t.value(a.primary)), t.error.replace("\n", " ")[:120]]
        for t in a.excluded
    ]
    return head, rows


def pareto_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["run", "arm", "seed", a.primary, a.pareto_x]
    rows = [[t.run_id, t.arm, str(t.seed), fmt(t.value(a.primary)), fmt(t.value(a.pareto_x))] for t in a.pareto]
    return head, rows


def fixed_width(head: list[str], rows: list[list[str]]) -> str:
    """A plain table for the terminal: columns padded to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def _colors(arms: list[str]) -> dict[str, Any]:
    plt = _plt()
    cycle = plt.get_cmap("tab10")
    return {arm: cycle(i % 10) for i, arm in enumerate(arms)}


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)  # figures are not garbage-collected while pyplot holds them
    return path


def plot_curves(a: Analysis, path: Path) -> Path | None:
    keys = [k for k in CURVE_METRICS if any(k in t.history for t in a.finished)]
    if not keys:
        return None
    plt, colors, by_arm = _plt(), _colors(a.arms), a.by_arm()
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for arm in a.arms:
            per_step: dict[int, list[float]] = defaultdict(list)
            for t in by_arm[arm]:
                for step, v in t.history.get(key, []):
                    per_step[step].append(v)
            if not per_step:
                continue
            steps = sorted(per_step)
            mean = [sum(per_step[s]) / len(per_step[s]) for s in steps]
            sd = [stats.summarize(per_step[s]).std or 0.0 for s in steps]
            n = len(by_arm[arm])
            ax.plot(steps, mean, color=colors[arm], label=f"{arm} (n={n})")
            ax.fill_between(steps, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], color=colors[arm], alpha=0.2, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} (mean across seeds, band = ±1 sd)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(plt, fig, path)


def plot_diffs(a: Analysis, path: Path) -> Path | None:
    key = a.primary
    arms = [arm for arm in a.arms if not a.is_control(arm) and a.diffs.get(key, {}).get(arm) is not None]
    if not arms:
        return None
    plt, colors = _plt(), _colors(a.arms)
    fig, ax = plt.subplots(figsize=(6, 0.6 * len(arms) + 1.6))
    for i, arm in enumerate(arms):
        d = a.diffs[key][arm]
        if d.lo is not None:
            ax.errorbar([d.mean], [i], xerr=[[d.mean - d.lo], [d.hi - d.mean]], fmt="o", color=colors[arm], capsize=4)
        else:
            ax.plot([d.mean], [i], "x", color=colors[arm])  # one seed: no interval
    ax.axvline(0.0, color="black", lw=0.8)
    labels = [arm if a.diffs[key][arm].lo is not None else f"{arm} (1 pair: no interval)" for arm in arms]
    ax.set_yticks(range(len(arms)), labels)
    ax.invert_yaxis()  # first arm on top, as in the tables
    ax.set_xlabel(f"{key}: arm − {'its control' if a.sizes else a.control} (paired by seed, 95% t interval)")
    ax.grid(alpha=0.3, axis="x")
    return _save(plt, fig, path)


def plot_params(a: Analysis, path: Path) -> Path | None:
    pts = [(t, t.n_params, t.value(a.primary)) for t in a.finished]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return None
    plt, colors = _plt(), _colors(a.arms)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for arm in a.arms:
        xs = [x for t, x, _ in pts if t.arm == arm]
        ys = [y for t, _, y in pts if t.arm == arm]
        if xs:
            ax.scatter(xs, ys, color=colors[arm], label=arm, s=28, alpha=0.85)
    ax.set_xlabel("parameters (params.total)")
    ax.set_ylabel(a.primary)
    ax.set_title(f"{a.primary} against parameters, one point per trial", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_scale(a: Analysis, path: Path) -> Path | None:
    """A sized sweep: the primary metric against parameters per arm (log-log), one point per cell,
    with each arm's fitted power law."""
    fits = a.record.get("scale") or {}
    if not a.sizes or not fits:
        return None
    import numpy as np

    plt = _plt()
    bases = list(dict.fromkeys(split_sized(arm)[0] for arm in a.arms))
    colors = _colors(bases)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for base in bases:
        pts = [(t.n_params, t.value(a.primary)) for t in a.chosen if split_sized(t.arm)[0] == base
               and t.n_params is not None and t.value(a.primary) is not None]
        if not pts:
            continue
        ax.scatter([x for x, _ in pts], [y for _, y in pts], color=colors[base], s=24, alpha=0.8)
        f = fits.get(base, {})
        label = base
        if "exponent" in f:
            xs = np.geomspace(min(x for x, _ in pts), max(x for x, _ in pts), 50)
            ax.plot(xs, f["prefactor"] * xs ** f["exponent"], color=colors[base], lw=1.2)
            label = f"{base}: {a.primary} ∝ N^{f['exponent']:+.3f}"
        ax.plot([], [], color=colors[base], label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (params.total)")
    ax.set_ylabel(a.primary)
    ax.set_title(f"{a.primary} against parameters per arm, power-law fits (one point per cell)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def scale_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "power law", "exponent 95% CI", "slope of diff vs log(params)", "slope 95% CI", "pairs", "trend"]
    rows = []
    for base, r in (a.record.get("scale") or {}).items():
        law = f"{r['prefactor']:.4g} × N^{r['exponent']:+.4f}" if "exponent" in r else "n/a"
        rows.append([base, law, fmt_ci(r.get("exponent_lo"), r.get("exponent_hi"), True),
                     fmt(r["slope"], True) if "slope" in r else "(control)" if base == split_sized(a.control)[0] else "n/a",
                     fmt_ci(r.get("slope_lo"), r.get("slope_hi"), True) if "slope" in r else "",
                     str(r.get("pairs", "")), r.get("trend", "")])
    return head, rows


def _benchmarks(a: Analysis) -> list[tuple[str, str]]:
    """(task, metric) pairs with an 'acc' metric (eval/<task>/acc)."""
    out = []
    for key in a.final_keys:
        m = EVAL_RE.match(key)
        if m and m.group(2) == "acc":
            out.append((m.group(1), key))
    return out


def plot_benchmarks(a: Analysis, path: Path) -> Path | None:
    tasks = _benchmarks(a)
    if not tasks:
        return None
    plt, colors, by_arm = _plt(), _colors(a.arms), a.by_arm()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(tasks) * max(1, len(a.arms)) ** 0.5 + 2), 4))
    width = 0.8 / len(a.arms)
    for j, arm in enumerate(a.arms):
        xs, ys, errs = [], [], []
        for i, (task, key) in enumerate(tasks):
            s = a.summaries[key].get(arm)
            if s is None:
                continue
            if s.half_width is not None:
                err = s.half_width  # across seeds: 95% t interval
            else:  # one seed: the benchmark's own binomial stderr, as a 95% normal interval
                se = [t.metrics.get(f"eval/{task}/acc_stderr") for t in by_arm[arm]]
                se = [x for x in se if x is not None]
                err = 1.96 * se[0] if se else 0.0
            xs.append(i + (j - (len(a.arms) - 1) / 2) * width)
            ys.append(s.mean)
            errs.append(err)
        ax.bar(xs, ys, width=width, yerr=errs, capsize=3, color=colors[arm], label=arm)
    ax.set_xticks(range(len(tasks)), [t for t, _ in tasks])
    ax.set_ylabel("accuracy")
    ax.set_title("benchmarks: mean over seeds, 95% interval (1 seed: 1.96 × acc_stderr)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_pareto(a: Analysis, path: Path) -> Path | None:
    if not a.pareto:
        return None
    plt, colors = _plt(), _colors(a.arms)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for t in a.finished:
        if t.value(a.pareto_x) is not None and t.value(a.primary) is not None:
            ax.scatter([t.value(a.pareto_x)], [t.value(a.primary)], color=colors[t.arm], s=20, alpha=0.5)
    xs = [t.value(a.pareto_x) for t in a.pareto]
    ys = [t.value(a.primary) for t in a.pareto]
    ax.step(xs, ys, where="post", color="black", lw=1.2, label="Pareto front")
    ax.scatter(xs, ys, facecolors="none", edgecolors="black", s=60)
    ax.set_xlabel(a.pareto_x)
    ax.set_ylabel(a.primary)
    ax.set_title(f"Pareto front: {a.primary} vs {a.pareto_x} (all finished trials)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


# --------------------------------------------------------------------------- the report


def _sections(a: Analysis, images: list[tuple[str, str]]) -> list[tuple[str, str, Any]]:
    """(kind, title, content) blocks rendered both as Markdown and HTML."""
    n_stat = _count(t.status for t in a.excluded)
    counts = f"{len(a.finished)} finished" + "".join(f", {n} {s}" for s, n in sorted(n_stat.items()))
    objective = ", ".join(f"{m} ({mo})" for m, mo in zip(a.metrics, a.modes))
    seeds_per_arm = {arm: len(ts) for arm, ts in a.by_arm().items()}
    intro = (
        f"Parent run `{a.parent_run_id}` in `{a.tracking_uri}`. Objective: {objective}. "
        f"Control arm: `{split_sized(a.control)[0] + '` (at each size)' if a.sizes else a.control + '`'}. "
        f"Trials: {counts} (only finished trials are averaged). "
        f"Intervals are 95% Student-t intervals across seeds; differences are paired by seed "
        f"(arm − control, over the seeds both ran); with one seed there is no interval (n/a)."
    )
    blocks: list[tuple[str, str, Any]] = [("p", "", intro)]
    if a.searched:
        blocks.append(("p", "", f"The search ran several trials per (arm, seed): each cell is represented by its best "
                                f"trial on {a.primary} ({len(a.chosen)} of {len(a.finished)} finished trials), the rule "
                                f"the terminal summary, sweep.json and the parent MLflow run use too; the parameter "
                                f"plot shows them all."))
    if min(seeds_per_arm.values()) < 2:
        blocks.append(("p", "", "Some arms have a single finished seed: their intervals are n/a, not zero."))
    power = compare.power_lines(a.record)
    if power:
        blocks.append(("p", "", " ".join(power)))
    gaps = param_gap_lines(a)
    if gaps:
        blocks.append(("p", "", " ".join(gaps)))
    blocks.append(("table", f"Summary: {a.primary}", summary_table(a)))
    blocks.append(("images", "Plots", images))
    if a.sizes and a.record.get("scale"):
        blocks.append(("table", f"Across sizes ({', '.join(a.sizes)}): power laws and the trend of each difference",
                       scale_table(a)))
        blocks.append(("p", "", "Power law fitted in log-log space over every (size, seed) cell of the arm; the slope is "
                                "of the paired difference (arm − control, same size and seed) against log(parameters), "
                                "with its 95% t interval (scipy.stats.linregress)."))
    blocks += search_report.sections(a)
    blocks.append(("table", "Final metrics per arm (mean, sd, 95% interval across seeds)", metrics_table(a)))
    if len(a.arms) > 1:
        blocks.append(("table", "Paired differences against the control arm at the same size" if a.sizes else
                       f"Paired differences against the control arm `{a.control}`", diffs_table(a)))
    if a.multi_objective:
        blocks.append(("table", f"Pareto front ({a.primary} vs {a.pareto_x}), {len(a.pareto)} trials", pareto_table(a)))
    if a.excluded:
        blocks.append(("table", "Failed, stopped or unfinished trials (not averaged)", excluded_table(a)))
    return blocks


def write_markdown(a: Analysis, blocks, path: Path) -> None:
    out = [f"# Sweep report: {a.name}", ""]
    for kind, title, content in blocks:
        if title:
            out += [f"## {title}", ""]
        if kind == "p":
            out += [content, ""]
        elif kind == "table":
            out += [md_table(*content), ""]
        elif kind == "images":
            out += [" ".join(f"![{cap}]({name})" for name, cap in content), ""]
    path.write_text("\n".join(out))


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f3f3f3} code{background:#f3f3f3;padding:0 3px}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.figs figure{margin:0;border:1px solid #ddd;padding:6px} .figs img{max-width:640px;height:auto}
figcaption{font-size:0.8em;color:#555}
"""


def write_html(a: Analysis, blocks, path: Path) -> None:
    body = [f"<h1>Sweep report: {html.escape(a.name)}</h1>"]
    for kind, title, content in blocks:
        if title:
            body.append(f"<h2>{html.escape(title)}</h2>")
        if kind == "p":
            text = html.escape(content)
            body.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", text) + "</p>")
        elif kind == "table":
            body.append(html_table(*content))
        elif kind == "images":
            figs = "".join(
                f'<figure><img src="{html.escape(name)}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}</figcaption></figure>'
                for name, cap in content
            )
            body.append(f'<div class="figs">{figs}</div>')
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Sweep report: {html.escape(a.name)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    path.write_text(doc)


def build_report(
    tracking_uri: str,
    parent_run_id: str,
    out_dir: str | os.PathLike,
    *,
    metric: str | Sequence[str] | None = "val_bpb",
    mode: str | Sequence[str] | None = "min",
    control_arm: str | None = None,
    log_artifacts: bool = True,
) -> Path:
    """Write report.md, report.html and PNGs for a sweep's parent run into out_dir; return report.md.

    metric may be a list (multi-objective, e.g. ["val_bpb", "params.total"]): the first is the
    primary metric and the Pareto front is drawn. metric=None / mode=None / control_arm=None
    are read from the parent run's tags (stlm.metric, stlm.mode, stlm.control_arm) when set.
    The files are also logged to the parent run as artifacts under report/.
    """
    client = _client(tracking_uri)
    parent = _get_run(client, parent_run_id, tracking_uri)
    tags, params = parent.data.tags, parent.data.params
    # unset -> what the sweep recorded on its parent run (tags stlm.*, params sweep.*), else val_bpb / min
    metrics = [metric] if isinstance(metric, str) else list(metric) if metric else (
        _tag_list(tags.get("stlm.metric")) or _tag_list(params.get("sweep.metric")) or ["val_bpb"])
    modes = [mode] if isinstance(mode, str) else list(mode) if mode else (
        _tag_list(tags.get("stlm.mode")) or _tag_list(params.get("sweep.mode")) or ["min"])
    modes = (modes * len(metrics))[: len(metrics)] if len(modes) < len(metrics) else modes[: len(metrics)]
    for m in modes:
        if m not in ("min", "max"):
            raise StlmError(f"report mode must be min or max, got {m!r}.")
    control = control_arm or tags.get("stlm.control_arm") or None
    name = tags.get("stlm.sweep") or parent.info.run_name or parent_run_id

    trials = load_trials(client, parent, tracking_uri)
    a = analyse(trials, name=name, parent_run_id=parent_run_id, tracking_uri=tracking_uri, metrics=metrics, modes=modes,
                control=control, order=_tag_list(params.get("sweep.arms")), sizes=_tag_list(params.get("sweep.sizes")))
    a.knobs = search_report.analyse_knobs(a, params.get(search_report.SPACE_PARAM))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for fn, file, cap in (
        (plot_curves, "curves.png", "Loss curves per arm (mean across seeds, band ±1 sd)"),
        (plot_diffs, "diffs.png", f"Paired difference of {a.primary} vs {'the control at each size' if a.sizes else a.control} "
                                  "(95% interval)"),
        (plot_params, "params.png", f"{a.primary} vs parameters, one point per trial"),
        (plot_scale, "scale.png", f"{a.primary} vs parameters per arm with power-law fits"),
        (plot_benchmarks, "benchmarks.png", "Benchmark accuracy per arm and task"),
        (plot_pareto, "pareto.png", "Pareto front"),
        (search_report.plot_knobs, "knobs.png", f"{a.primary} against each searched knob, one point per trial "
                                                "(ringed: each arm's best)"),
    ):
        if fn(a, out / file) is not None:
            images.append((file, cap))
    blocks = _sections(a, images)
    md, page = out / "report.md", out / "report.html"
    write_markdown(a, blocks, md)
    write_html(a, blocks, page)
    (out / "summary.txt").write_text(fixed_width(*summary_table(a)) + "\n")

    (out / "comparison.json").write_text(json.dumps(a.record, indent=2))
    if log_artifacts:
        for f in [md, page, out / "summary.txt", out / "comparison.json"] + [out / name for name, _ in images]:
            client.log_artifact(parent_run_id, str(f), artifact_path="report")
        from stlm.sweep.tracking import log_comparison

        log_comparison(client, parent_run_id, {**compare.mlflow_metrics(a.record), **a.knobs.mlflow_metrics()})
    return md


# --------------------------------------------------------------------------- CLI


def _default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stlm report", description="Statistics report of a finished sweep (from MLflow).")
    p.add_argument("target", help="a sweep dir (holds sweep.json) or the sweep's MLflow parent run id")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sweep.json's, else $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--out", help="output dir (default: <sweep dir>/report, or ./report-<run id> for a run id)")
    p.add_argument("--metric", help="primary metric (default: the sweep's); comma-separated for several objectives")
    p.add_argument("--mode", choices=["min", "max"], help="direction of the primary metric (default: the sweep's)")
    p.add_argument("--control", help="control arm the others are compared with (default: the sweep's)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    args = p.parse_args(argv)

    from stlm.sweep import storage

    target = Path(args.target)
    sweep: dict = {}
    store = None
    if storage.is_remote(args.target):  # an s3:// experiment dir: its sweep.json, the report written back
        store = storage.open(args.target)
        sweep = storage.read_json(store, "sweep.json") or {}
        if not sweep.get("parent_run_id"):
            raise StlmError(f"{args.target} holds no readable sweep.json with a parent_run_id; pass a sweep dir "
                            "written by `stlm sweep` or a parent run id.")
        run_id = sweep["parent_run_id"]
        out_dir = Path(args.out) if args.out else store.local / "report"
    elif target.is_dir():
        sj = target / "sweep.json"
        if not sj.is_file():
            raise StlmError(f"{str(target)!r} is a directory but holds no sweep.json; pass a sweep dir written by `stlm sweep` or a parent run id.")
        try:
            sweep = json.loads(sj.read_text())
        except json.JSONDecodeError as e:
            raise StlmError(f"{sj} is not valid JSON: {e}.") from None
        if not sweep.get("parent_run_id"):
            raise StlmError(f"{sj} has no parent_run_id: the sweep did not get as far as creating its MLflow parent run.")
        run_id = sweep["parent_run_id"]
        out_dir = Path(args.out) if args.out else target / "report"
    elif RUN_ID_RE.match(args.target):
        run_id = args.target
        out_dir = Path(args.out) if args.out else Path.cwd() / f"report-{run_id[:8]}"
    else:
        raise StlmError(f"{args.target!r} is neither a sweep dir (no such directory) nor an MLflow run id (32 hex characters).")

    uri = args.tracking_uri or sweep.get("tracking_uri") or _default_tracking_uri()
    metric = [m for m in args.metric.split(",") if m] if args.metric else sweep.get("metric")
    mode = args.mode or sweep.get("mode")
    control = args.control or sweep.get("control_arm")
    try:
        md = build_report(uri, run_id, out_dir, metric=metric, mode=mode, control_arm=control,
                          log_artifacts=not args.no_log)
    except StlmError as e:
        if sweep.get("spec_path") and "no finished trials" in str(e):  # say how to get some
            raise StlmError(f"{e} If the sweep was interrupted or failed, continue it with: python -m stlm.sweep "
                            f"{sweep['spec_path']} --resume --experiment-dir {sweep.get('experiment_dir', target)}") from None
        raise

    if store is not None and not args.out:
        store.upload("report")
    print((md.parent / "summary.txt").read_text(), end="")
    print(f"\nReport: {md}\n        {md.parent / 'report.html'}")
    if not args.no_log:
        print(f"Logged to MLflow run {run_id} (artifacts under report/).")
    return 0


if __name__ == "__main__":
    from stlm.cli import run_main

    sys.exit(run_main(main, sys.argv[1:]))
