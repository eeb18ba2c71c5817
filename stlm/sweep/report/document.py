"""report.md, report.html, summary.txt and comparison.json of a sweep: build_report reads the parent run's trials,
analyses them (analysis/), lays the result out as sections of tables and plots, and logs it to the parent run.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stlm.errors import StlmError
from stlm.fmt import num
from stlm.sweep.analysis import compare, knobs
from stlm.sweep.analysis.arms import analyse
from stlm.sweep.analysis.knobs import IMPORTANCE_SEED, KnobReport, best_per_arm
from stlm.sweep.analysis.trials import get_run, load_trials, tag_list
from stlm.sweep.plan.space import SPACE_PARAM
from stlm.sweep.plan.sweep import split_sized
from stlm.sweep.report.description import answer_lines, publish
from stlm.sweep.report.plots import (
    plot_benchmarks,
    plot_curves,
    plot_diffs,
    plot_knobs,
    plot_params,
    plot_pareto,
    plot_scale,
)
from stlm.sweep.report.tables import (
    diffs_table,
    excluded_table,
    fixed_width,
    html_table,
    md_table,
    metrics_table,
    param_gap_lines,
    pareto_table,
    scale_table,
    stalls_table,
    summary_table,
)
from stlm.tracking import log_metrics, mlflow_client

if TYPE_CHECKING:
    from stlm.sweep.analysis.arms import Analysis


def _sections(a: Analysis, images: list[tuple[str, str]]) -> list[tuple[str, str, Any]]:
    """(kind, title, content) blocks rendered both as Markdown and HTML."""
    n_stat = Counter(t.status for t in a.excluded)
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
        blocks.append(
            (
                "p",
                "",
                "The search ran several trials per (arm, seed): each cell is represented by its "
                f"best trial on {a.primary} ({len(a.chosen)} of {len(a.finished)} finished trials), "
                "the rule the terminal summary, sweep.json and the parent MLflow run use too; the "
                "parameter plot shows them all.",
            )
        )
    if min(seeds_per_arm.values()) < 2:
        blocks.append(("p", "", "Some arms have a single finished seed: their intervals are n/a, not zero."))
    power = compare.power_lines(a.record)
    if power:
        blocks.append(("p", "", " ".join(power)))
    gaps = param_gap_lines(a)
    if gaps:
        blocks.append(("p", "", " ".join(gaps)))
    blocks.append(("table", f"Summary: {a.primary}", summary_table(a)))
    answer = answer_lines(a)
    if answer:
        blocks.append(("p", "", "Answer: " + " ".join(answer)))
    blocks.append(("images", "Plots", images))
    if a.sizes and a.record.get("scale"):
        blocks.append(
            (
                "table",
                f"Across sizes ({', '.join(a.sizes)}): power laws and the trend of each difference",
                scale_table(a),
            )
        )
        blocks.append(
            (
                "p",
                "",
                "Power law fitted in log-log space over every (size, seed) cell of the arm; the slope "
                "is of the paired difference (arm − control, same size and seed) against "
                "log(parameters), with its 95% t interval (scipy.stats.linregress).",
            )
        )
    blocks += knob_sections(a)
    blocks.append(("table", "Final metrics per arm (mean, sd, 95% interval across seeds)", metrics_table(a)))
    if len(a.arms) > 1:
        blocks.append(
            (
                "table",
                "Paired differences against the control arm at the same size"
                if a.sizes
                else f"Paired differences against the control arm `{a.control}`",
                diffs_table(a),
            )
        )
    if a.multi_objective:
        blocks.append(("table", f"Pareto front ({a.primary} vs {a.pareto_x}), {len(a.pareto)} trials", pareto_table(a)))
    if a.excluded:
        blocks.append(("table", "Failed, stopped or unfinished trials (not averaged)", excluded_table(a)))
    stalls = stalls_table(a)
    if stalls[1]:
        title = (
            "Stalled trials: no report for longer than the stall limit (each stall retried from the last checkpoint)"
        )
        blocks.append(("table", title, stalls))
    return blocks


TITLE = "Search: knob importances"


def knob_sections(a: Analysis) -> list[tuple[str, str, Any]]:
    """The report's blocks (_sections' format): the importance table, or why it is absent."""
    r: KnobReport | None = getattr(a, "knobs", None)
    if r is None:
        return []
    if r.absent:
        return [("p", TITLE, f"Knob importances are absent because {r.absent}.")]
    best = best_per_arm(a)
    word = "lowest" if a.modes[0] == "min" else "highest"
    head = [
        "knob",
        "importance",
        f"value at the {word} {a.primary}" + (" per arm" if len(a.arms) > 1 else ""),
        "range searched",
    ]
    rows = []
    for k in sorted(r.knobs, key=lambda k: -r.importances.get(k.name, 0.0)):
        at = [(arm, best[arm].run_id) for arm in a.arms if arm in best and best[arm].run_id in k.values]
        cell = ", ".join(f"{arm}: {num(k.values[rid])}" if len(a.arms) > 1 else num(k.values[rid]) for arm, rid in at)
        rows.append([k.name, f"{r.importances.get(k.name, 0.0):.3f}", cell or "n/a", k.searched_range()])
    note = (
        f"fANOVA importances of the searched knobs for {a.primary} (optuna.importance.get_param_importances, "
        f"FanovaImportanceEvaluator(seed={IMPORTANCE_SEED})) over an in-memory Optuna study of {r.n_trials} "
        f"finished trials, all arms and seeds together: the share of {a.primary}'s variance each knob explains, "
        "summing to 1; arm and seed are not knobs, so their effects count as noise."
        + (
            ""
            if r.declared
            else " The sweep recorded no search space (parent param sweep.search): the knobs "
            "and their ranges are inferred from the trials' params."
        )
        + (
            f" Searched but without two values among the finished trials: {', '.join(r.constant)}."
            if r.constant
            else ""
        )
        + (" With this few trials the importances are rough." if r.n_trials < 10 else "")
    )
    return [("table", TITLE, (head, rows)), ("p", "", note)]


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
                f'<figure><img src="{html.escape(name)}" alt="{html.escape(cap)}">'
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
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
    The files are also logged to the parent run as artifacts under report/, the plots as images, and the
    summary as the parent run's description (description.py).
    """
    client = mlflow_client(tracking_uri)
    parent = get_run(client, parent_run_id, tracking_uri)
    metrics, modes, control = objectives(parent, metric, mode, control_arm)
    tags, params = parent.data.tags, parent.data.params
    name = tags.get("stlm.sweep") or parent.info.run_name or parent_run_id
    trials = load_trials(client, parent, tracking_uri)
    a = analyse(
        trials,
        name=name,
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
        metrics=metrics,
        modes=modes,
        control=control,
        order=tag_list(params.get("sweep.arms")),
        sizes=tag_list(params.get("sweep.sizes")),
    )
    a.knobs = knobs.analyse_knobs(a, params.get(SPACE_PARAM))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = draw(a, out)
    blocks = _sections(a, images)
    md, page = out / "report.md", out / "report.html"
    write_markdown(a, blocks, md)
    write_html(a, blocks, page)
    (out / "summary.txt").write_text(fixed_width(*summary_table(a)) + "\n")
    (out / "comparison.json").write_text(json.dumps(a.record, indent=2))
    if log_artifacts:
        for f in [md, page, out / "summary.txt", out / "comparison.json"] + [out / name for name, _ in images]:
            client.log_artifact(parent_run_id, str(f), artifact_path="report")
        # the arms' comparison and the knobs' importances as the parent run's metrics: MLflow's compare view shows them
        log_metrics(client, parent_run_id, {**compare.mlflow_metrics(a.record), **a.knobs.mlflow_metrics()}, step=0)
        publish(client, a, parent, images, out)  # the answer on the runs' pages in the MLflow UI
    return md


