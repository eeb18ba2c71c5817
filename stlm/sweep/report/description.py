"""A sweep as the MLflow UI shows it: the parent run's description (the tag mlflow.note.content, Markdown that the
run's page renders) holds the question, the answer per arm, the per-arm table, the warning and power lines, the
plots and links to the report's files; the plots are also logged as images (the run's "Model metrics" tab shows
them); and each trial run's description names its cell, its final metric and its eval scores. Everything comes
from the Analysis and the tables report.md is made of (document.py), so the page and the report agree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from stlm.fmt import ci, stat
from stlm.sweep.analysis import compare
from stlm.sweep.analysis.trials import EVAL_RE, headline_tasks
from stlm.sweep.report.tables import md_table, param_gap_lines, summary_table, verdict
from stlm.sweep.tracking.runs import PLAN_TEXT, question
from stlm.tracking import MAX_TAG_CHARS, set_description

if TYPE_CHECKING:
    from stlm.sweep.analysis.arms import Analysis
    from stlm.sweep.analysis.trials import Trial

REPORT_FILES = ("report.html", "report.md", "summary.txt", "comparison.json")  # under the parent run's report/

# the words of tables.verdict, as the answer says them
SAYS = {
    "yes (better)": "better than the control: the 95% interval excludes 0",
    "yes (worse)": "worse than the control: the 95% interval excludes 0",
    "yes": "different from the control: the 95% interval excludes 0",
    "no": "no difference detectable: the 95% interval includes 0",
}


def answer_lines(a: Analysis) -> list[str]:
    """Per compared arm, one sentence: its paired difference from its control on the primary metric, the
    interval, the pairs, and what that says (the table's 'excl. 0' column in words)."""
    lines = []
    for arm in a.arms:
        if a.is_control(arm):
            continue
        d = a.diffs.get(a.primary, {}).get(arm)
        ctrl = a.control_of.get(arm, a.control)
        if d is None:
            lines.append(f"`{arm}` vs `{ctrl}`: no seed that both finished, so no paired difference.")
            continue
        says = SAYS.get(verdict(d, a.modes[0]), f"no interval with {d.n} pair(s)")
        lines.append(
            f"`{arm}` − `{ctrl}`: {stat(d.mean, signed=True)} {a.primary} (95% CI {ci(d.lo, d.hi, signed=True)}, "
            f"{d.n} paired seed{'s' if d.n != 1 else ''}): {says}."
        )
    return lines


def artifact_url(run_id: str, path: str) -> str:
    """A run's artifact file as the MLflow server serves it, relative to the UI's page (works behind a prefix)."""
    return f"get-artifact?path={quote(path, safe='')}&run_uuid={run_id}"


def page_link(experiment_id: str, run_id: str, tab: str = "") -> str:
    """A link inside the MLflow UI (its hash route) to a run's page or one of its tabs, as a training run."""
    return f"#/experiments/{experiment_id}/runs/{run_id}{'/' + tab if tab else ''}?workflowType=machine_learning"


def parent_note(a: Analysis, parent, images: list[tuple[str, str]], out: Path) -> str:
    """The parent run's description: the whole answer on the run's page, in MLflow's 8000 characters (with many
    arms, the per-arm sentences and power lines stay in report.md: the table's 'excl. 0' column says the same)."""
    text = _parent_note(a, parent, images, out, per_arm=True)
    return text if len(text) <= MAX_TAG_CHARS else _parent_note(a, parent, images, out, per_arm=False)


def _parent_note(a: Analysis, parent, images: list[tuple[str, str]], out: Path, per_arm: bool) -> str:
    rid, exp = parent.info.run_id, parent.info.experiment_id
    n_done = len(a.finished)
    lines = [f"### Sweep `{a.name}`", "", question(parent.data.params, a.control), ""]
    answer = answer_lines(a) if per_arm else []
    if answer:
        lines += ["**Answer.** " + " ".join(answer), ""]
    rule = (
        f" Each (arm, seed) cell is represented by its best search sample ({len(a.chosen)} of {n_done} trials)."
        if a.searched
        else ""
    )
    lines += [
        f"**Per arm** ({a.primary}; {n_done} finished trials, {len(a.excluded)} not finished and not averaged; "
        f"95% Student-t intervals; differences paired by seed).{rule}",
        "",
        md_table(*summary_table(a)),
        "",
    ]
    power = compare.power_lines(a.record)
    if not per_arm:  # the warning only; each arm's detectable difference is in report.md
        power = [x for x in power[:1] if x.startswith("Fewer than")] + ["Each arm's answer and power line: report.md."]
    notes = power + param_gap_lines(a)
    lines += [f"> {n}" for n in notes] + ([""] if notes else [])
    if images:
        lines += ["**Plots**", ""]
        lines += [f"![{cap}]({artifact_url(rid, f'report/{name}')})" for name, cap in images] + [""]
    files = [f"[{name}]({page_link(exp, rid, f'artifacts/report/{name}')})" for name in REPORT_FILES]
    files.append(f"[{PLAN_TEXT}]({page_link(exp, rid, f'artifacts/{PLAN_TEXT}')}) (the arms' sizes and FLOPs)")
    lines += [
        "**Files** (the run's Artifacts tab): " + " · ".join(files) + f". On disk: `{out}`.",
        "",
        f"*Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from {n_done} finished trials, at the "
        "sweep's end or by `stlm report`, which rewrites it.*",
    ]
    return "\n".join(lines)


def trial_note(t: Trial, a: Analysis, parent) -> str:
    """A trial run's description: its cell, status, final metric and eval scores, and a link to the parent."""
    p = t.params
    cell = [f"seed {t.seed}"]
    if p.get("sweep.size"):
        cell.append(f"size {p['sweep.size']}")
    if p.get("sweep.sample") is not None and a.searched:
        cell.append(f"search sample {p['sweep.sample']}")
    parent_link = page_link(parent.info.experiment_id, parent.info.run_id)
    lines = [f"**`{t.arm}`**, {', '.join(cell)}: a trial of sweep [`{a.name}`]({parent_link}) ({t.status})."]
    final = t.history.get(a.primary) or []
    if t.value(a.primary) is not None:
        at = f" at step {final[-1][0]}" if final else ""
        chosen = " (its cell's best sample: the one the comparison uses)" if a.searched and t in a.chosen else ""
        lines.append(f"Final {a.primary}: **{stat(t.value(a.primary))}**{at}{chosen}.")
    tasks = headline_tasks(m.group(1) for k in t.metrics if (m := EVAL_RE.match(k)) and m.group(2) == "acc")
    scores = [f"eval/{x}/acc" for x in tasks]
    if scores:
        lines.append(
            "Eval: "
            + ", ".join(
                f"{k.split('/')[1]} {t.metrics[k]:.3f}"
                + (f" ± {t.metrics[k + '_stderr']:.3f}" if f"{k}_stderr" in t.metrics else "")
                for k in scores
            )
            + " (accuracy ± its standard error)."
        )
    if t.error:
        lines.append(f"Error: `{t.error.splitlines()[-1][:300]}`")
    return " ".join(lines)


def publish(client, a: Analysis, parent, images: list[tuple[str, str]], out: Path) -> None:
    """The parent run's description and plots as images, and every trial run's description."""
    from PIL import Image  # lazy: pillow (matplotlib's), only when a report is logged

    rid = parent.info.run_id
    for name, _ in images:  # one image per plot; the step is how many finished trials it shows
        with Image.open(out / name) as img:
            client.log_image(rid, img.convert("RGB"), key=f"report/{Path(name).stem}", step=len(a.finished))
    set_description(client, rid, parent_note(a, parent, images, out))
    for t in a.finished + a.excluded:
        set_description(client, t.run_id, trial_note(t, a, parent))
