"""The report's tables as rows (per-arm summaries, paired differences, excluded trials, scale fits), and those rows
as plain text, Markdown or HTML.
"""

from __future__ import annotations

import html
from collections import defaultdict

from stlm import stats
from stlm.fmt import ci, stat
from stlm.sweep.analysis.arms import Analysis
from stlm.sweep.analysis.trials import EVAL_RE
from stlm.sweep.plan.sweep import split_sized
from stlm.sweep.resilience.stall import LIMIT, LOST, SILENT, STALLS


def verdict(d: stats.PairedDiff | None, mode: str | None) -> str:
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
    head = [
        "arm",
        "n",
        f"{key} mean",
        "sd",
        "95% CI",
        f"diff vs {versus}",
        "diff 95% CI",
        "excl. 0",
        "params",
        "params vs control",
    ]
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
                stat(s.mean if s else None),
                stat(s.std if s else None),
                ci(s.lo, s.hi) if s else "n/a",
                "(control)" if a.is_control(arm) else stat(d.mean if d else None, signed=True),
                "" if a.is_control(arm) else (ci(d.lo, d.hi, signed=True) if d else "n/a"),
                "" if a.is_control(arm) else verdict(d, mode),
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
                rows.append([key, arm, str(s.n), stat(s.mean), stat(s.std), ci(s.lo, s.hi)])
    return head, rows


def diffs_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    versus = "control" if a.sizes else a.control
    head = ["metric", "arm", "pairs", f"mean (arm - {versus})", "sd", "95% CI", "excludes 0"]
    rows = []
    mode_of = dict(zip(a.metrics, a.modes))
    for key in a.final_keys:
        for arm in [x for x in a.arms if not a.is_control(x)]:
            d = a.diffs[key].get(arm)
            if d is None:
                rows.append([key, arm, "0", "n/a", "n/a", "n/a", "n/a"])
            else:
                mode = mode_of.get(key) or ("max" if EVAL_RE.match(key) else "min")
                rows.append(
                    [key, arm, str(d.n), stat(d.mean, True), stat(d.std), ci(d.lo, d.hi, True), verdict(d, mode)]
                )
    return head, rows


def excluded_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["run", "arm", "seed", "status", f"last {a.primary}", "note"]
    rows = [
        [t.run_id, t.arm, str(t.seed), t.status, stat(t.value(a.primary)), t.error.replace("\n", " ")[:120]]
        for t in a.excluded
    ]
    return head, rows


def stalls_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    """The trials whose workers went silent past their stall limit: retried (and finished, or not), or ended
    stalled. Empty when none did."""
    stalled = [t for t in a.finished + a.excluded if t.value(STALLS) or t.status == "stalled"]
    head = ["run", "arm", "seed", "status", "stalls retried", "silent (s)", "limit (s)", "lost to stalls (s)"]
    rows = [
        [t.run_id, t.arm, str(t.seed), t.status]
        + [
            f"{t.value(k):.{0 if k == STALLS else 1}f}" if t.value(k) is not None else "-"
            for k in (STALLS, SILENT, LIMIT, LOST)
        ]
        for t in stalled
    ]
    return head, rows


def pareto_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["run", "arm", "seed", a.primary, a.pareto_x]
    rows = [[t.run_id, t.arm, str(t.seed), stat(t.value(a.primary)), stat(t.value(a.pareto_x))] for t in a.pareto]
    return head, rows


def scale_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "power law", "exponent 95% CI", "slope of diff vs log(params)", "slope 95% CI", "pairs", "trend"]
    rows = []
    for base, r in (a.record.get("scale") or {}).items():
        law = f"{r['prefactor']:.4g} × N^{r['exponent']:+.4f}" if "exponent" in r else "n/a"
        rows.append(
            [
                base,
                law,
                ci(r.get("exponent_lo"), r.get("exponent_hi"), True),
                stat(r["slope"], True) if "slope" in r else "(control)" if base == split_sized(a.control)[0] else "n/a",
                ci(r.get("slope_lo"), r.get("slope_hi"), True) if "slope" in r else "",
                str(r.get("pairs", "")),
                r.get("trend", ""),
            ]
        )
    return head, rows


def fixed_width(head: list[str], rows: list[list[str]]) -> str:
    """A plain table for the terminal: columns padded to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def md_table(head: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"