def objectives(parent, metric, mode, control_arm) -> tuple[list[str], list[str], str | None]:
    """The metrics, their modes and the control arm: as given, else what the sweep recorded on its parent run
    (tags stlm.*, params sweep.*), else val_bpb / min; one mode per metric."""
    tags, params = parent.data.tags, parent.data.params
    metrics = (
        [metric]
        if isinstance(metric, str)
        else list(metric)
        if metric
        else (tag_list(tags.get("stlm.metric")) or tag_list(params.get("sweep.metric")) or ["val_bpb"])
    )
    modes = (
        [mode]
        if isinstance(mode, str)
        else list(mode)
        if mode
        else (tag_list(tags.get("stlm.mode")) or tag_list(params.get("sweep.mode")) or ["min"])
    )
    modes = (modes * len(metrics))[: len(metrics)] if len(modes) < len(metrics) else modes[: len(metrics)]
    for m in modes:
        if m not in ("min", "max"):
            raise StlmError(f"report mode must be min or max, got {m!r}.")
    return metrics, modes, control_arm or tags.get("stlm.control_arm") or None


def draw(a: Analysis, out: Path) -> list[tuple[str, str]]:
    """The plots the analysis has data for, as PNGs in `out`: (file name, caption) of each."""
    images = []
    versus = "the control at each size" if a.sizes else a.control
    for fn, file, cap in (
        (plot_curves, "curves.png", "Loss curves per arm (mean across seeds, band ±1 sd)"),
        (plot_diffs, "diffs.png", f"Paired difference of {a.primary} vs {versus} (95% interval)"),
        (plot_params, "params.png", f"{a.primary} vs parameters, one point per trial"),
        (plot_scale, "scale.png", f"{a.primary} vs parameters per arm with power-law fits"),
        (plot_benchmarks, "benchmarks.png", "Benchmark accuracy per arm and task"),
        (plot_pareto, "pareto.png", "Pareto front"),
        (
            plot_knobs,
            "knobs.png",
            f"{a.primary} against each searched knob, one point per trial (ringed: each arm's best)",
        ),
    ):
        if fn(a, out / file) is not None:
            images.append((file, cap))
    return images
