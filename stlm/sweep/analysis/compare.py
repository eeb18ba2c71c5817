"""The one comparison of a sweep's arms: what the terminal summary, sweep.json, the report and the
parent MLflow run all show, computed by the same rule from the same trials.

The rule for a cell (arm, seed) that ran several search samples: the cell is represented by its
BEST finished sample on the sweep's metric (lowest for mode min, highest for max), so a tuned
knob compares arms each at its best setting. One value per cell, then per arm:

    mean, sd, 95% t interval across seeds         (stats.summarize)
    arm - control, paired by seed, 95% interval    (stats.paired_difference)

The control is the control arm at the same size (sized sweeps compare within a size). With fewer
than MIN_SEEDS pairs the intervals are not informative; power_lines() says how large a difference
the observed spread would let the sweep detect, with its seeds and with PLAN_SEEDS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from stlm import stats
from stlm.fmt import ci, stat
from stlm.sweep.plan.sweep import split_sized

MIN_SEEDS = 3  # below this, a 95% interval on a paired difference is too wide to read
PLAN_SEEDS = 5  # the power line's "with 5 seeds" column
RULE = "best sample per (arm, seed) cell by the sweep metric"

Item = TypeVar("Item")  # whatever a cell holds: a Trial (the report) or a result row (the terminal)


def best_per_cell(
    items: Iterable[Item], cell: Callable[[Item], Any], value: Callable[[Item], float | None], mode: str
) -> list[Item]:
    """One item per cell: the best on `value` (min or max); cells whose items have no value keep the first."""
    items = list(items)
    sign = 1.0 if mode == "min" else -1.0
    best: dict[Any, tuple[float, Item]] = {}
    for it in items:
        v = value(it)
        key = sign * v if v is not None and not math.isnan(v) else math.inf
        c = cell(it)
        if c not in best or key < best[c][0]:
            best[c] = (key, it)
    keep = {id(it) for _, it in best.values()}
    return [it for it in items if id(it) in keep]


def compare_arms(per_seed: dict[str, dict[Any, float]], arms: list[str], control_of: dict[str, str]):
    """arm -> Summary, and arm -> PairedDiff against its control (None for controls and unpaired arms)."""
    summaries: dict[str, stats.Summary] = {}
    diffs: dict[str, stats.PairedDiff | None] = {}
    for arm in arms:
        vals = per_seed.get(arm) or {}
        if vals:
            summaries[arm] = stats.summarize(vals.values())
        ctrl = per_seed.get(control_of[arm]) or {}
        if control_of[arm] != arm:
            diffs[arm] = stats.paired_difference(vals, ctrl) if vals and ctrl else None
    return summaries, diffs


def record(
    metric: str,
    summaries: dict,
    diffs: dict,
    control_of: dict[str, str],
    arms: list[str],
    scale_points: list | None = None,
) -> dict:
    """The comparison as plain numbers (sweep.json's "comparison", the parent run's metrics); with
    `scale_points` (a sized sweep's chosen cells: arm, seed, params, value) also the scale fits."""
    out: dict[str, Any] = {"metric": metric, "rule": RULE, "arms": {}}
    if scale_points is not None:
        out["scale"] = scale_fits(scale_points, control_of)
    for arm in arms:
        s, d = summaries.get(arm), diffs.get(arm)
        row = {
            "control": control_of[arm],
            "n": s.n if s else 0,
            "mean": s.mean if s else None,
            "sd": s.std if s else None,
            "lo": s.lo if s else None,
            "hi": s.hi if s else None,
        }
        if control_of[arm] != arm:
            row.update(
                {
                    "pairs": d.n if d else 0,
                    "diff": d.mean if d else None,
                    "diff_sd": d.std if d else None,
                    "diff_lo": d.lo if d else None,
                    "diff_hi": d.hi if d else None,
                }
            )
        out["arms"][arm] = row
    return out


def scale_fits(points: list[tuple[str, Any, float, float]], control_of: dict[str, str]) -> dict:
    """Across sizes (arm names 'rope@10M'): per arm, the power law metric = A * params^b fitted in log-log
    space over every (size, seed) cell; and per non-control arm, the slope of its paired difference from
    the control (same size, same seed) against log(params), with its 95% interval: does the
    difference grow or shrink with scale? `points`: (arm, seed, params, value) of the chosen cells."""
    by_base: dict[str, list[tuple[Any, str, float, float]]] = {}
    cell: dict[tuple[str, Any], tuple[float, float]] = {}
    for arm, seed, n, v in points:
        if n is None or v is None or math.isnan(v):
            continue
        base, size = split_sized(arm)
        by_base.setdefault(base, []).append((seed, size, float(n), float(v)))
        cell[(arm, seed)] = (float(n), float(v))
    out: dict[str, dict] = {}
    for base, pts in by_base.items():
        row: dict[str, Any] = {}
        if all(v > 0 for *_, v in pts):
            fit = stats.line_fit([math.log(n) for _, _, n, _ in pts], [math.log(v) for *_, v in pts])
            if fit is not None:
                row.update(
                    {
                        "exponent": fit.slope,
                        "prefactor": math.exp(fit.intercept),
                        "fit_n": fit.n,
                        "exponent_lo": fit.slope_lo,
                        "exponent_hi": fit.slope_hi,
                    }
                )
        xs, ds = [], []
        for (arm, seed), (_, v) in cell.items():
            ctrl = control_of.get(arm)
            if split_sized(arm)[0] != base or ctrl == arm or (ctrl, seed) not in cell:
                continue
            cn, cv = cell[(ctrl, seed)]
            xs.append(math.log(cn))
            ds.append(v - cv)
        line = stats.line_fit(xs, ds)
        if line is not None:
            mean_d = sum(ds) / len(ds)
            if line.excludes_zero is None:
                trend = "too few points for an interval"
            elif not line.excludes_zero:
                trend = "no trend detectable at 95%"
            else:
                trend = "grows with scale" if (line.slope > 0) == (mean_d > 0) else "shrinks with scale"
            row.update(
                {
                    "slope": line.slope,
                    "slope_lo": line.slope_lo,
                    "slope_hi": line.slope_hi,
                    "pairs": line.n,
                    "mean_diff": mean_d,
                    "trend": trend,
                }
            )
        if row:
            out[base] = row
    return out


def scale_lines(rec: dict) -> list[str]:
    lines = []
    for base, r in (rec.get("scale") or {}).items():
        parts = []
        if "exponent" in r:
            parts.append(f"{rec['metric']} ~ {r['prefactor']:.4g} x params^{r['exponent']:+.4f}")
        if "slope" in r:
            interval = ci(r["slope_lo"], r["slope_hi"], True)
            parts.append(
                f"difference from the control vs log(params): slope {stat(r['slope'], True)} "
                f"(95% CI {interval}, {r['pairs']} pairs): {r['trend']}"
            )
        lines.append(f"{base}: " + "; ".join(parts))
    return lines


def summary_lines(rec: dict) -> list[str]:
    """The terminal's per-arm lines."""
    metric, lines = rec["metric"], []
    for arm, r in rec["arms"].items():
        if not r["n"]:
            continue
        interval = ci(r["lo"], r["hi"])
        line = f"{arm:<22} {metric} mean {stat(r['mean'])} (sd {stat(r['sd'])}, n={r['n']}, 95% CI {interval})"
        if r["control"] == arm:
            line += "  [control]"
        elif r.get("diff") is not None:
            dci = ci(r["diff_lo"], r["diff_hi"], True)
            line += f"  vs {r['control']}: {stat(r['diff'], True)} (95% CI {dci}, {r['pairs']} pairs)"
        lines.append(line)
    return lines


def power_lines(rec: dict) -> list[str]:
    """With fewer than MIN_SEEDS pairs: a warning, and per arm the smallest difference the observed
    spread lets the sweep detect (paired t-test, 5% two-sided, 80% power) with its seeds and with PLAN_SEEDS."""
    pairs = [r["pairs"] for r in rec["arms"].values() if "pairs" in r]
    if not pairs:
        return []
    lines = []
    if min(pairs) < MIN_SEEDS:
        lines.append(
            f"Fewer than {MIN_SEEDS} paired seeds: the 95% intervals are not informative "
            f"(t_0.975 = {stats.t_quantile(0.975, max(1, min(pairs) - 1)):.1f} with {min(pairs)} pairs)."
        )
    for arm, r in rec["arms"].items():
        if "pairs" not in r or not r["pairs"]:
            continue
        n, sd = r["pairs"], r.get("diff_sd")
        now, plan = stats.detectable_difference(sd, n), stats.detectable_difference(sd, PLAN_SEEDS)
        if now is None:
            lines.append(f"{arm}: {n} pair(s) give no spread to plan with; run at least 2 seeds.")
            continue
        lines.append(
            f"{arm}: with the observed sd of the paired differences ({sd:.4f}), the smallest difference "
            f"detectable at 95% (80% power) is {now:.4f} with {n} seeds, {plan:.4f} with {PLAN_SEEDS}."
        )
    return lines


_BAD = re.compile(r"[^\w\-./ ]")  # MLflow metric keys: alphanumerics, _ - . / and spaces


def mlflow_key(*parts: str) -> str:
    return "/".join(_BAD.sub("_", p) for p in parts)


def mlflow_metrics(rec: dict) -> dict[str, float]:
    """compare/<arm>/<metric>/{mean, lo, hi, diff, diff_lo, diff_hi}: the parent run's numbers."""
    out = {}
    for arm, r in rec["arms"].items():
        for k in ("mean", "lo", "hi", "diff", "diff_lo", "diff_hi", "n", "pairs"):
            v = r.get(k)
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                out[mlflow_key("compare", arm, rec["metric"], k)] = float(v)
    for arm, s in (rec.get("scale") or {}).items():
        for k in ("slope", "slope_lo", "slope_hi"):
            if s.get(k) is not None:
                out[mlflow_key("scale", arm, rec["metric"], "diff_" + k)] = float(s[k])
    return out
