"""The report's figures (matplotlib, imported only when a report is drawn)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stlm import stats
from stlm.fmt import missing
from stlm.sweep.analysis.knobs import KnobReport, best_per_arm
from stlm.sweep.analysis.trials import CURVE_METRICS, EVAL_RE, headline_tasks
from stlm.sweep.plan.sweep import split_sized

if TYPE_CHECKING:
    from stlm.sweep.analysis.arms import Analysis


def _plt():
    import matplotlib  # lazy: matplotlib only when a report is drawn

    matplotlib.use("Agg")  # files only; never a display
    # lazy: matplotlib, only when a figure is drawn
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


def _label(ax, *, x: str | None, y: str | None, title: str, grid: str = "both", legend: bool = True) -> None:
    """The axes' labels, a small title, a light grid and the legend: every figure of the report alike."""
    if x is not None:
        ax.set_xlabel(x)
    if y is not None:
        ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    if grid in ("x", "y"):
        ax.grid(alpha=0.3, axis=grid)
    else:  # minor lines too, where a log axis has them
        ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize=8)


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
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, sd)],
                [m + s for m, s in zip(mean, sd)],
                color=colors[arm],
                alpha=0.2,
                lw=0,
            )
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
    _label(ax, x="parameters (params.total)", y=a.primary, title=f"{a.primary} against parameters, one point per trial")
    return _save(plt, fig, path)


def plot_scale(a: Analysis, path: Path) -> Path | None:
    """A sized sweep: the primary metric against parameters per arm (log-log), one point per cell,
    with each arm's fitted power law."""
    fits = a.record.get("scale") or {}
    if not a.sizes or not fits:
        return None
    plt = _plt()
    bases = list(dict.fromkeys(split_sized(arm)[0] for arm in a.arms))
    colors = _colors(bases)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for base in bases:
        pts = [
            (t.n_params, t.value(a.primary))
            for t in a.chosen
            if split_sized(t.arm)[0] == base and t.n_params is not None and t.value(a.primary) is not None
        ]
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
    title = f"{a.primary} against parameters per arm, power-law fits (one point per cell)"
    _label(ax, x="parameters (params.total)", y=a.primary, title=title)
    return _save(plt, fig, path)


def _benchmarks(a: Analysis) -> list[tuple[str, str]]:
    """(task, metric) pairs with an 'acc' metric (eval/<task>/acc), a group's members left out (BLiMP's 67
    made the figure 15,000 pixels wide)."""
    out = []
    for key in a.final_keys:
        m = EVAL_RE.match(key)
        if m and m.group(2) == "acc":
            out.append((m.group(1), key))
    keep = set(headline_tasks(t for t, _ in out))
    return [(t, key) for t, key in out if t in keep]


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
    _label(
        ax,
        x=None,
        y="accuracy",
        title="benchmarks: mean over seeds, 95% interval (1 seed: 1.96 × acc_stderr)",
        grid="y",
    )
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
    _label(ax, x=a.pareto_x, y=a.primary, title=f"Pareto front: {a.primary} vs {a.pareto_x} (all finished trials)")
    return _save(plt, fig, path)


def plot_knobs(a: Analysis, path: Path) -> Path | None:
    """The primary metric against each searched knob, one point per finished trial, coloured by arm."""
    r: KnobReport | None = getattr(a, "knobs", None)
    if r is None or not r.knobs:
        return None
    plt, colors, best = _plt(), _colors(a.arms), best_per_arm(a)
    ncol = min(3, len(r.knobs))
    nrow = math.ceil(len(r.knobs) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False)
    for ax, k in zip(axes.flat, r.knobs):
        cats = [c for c in k.dist.choices if any(v == c for v in k.values.values())] if k.categorical else []
        pos = {repr(c): i for i, c in enumerate(cats)}
        for j, arm in enumerate(a.arms):
            shift = (j - (len(a.arms) - 1) / 2) * min(0.12, 0.6 / len(a.arms))  # arms side by side in a category
            pts = [
                (t, k.values[t.run_id])
                for t in a.finished
                if t.arm == arm and t.run_id in k.values and not missing(t.value(a.primary))
            ]
            if not pts:
                continue
            xs = [pos[repr(v)] + shift if k.categorical else float(v) for _, v in pts]
            ys = [t.value(a.primary) for t, _ in pts]
            ax.scatter(xs, ys, color=colors[arm], s=26, alpha=0.85, label=arm)
            top = [(x, y) for (t, _), x, y in zip(pts, xs, ys) if best.get(arm) is t]
            if top:  # the arm's best trial
                ax.scatter(*zip(*top), facecolors="none", edgecolors="black", s=90, lw=1.0)
        if k.categorical:
            ax.set_xticks(range(len(cats)), [str(c) for c in cats])
        elif k.log_axis:
            from matplotlib.ticker import FuncFormatter, LogLocator  # lazy: matplotlib

            ax.set_xscale("log")
            # 1-2-5 labels as plain numbers: matplotlib's default labels every minor tick of a short
            # range in scientific notation, and they overlap
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
        imp = r.importances.get(k.name)
        ax.set_title(k.name + (f" (importance {imp:.2f})" if imp is not None else ""), fontsize=9)
        ax.set_xlabel(k.name)
        ax.set_ylabel(a.primary)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(r.knobs) :]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=8)
    return _save(plt, fig, path)
