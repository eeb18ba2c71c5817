"""The end-of-sweep summary from Tune's results: one row per trial, the arms' comparison, what sweep.json keeps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stlm import stats
from stlm.errors import StlmError
from stlm.fmt import num, si
from stlm.models import count_params
from stlm.sweep.analysis import compare
from stlm.sweep.plan.sweep import Sweep
from stlm.sweep.resilience.low_memory import low_memory
from stlm.sweep.resilience.stall import LIMIT, LOST, SILENT, STALLS


def summarize(sweep: Sweep, result_grid, ledger: dict, exp_dir: Path, space=None) -> tuple[str, list[dict]]:
    """The end-of-sweep table (one row per trial) and the rows themselves (for sweep.json)."""
    rows = _trial_rows(sweep, result_grid, ledger, space)
    lines = _trial_table(rows, sweep.spec.metrics)
    lines.append("")
    lines += _arm_lines(sweep, rows)
    return "\n".join(lines), rows


def _trial_rows(sweep: Sweep, result_grid, ledger: dict, space) -> list[dict]:
    """One row per Tune result, sorted by arm, seed and trial; with several objectives each row says whether
    it is on the Pareto front."""
    spec = sweep.spec
    tasks = sweep.arms[0].cfg.eval.tasks  # the requested tasks (groups such as blimp, not their members)
    rows = [_trial_row(r, ledger, spec.metrics, tasks, space) for r in result_grid]
    rows.sort(key=lambda x: (str(x["arm"]), x["seed"] if x["seed"] is not None else -1, x["trial_id"] or ""))
    if spec.multi_objective:
        pareto = pareto_front(rows, spec.metrics, spec.modes)
        for row in rows:
            row["pareto"] = row["trial_id"] in pareto
    return rows


def _trial_row(result, ledger: dict, metrics: list[str], tasks: list[str], space) -> dict:
    """A Tune result's row: its cell, searched knobs, shape, metrics and eval accuracies, and the status the
    sweep's ledger gives it (a trial whose result carries an error never counts as running)."""
    cfg = result.config or {}
    m = result.metrics or {}
    tid = m.get("trial_id") or (result.path and Path(result.path).name)
    entry = ledger.get("trials", {}).get(tid, {})
    status = entry.get("status") or ("failed" if result.error else "finished")
    if result.error and status == "running":
        status = "failed"
    return {
        "trial_id": tid,
        "arm": cfg.get("arm"),
        "seed": cfg.get("seed"),
        "knobs": {k: v for k, v in cfg.items() if k not in ("arm", "seed") and not k.startswith("arch.")},
        "shape": _shape(cfg, space),
        "params": m.get("params"),
        "step": m.get("step"),
        "val_bpb": m.get("val_bpb"),
        **{k: m.get(k) for k in metrics},
        "evals": {f"eval/{t}/acc": m[f"eval/{t}/acc"] for t in tasks if f"eval/{t}/acc" in m},
        "startup_s": m.get("startup_s"),  # of its last attempt: a retry's counts from the retry's start
        **{k: m.get(k) for k in (STALLS, SILENT, LIMIT, LOST)},  # set once it stalled and was retried
        "wall_s": m.get("time_total_s"),
        "status": status,
        "error": _error_line(result.error) if result.error else None,
        "run_id": entry.get("run_id"),
    }


def _error_line(error) -> str:
    """The line a failed trial's row shows: Ray's memory monitor named with the node's figures, else the error's
    last line."""
    text = str(error).strip()
    return (low_memory(text) or (text.splitlines() or [""])[-1])[:160]


def _shape(cfg: dict, space) -> str | None:
    """The solved shape of an architecture search's trial ("d_model x n_layers h heads/kv heads f ffn")."""
    if space is None or space.arch is None:
        return None
    try:
        mc = space.resolve(cfg).model
    except StlmError:
        return "infeasible"
    return f"{mc.d_model}x{mc.n_layers} h{mc.n_heads}/{mc.kv_heads} f{mc.effective_ffn_dim}"


def _trial_table(rows: list[dict], metrics: list[str]) -> list[str]:
    """The table's lines: a header, a rule, and one line per row (its status, Pareto mark and error after the
    cells)."""
    cols = _columns(rows, metrics)
    head = " ".join(f"{name:>{w}}" if i > 1 else f"{name:<{w}}" for i, (name, w, _) in enumerate(cols)) + "  status"
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for i, (_, w, get) in enumerate(cols):
            v = get(row)
            v = "-" if v is None else str(v)
            cells.append(f"{v:>{w}}" if i > 1 else f"{v:<{w}}")
        lines.append(
            " ".join(cells)
            + f"  {row['status']}"
            + (f" (stalled {row[STALLS]}x, retried)" if row.get(STALLS) and row["status"] != "stalled" else "")
            + (" *pareto*" if row.get("pareto") else "")
            + (f"  ({row['error']})" if row["error"] else "")
        )
    return lines


def _columns(rows: list[dict], metrics: list[str]) -> list[tuple[str, int, Callable[[dict], object]]]:
    """(title, width, cell of a row) for: trial, arm, seed, searched knobs, shape, params, step, the metrics,
    eval accuracies, wall time; the shape only when some row has one."""
    knob_keys = sorted({k for row in rows for k in row["knobs"]})
    extra_metrics = [k for k in metrics if k not in ("val_bpb", "params")]
    eval_keys = sorted({k for row in rows for k in row["evals"]})
    cols = [("trial", 10, lambda r: r["trial_id"]), ("arm", 18, lambda r: r["arm"]), ("seed", 4, lambda r: r["seed"])]
    cols += [(k.split(".")[-1], 12, lambda r, k=k: num(r["knobs"].get(k), ".3g")) for k in knob_keys]
    if any(row["shape"] for row in rows):
        cols.append(("d x L h/kv ffn", 22, lambda r: r["shape"]))
    cols += [
        ("params", 9, lambda r: si(r["params"]) if r["params"] else "-"),
        ("step", 6, lambda r: r["step"]),
        ("val_bpb", 8, lambda r: num(r["val_bpb"], ".4f")),
    ]
    cols += [(k, 12, lambda r, k=k: num(r.get(k), ".4g")) for k in extra_metrics]
    cols += [(k.split("/")[1] + " acc", 10, lambda r, k=k: num(r["evals"].get(k), ".3f")) for k in eval_keys]
    cols += [("wall", 6, lambda r: f"{r['wall_s']:.0f}s" if r["wall_s"] else "-")]
    return cols


def _arm_lines(sweep: Sweep, rows: list[dict]) -> list[str]:
    """Per-arm statistics, one value per (arm, seed) cell (the same rule and numbers as the report and MLflow),
    then the trials' start-up times."""
    rec = comparison_of(sweep, rows)
    lines = [f"per arm ({compare.RULE}):"]
    lines += compare.summary_lines(rec) + compare.power_lines(rec) + compare.scale_lines(rec)
    starts = [row["startup_s"] for row in rows if isinstance(row.get("startup_s"), (int, float))]
    if starts:
        lines.append(
            f"trial start-up (Tune trial, or a retry's start -> Ray Train worker running): median "
            f"{sorted(starts)[len(starts) // 2]:.1f}s, max {max(starts):.1f}s"
        )
    return lines + stall_lines(rows)


def stall_lines(rows: list[dict]) -> list[str]:
    """The trials that stalled (no report for longer than their stall limit), with the time each stall cost,
    apart from start-up."""
    stalled = [r for r in rows if r.get(STALLS) or r["status"] == "stalled"]
    if not stalled:
        return []
    parts = []
    for r in stalled:
        if r["status"] == "stalled":
            parts.append(f"{r['trial_id']} ended stalled (its error says when)")
        else:
            parts.append(
                f"{r['trial_id']} stalled {r[STALLS]}x, retried: silent {r[SILENT]:.1f}s against a {r[LIMIT]:.0f}s "
                f"limit, {r[LOST]:.1f}s from its last report to its retry's start"
            )
    return [
        f"stalled trials ({len(stalled)}; each stall retried from its last checkpoint, apart from crashes): "
        + "; ".join(parts)
    ]


def comparison_of(sweep: Sweep, rows: list[dict]) -> dict:
    """The comparison of the arms from the finished trials' rows (marks each cell's chosen trial):
    what the terminal prints and sweep.json keeps; the report computes the same from MLflow."""
    metric, mode = sweep.spec.metrics[0], sweep.spec.modes[0]
    done = [r for r in rows if r["status"] == "finished" and isinstance(r.get(metric), (int, float))]
    chosen = compare.best_per_cell(done, lambda r: (r["arm"], r["seed"]), lambda r: r[metric], mode)
    for r in rows:
        r["chosen"] = any(r is c for c in chosen)
    per_seed: dict = {}
    for r in chosen:
        per_seed.setdefault(r["arm"], {})[r["seed"]] = float(r[metric])
    control_of = {a.name: sweep.control_of(a).name for a in sweep.arms}
    arms = [a.name for a in sweep.arms]
    summaries, diffs = compare.compare_arms(per_seed, arms, control_of)
    sized = sweep.spec.budget is not None and sweep.spec.budget.sized
    points = [(r["arm"], r["seed"], r.get("params"), float(r[metric])) for r in chosen] if sized else None
    return compare.record(metric, summaries, diffs, control_of, arms, points)


def pareto_front(rows: list[dict], metrics: list[str], modes: list[str]) -> set:
    """Trial ids of the finished trials no other finished trial dominates."""
    pts = [(row["trial_id"], [row.get(k) for k in metrics]) for row in rows if row["status"] == "finished"]
    pts = [(t, v) for t, v in pts if all(isinstance(x, (int, float)) for x in v)]
    return {pts[i][0] for i in stats.pareto_front([v for _, v in pts], modes)}


def count_feasible(sweep: Sweep, space, results) -> int:
    """Trials whose configuration resolves (stlm.models.solve_budget) to within the budget."""
    b, good = sweep.spec.budget, 0
    for r in results:
        config = r.config or {}
        if config.get("arch.infeasible"):
            continue
        try:
            total = count_params(space.resolve(config).model).total
        except StlmError:
            continue
        target = sweep.arm(config["arm"]).size if b is not None else None
        good += target is None or abs(total - target) <= b.tolerance * target
    return good
