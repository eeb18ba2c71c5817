"""`python -m stlm.sweep SWEEP [key=value ...] [--dry-run] [--resume] ...` (also `stlm sweep`).

    python -m stlm.sweep sweeps/quickstart.yaml                  # run it (local Ray unless --address / RAY_ADDRESS)
    python -m stlm.sweep sweeps/ffn_type.yaml --dry-run          # arms, sizes, FLOPs, trials, resources; launches nothing
    python -m stlm.sweep sweeps/quickstart.yaml train.max_steps=30
    python -m stlm.sweep sweeps/quickstart.yaml --resume         # continue an interrupted sweep
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

from stlm.errors import StlmError
from stlm.sweep import compare
from stlm.sweep.spec import Sweep, describe_training, gap_notes, human, load_sweep, param_gaps

PLAN_FILE = "plan.pkl"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stlm sweep", description=(
        "Run a budget-matched ablation / Optuna search on Ray Tune + Ray Train, tracked in MLflow."))
    p.add_argument("sweep", help="sweep YAML file (see sweeps/ and stlm/sweep/spec.py)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the base config (train.max_steps=30)")
    p.add_argument("--dry-run", action="store_true", help="print arms, sizes, trials and resources; launch nothing")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in the experiment directory")
    p.add_argument("--overwrite", action="store_true", help="delete an existing experiment directory and start afresh")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--experiment-dir", default=None, help="where Tune, Train and the ledger live (default ./sweep_runs/<name>)")
    p.add_argument("--verbose", action="store_true", help="show the trials' worker logs (Ray Train, training loop)")
    p.add_argument("--ray-dashboard", action="store_true",
                   help="start a local Ray with its dashboard (http://127.0.0.1:8265); off by default: 11 processes, 0.9 GB")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up attaching to --address after this long (default 30)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sweep file, $MLFLOW_TRACKING_URI, "
                                                        "else sqlite:///<cwd>/mlflow.db)")
    return p


# --------------------------------------------------------------------------- dry run / plan


def describe(sweep: Sweep, space) -> str:
    from stlm.sweep.runner import trial_resources

    spec = sweep.spec
    lines = [f"sweep {sweep.name}: {sweep.path}"]
    if sweep.overrides:
        lines.append(f"overrides: {' '.join(sweep.overrides)}")
    if spec.budget:
        b = spec.budget
        if b.target is not None:
            sizes = ", ".join(f"{t:,}" for t in b.targets)
            lines.append(f"budget: {sizes} parameters (+-{b.tolerance:.1%}), free dimension {b.free}; the control "
                         "nearest the target, every other arm nearest the control's count")
        compute = ("every arm trains on the control's FLOPs" if b.compute == "match" else
                   f"{b.flops:.4g} training FLOPs per trial" if b.flops is not None else None)
        if compute or b.tokens is not None:
            lines.append("compute: " + ", ".join(x for x in (compute, f"{human(b.tokens)} tokens per trial" if b.tokens
                                                               and b.compute != "match" else None,
                                                               f"the control trains on {human(b.tokens)} tokens" if b.tokens
                                                               and b.compute == "match" else None) if x)
                         + " (train.max_steps solved per arm)")
    lines.append("")
    gaps = param_gaps(sweep)
    training = {name: (steps, tokens, flops) for name, steps, tokens, flops in describe_training(sweep)}
    head = (f"{'arm':<22} {'d_model':>7} {'layers':>6} {'heads':>5} {'kv':>3} {'ffn_dim':>7} {'params':>12} {'vs ctrl':>8} "
            f"{'FLOPs/token':>13} {'steps':>6} {'tokens':>8} {'train FLOPs':>11}  settings")
    lines.append(head)
    lines.append("-" * len(head))
    for a in sweep.arms:
        m = a.cfg.model
        mark = " (control)" if a.name == sweep.control_of(a).name else ""
        mark += "" if a.solved else " (base shape; each trial's shape is searched and solved)"
        sets = ", ".join(f"{k}={v}" for k, v in a.settings.items()) or "-"
        steps, tokens, flops = training[a.name]
        lines.append(f"{a.name:<22} {m.d_model:>7} {m.n_layers:>6} {m.n_heads:>5} {m.kv_heads:>3} {m.effective_ffn_dim:>7} "
                     f"{a.count.total:>12,} {gaps[a.name]:>+8.2%} {a.count.flops_per_token:>13,} {steps:>6} "
                     f"{human(tokens):>8} {flops:>11.4g}  {sets}{mark}")
    notes = gap_notes(sweep)
    if spec.budget is not None and (spec.budget.compute == "match" or spec.budget.flops is not None):
        for size in sweep.sizes:
            fl = [training[a.name][2] for a in sweep.arms if a.size == size]
            at = f" at {size:,}" if spec.budget.sized else ""
            notes.append(f"largest pairwise training-FLOPs gap{at}: {(max(fl) - min(fl)) / min(fl):.2%} (steps are whole)")
    if notes:
        lines.append("")
        lines += notes
    lines.append("")
    s = spec.search
    n_cells = len(sweep.cells)
    lines.append(f"trials: {len(sweep.arms)} arms x {len(spec.seeds)} seeds {spec.seeds} x {s.samples} sample(s) per cell "
                 f"= {sweep.num_trials}")
    knobs = [f"{k} ({p.type}{'' if p.type == 'categorical' else f' {p.low:g}..{p.high:g}'})" for k, p in s.params.items()]
    if knobs or space.arch:
        lines.append(f"search: Optuna {s.algorithm} over " + ", ".join(knobs + ([space.describe_arch()] if space.arch else [])))
    else:
        lines.append("search: none (each cell runs once with its configured values)")
    if space.arch:
        good, n = space.sample_feasibility(50)
        lines.append(f"architecture feasibility: {good}/{n} points sampled as the sweep samples them meet the budget ({100.0 * good / n:.0f}%)")
    sched = spec.scheduler
    lines.append("scheduler: " + ("none" if sched.type == "none" else
                                  f"ASHA on step (grace {sched.grace_period}, reduction {sched.reduction_factor:g})"))
    res = trial_resources(sweep)
    r = spec.resources
    lines.append(f"resources per trial: {r.workers} Ray Train worker(s) x {{CPU: {r.cpus_per_worker:g}"
                 + (f", GPU: {r.gpus_per_worker:g}" if r.gpus_per_worker else "") + "} = "
                 + ", ".join(f"{v:g} {k}" for k, v in res.items())
                 + f"; max concurrent: {r.max_concurrent or 'as many as the cluster fits'}")
    cfg = sweep.arms[0].cfg
    t = cfg.train
    total_flops = sum(flops for _, _, flops in training.values()) * len(spec.seeds) * s.samples
    lines.append(f"training: {t.batch_size * t.grad_accum * r.workers} sequences per step; "
                 f"{total_flops:.3g} training FLOPs in all")
    lines.append(f"metric: {', '.join(f'{m} ({o})' for m, o in zip(spec.metrics, spec.modes))}; control arm: "
                 f"{sweep.control_arm if not (spec.budget and spec.budget.sized) else sweep.control_of(sweep.arms[0]).base + ' (at every size)'}")
    if cfg.eval.tasks:
        lines.append(f"eval after each trial: {', '.join(cfg.eval.tasks)} (limit {cfg.eval.limit})")
    del n_cells
    return "\n".join(lines)


def resolve_tracking_uri(cli: str | None, sweep: Sweep) -> str:
    from stlm.tracking import tracking_uri

    return tracking_uri(cli or sweep.arms[0].cfg.tracking.uri)


def sweep_tracking_uri(args, store, sweep: Sweep) -> str:
    """--tracking-uri, else (on --resume) the one the sweep started with (its sweep.json, read from the
    experiment directory itself: an object store's before this machine's mirror is restored), else the
    config's / $MLFLOW_TRACKING_URI."""
    from stlm.sweep.storage import read_json
    from stlm.tracking import tracking_uri

    old = (read_json(store, "sweep.json") or {}) if args.resume and not args.tracking_uri else {}
    return tracking_uri(args.tracking_uri or old.get("tracking_uri") or resolve_tracking_uri(None, sweep))


def absolutize(sweep: Sweep) -> None:
    """Relative paths in the config are relative to the driver's cwd; workers run elsewhere."""
    import dataclasses

    for arm in sweep.arms:
        d, e = arm.data.setdefault("data", {}), arm.data.setdefault("eval", {})
        src = d.get("source")
        if isinstance(src, str) and Path(src).expanduser().exists():
            d["source"] = str(Path(src).expanduser().resolve())
        for sec, key in ((d, "cache_dir"), (d, "gpt2_vocab_file"), (e, "data_dir")):
            if sec.get(key):
                sec[key] = str(Path(sec[key]).expanduser().resolve())
        cfg = arm.cfg
        arm.cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, source=d.get("source", cfg.data.source), cache_dir=d.get("cache_dir"),
                                     gpt2_vocab_file=d.get("gpt2_vocab_file")),
            eval=dataclasses.replace(cfg.eval, data_dir=e.get("data_dir")),
        )


# --------------------------------------------------------------------------- results


def summarize(sweep: Sweep, result_grid, ledger: dict, exp_dir: Path, space=None) -> tuple[str, list[dict]]:
    """The end-of-sweep table (one row per trial) and the rows themselves (for sweep.json)."""
    spec = sweep.spec
    tasks = sweep.arms[0].cfg.eval.tasks  # the requested tasks (groups such as blimp, not their members)
    rows = []
    for r in result_grid:
        cfg = r.config or {}
        m = r.metrics or {}
        tid = m.get("trial_id") or (r.path and Path(r.path).name)
        entry = ledger.get("trials", {}).get(tid, {})
        status = entry.get("status") or ("failed" if r.error else "finished")
        if r.error and status == "running":
            status = "failed"
        knobs = {k: v for k, v in cfg.items() if k not in ("arm", "seed") and not k.startswith("arch.")}
        shape = None
        if space is not None and space.arch is not None:
            try:
                mc = space.resolve(cfg).model
                shape = f"{mc.d_model}x{mc.n_layers} h{mc.n_heads}/{mc.kv_heads} f{mc.effective_ffn_dim}"
            except StlmError:
                shape = "infeasible"
        rows.append({
            "trial_id": tid, "arm": cfg.get("arm"), "seed": cfg.get("seed"), "knobs": knobs, "shape": shape,
            "params": m.get("params"), "step": m.get("step"), "val_bpb": m.get("val_bpb"),
            **{k: m.get(k) for k in spec.metrics},
            "evals": {f"eval/{t}/acc": m[f"eval/{t}/acc"] for t in tasks if f"eval/{t}/acc" in m},
            "startup_s": m.get("startup_s"), "wall_s": m.get("time_total_s"), "status": status,
            "error": (str(r.error).strip().splitlines() or [""])[-1][:160] if r.error else None,
            "run_id": entry.get("run_id"),
        })
    rows.sort(key=lambda x: (str(x["arm"]), x["seed"] if x["seed"] is not None else -1, x["trial_id"] or ""))
    if spec.multi_objective:
        pareto = pareto_front(rows, spec.metrics, spec.modes)
        for row in rows:
            row["pareto"] = row["trial_id"] in pareto

    # columns: trial, arm, seed, searched knobs, shape, params, step, the metrics, eval accuracies, wall, status
    knob_keys = sorted({k for row in rows for k in row["knobs"]})
    extra_metrics = [k for k in spec.metrics if k not in ("val_bpb", "params")]
    eval_keys = sorted({k for row in rows for k in row["evals"]})
    cols = [("trial", 10, lambda r: r["trial_id"]), ("arm", 18, lambda r: r["arm"]), ("seed", 4, lambda r: r["seed"])]
    cols += [(k.split(".")[-1], 12, lambda r, k=k: _fmt(r["knobs"].get(k))) for k in knob_keys]
    if any(row["shape"] for row in rows):
        cols.append(("d x L h/kv ffn", 22, lambda r: r["shape"]))
    cols += [("params", 9, lambda r: human(r["params"]) if r["params"] else "-"),
             ("step", 6, lambda r: r["step"]),
             ("val_bpb", 8, lambda r: _fmt(r["val_bpb"], ".4f"))]
    cols += [(k, 12, lambda r, k=k: _fmt(r.get(k), ".4g")) for k in extra_metrics]
    cols += [(k.split("/")[1] + " acc", 10, lambda r, k=k: _fmt(r["evals"].get(k), ".3f")) for k in eval_keys]
    cols += [("wall", 6, lambda r: f"{r['wall_s']:.0f}s" if r["wall_s"] else "-")]
    head = " ".join(f"{name:>{w}}" if i > 1 else f"{name:<{w}}" for i, (name, w, _) in enumerate(cols)) + "  status"
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for i, (_, w, get) in enumerate(cols):
            v = get(row)
            v = "-" if v is None else str(v)
            cells.append(f"{v:>{w}}" if i > 1 else f"{v:<{w}}")
        lines.append(" ".join(cells) + f"  {row['status']}" + (" *pareto*" if row.get("pareto") else "")
                     + (f"  ({row['error']})" if row["error"] else ""))
    # per-arm statistics: one value per (arm, seed) cell, the same rule and numbers as the report and MLflow
    lines.append("")
    rec = comparison_of(sweep, rows)
    lines.append(f"per arm ({compare.RULE}):")
    lines += compare.summary_lines(rec) + compare.power_lines(rec) + compare.scale_lines(rec)
    starts = [row["startup_s"] for row in rows if isinstance(row.get("startup_s"), (int, float))]
    if starts:
        lines.append(f"trial start-up (Tune trial -> Ray Train worker running): median {sorted(starts)[len(starts) // 2]:.1f}s, "
                     f"max {max(starts):.1f}s")
    return "\n".join(lines), rows


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
    sign = [1 if mo == "min" else -1 for mo in modes]

    def dominates(a, b):
        return all(s * x <= s * y for s, x, y in zip(sign, a, b)) and any(s * x < s * y for s, x, y in zip(sign, a, b))

    return {t for t, v in pts if not any(dominates(o, v) for _, o in pts)}


def count_feasible(sweep: Sweep, space, results) -> int:
    """Trials whose configuration resolves (stlm.models.solve_budget) to within the budget."""
    from stlm.sweep.spec import count

    b, good = sweep.spec.budget, 0
    for r in results:
        config = r.config or {}
        if config.get("arch.infeasible"):
            continue
        try:
            total = count(space.resolve(config)).total
        except StlmError:
            continue
        target = sweep.arm(config["arm"]).size if b is not None else None
        good += target is None or abs(total - target) <= b.tolerance * target
    return good


def _fmt(v, spec: str = ".3g") -> str:
    if isinstance(v, float):
        return format(v, spec)
    return "-" if v is None else str(v)


def write_sweep_json(exp_dir: Path, sweep: Sweep, tracking_uri: str, experiment: str, parent_run_id: str | None,
                     extra: dict | None = None, *, where: str | None = None) -> Path:
    """<exp>/sweep.json (`where`: the experiment directory as the user named it, an s3:// URI included)."""
    data = {
        "name": sweep.name, "tracking_uri": tracking_uri, "experiment": experiment, "parent_run_id": parent_run_id,
        "metric": sweep.spec.metrics[0] if not sweep.spec.multi_objective else sweep.spec.metrics,
        "mode": sweep.spec.modes[0] if not sweep.spec.multi_objective else sweep.spec.modes,
        "control_arm": sweep.control_arm, "arms": [a.name for a in sweep.arms], "seeds": list(sweep.spec.seeds),
        "spec_path": str(sweep.path), "overrides": list(sweep.overrides), "experiment_dir": where or str(exp_dir),
        "num_trials": sweep.num_trials,
        "arm_settings": {a.name: a.settings for a in sweep.arms},
        "arm_params": {a.name: a.count.total for a in sweep.arms},
    }
    path = exp_dir / "sweep.json"
    if path.is_file():
        old = json.loads(path.read_text())
        old.update({k: v for k, v in data.items() if v is not None})
        data = old
    data.update(extra or {})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    from stlm.sweep import storage

    storage.changed(path)  # an object-store experiment dir: uploaded within seconds (and at the end)
    return path


# --------------------------------------------------------------------------- main


def sweep_state(exp_dir: Path, store=None) -> str:
    """empty | planned (plan written, Tune never saved a state: nothing to continue) | started | other.
    With `store` in an object store, the bucket is asked (exp_dir is only its mirror)."""
    if store is not None and store.remote:
        import fnmatch

        from stlm.sweep.storage import SESSION_FILE

        names = [n for n in store.names() if n != SESSION_FILE]
        if not names:
            return "empty"
        if fnmatch.filter(store.names("tune"), "experiment_state-*.json"):
            return "started"
        return "planned" if PLAN_FILE in names else "other"
    if not exp_dir.is_dir():
        return "empty"
    entries = [p for p in exp_dir.iterdir() if not p.name.endswith(".lock")]  # a driver's lock is not a sweep
    if not entries:
        return "empty"
    if any((exp_dir / "tune").glob("experiment_state-*.json")):
        return "started"
    if (exp_dir / PLAN_FILE).is_file():
        return "planned"
    return "other"


def rerun_command(sweep: Sweep, exp_dir: Path, *flags: str, overrides: bool = True) -> str:
    parts = ["python -m stlm.sweep", str(sweep.path), *(sweep.overrides if overrides else []), *flags,
             "--experiment-dir", str(exp_dir)]
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from stlm.interrupts import Interrupts

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    t_start = time.time()
    guard = Interrupts.install()  # SIGINT and SIGTERM: a clean stop at any phase, bounded in time

    sweep = load_sweep(args.sweep, args.overrides)
    from stlm.sweep import storage

    store = storage.open(args.experiment_dir or Path("sweep_runs") / sweep.name)
    if store.remote:  # the bucket answers (bounded), before its state is read
        from stlm.sweep import preflight

        preflight.check_storage(store)
    exp_dir = store.local  # the directory itself, or this machine's mirror of an object store's
    state = sweep_state(exp_dir, store)
    address = args.address or os.environ.get("RAY_ADDRESS")

    if args.resume:
        if state in ("empty", "other"):
            raise StlmError(f"--resume: {store} holds no sweep to continue (no {PLAN_FILE}). Start it with: "
                            f"{rerun_command(sweep, store)}")
        if args.overrides:
            print("note: --resume continues the sweep as it was planned; the overrides given now are ignored.")
        sweep = pickle.loads(store.read_bytes(PLAN_FILE) if store.remote else (exp_dir / PLAN_FILE).read_bytes())
    else:
        absolutize(sweep)
        if not (args.dry_run or args.overwrite):
            if state == "started":
                raise StlmError(f"The experiment directory {store} already holds a sweep that has started. Continue "
                                f"it with: {rerun_command(sweep, store, '--resume', overrides=False)} ; or start "
                                "afresh with --overwrite, or choose another --experiment-dir.")
            if state == "other":
                raise StlmError(f"The experiment directory {store} holds files that are not a sweep's; choose another "
                                "--experiment-dir, or pass --overwrite to delete them.")
    for note in getattr(sweep, "notes", []):
        print(f"note: {note}")

    from stlm.sweep.space import SearchSpace

    space = SearchSpace(sweep)
    print(describe(sweep, space), flush=True)
    from stlm.sweep import preflight

    uri = sweep_tracking_uri(args, store, sweep)
    preflight.check(sweep, attached=bool(address), tracking_uri=uri)  # every problem at once; nothing written yet
    where = (f"the cluster at {address} is checked once connected" if address
             else "each trial's request fits this machine")
    print(f"pre-flight: data, tokenizers and eval data found; {where}.")
    if args.dry_run:
        print("\n--dry-run: nothing launched.")
        return 0

    if address:  # attach (bounded) and check the cluster before anything is written
        _start_ray(address, exp_dir, args, sweep)
    from stlm.sweep.lock import hold

    hold(exp_dir, store)  # one driver per experiment directory: taken before --overwrite deletes anything
    store.start_session(resume=args.resume or state != "empty")  # an object store: its driver files, here
    restart = args.resume and state == "planned"
    if restart:
        print(f"note: {store} holds a sweep that was stopped before its first saved state; it starts again "
              "from its plan (no trial had finished).")
    if not args.resume and state != "empty":
        if state == "planned" and not args.overwrite:
            print(f"note: {store} holds a sweep that was stopped before its first saved state; starting afresh.")
        supersede(exp_dir, delete_runs=state == "planned")
        if store.remote:
            for name in store.names():
                store.delete(name)
            store.clear_mirror()
            store.start_session(resume=False)
        else:
            shutil.rmtree(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        (exp_dir / PLAN_FILE).write_bytes(pickle.dumps(sweep))
        store.upload(PLAN_FILE)

    try:
        return run(sweep, space, exp_dir, args, t_start, uri=uri, store=store, guard=guard, restart=restart,
                   address=address)
    finally:
        storage.flush_all()  # the driver's last writes reach the bucket (no-op for a local directory)


def _start_ray(address: str | None, exp_dir: Path, args, sweep: Sweep) -> tuple[bool, dict]:
    """Start a local Ray or attach to `address` (bounded by --connect-timeout); (dashboard on, resources)."""
    import ray

    from stlm.sweep import runner
    from stlm.sweep.train_run import driver_can_free_placement_groups

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic CLIReporter table: quiet, with our columns
    driver_frees_pgs = driver_can_free_placement_groups()
    env = runner.env_vars(driver_frees_pgs=driver_frees_pgs)
    dashboard = args.ray_dashboard or not driver_frees_pgs
    runner.init_ray(address, env, exp_dir=exp_dir, dashboard=dashboard, verbose=args.verbose,
                    connect_timeout=args.connect_timeout)
    from stlm.interrupts import Interrupts

    Interrupts.install().reclaim()  # ray.init replaced our SIGTERM handler with its own abort
    cluster = ray.cluster_resources()
    runner.check_cluster(sweep, cluster, attached=bool(address))
    return dashboard, cluster


def supersede(exp_dir: Path, *, delete_runs: bool) -> None:
    """Before an experiment directory is cleared: its MLflow runs must not stay RUNNING. A sweep that never
    saved a state (delete_runs) is deleted from MLflow with its trial runs (a rerun replaces it); an
    overwritten one that had started is kept, ended KILLED."""
    from stlm import tracking as T
    from stlm.sweep.tracking import Ledger

    try:
        ledger = Ledger(exp_dir)
        info = json.loads((exp_dir / "sweep.json").read_text()) if (exp_dir / "sweep.json").is_file() else {}
    except (OSError, ValueError):
        return
    parent = ledger.data.get("parent_run_id")
    if not parent or not info.get("tracking_uri"):
        return
    try:
        client = T.mlflow_client(info["tracking_uri"])
        for run_id in [t["run_id"] for t in ledger.trials.values()] + [parent]:
            if delete_runs:
                client.delete_run(run_id)
            elif client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "stlm.status", "overwritten")
                T.end_run(client, run_id, "KILLED")
    except Exception as e:  # noqa: BLE001 - the store may be gone; the directory is cleared either way
        print(f"note: could not update the old sweep's MLflow runs ({type(e).__name__}: {e}).")


def end_parent(client, parent: str, status: str) -> None:
    """The parent run's end state: finished -> FINISHED, interrupted -> KILLED, anything else -> FAILED."""
    from stlm import tracking as T

    client.set_tag(parent, "stlm.status", status)
    T.end_run(client, parent, {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))


def repair_runs(client, exp_dir: Path, results=None) -> int:
    """No trial run is left RUNNING once the driver is done: a run whose trial Tune finished (or failed)
    while the driver that owned the run was killed gets that end state; one still unfinished, KILLED
    (a later --resume reopens it). Returns how many runs were repaired."""
    from stlm import tracking as T
    from stlm.sweep.tracking import Ledger

    ledger = Ledger(exp_dir)
    outcome = {}
    for r in results or []:
        tid = (r.metrics or {}).get("trial_id") or (r.path and Path(r.path).name)
        outcome[tid] = "failed" if r.error else "finished"
    fixed = 0
    for tid, entry in ledger.trials.items():
        try:
            if client.get_run(entry["run_id"]).info.status != "RUNNING":
                continue
        except Exception:  # noqa: BLE001 - a deleted run: nothing to repair
            continue
        status = outcome.get(tid, "stopped")
        client.set_tag(entry["run_id"], "stlm.status", status)
        T.end_run(client, entry["run_id"], {"finished": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))
        entry["status"] = status
        fixed += 1
    if fixed:
        ledger.save()
    return fixed


def restart_from_plan(client, exp_dir: Path, store=None) -> None:
    """--resume of a sweep stopped before Tune's first save: its trial runs are deleted (the trials start
    again under new ids, so keeping them would give each cell two runs), Tune's and Train's partial
    state is removed; the parent run is kept."""
    from stlm.sweep.tracking import Ledger

    ledger = Ledger(exp_dir)
    for entry in ledger.trials.values():
        try:
            client.delete_run(entry["run_id"])
        except Exception:  # noqa: BLE001 - already gone
            pass
    ledger.data["trials"] = {}
    ledger.save()
    for sub in ("tune", "train", "trials"):
        shutil.rmtree(exp_dir / sub, ignore_errors=True)
        if store is not None and store.remote:
            store.delete(sub)


def run(sweep: Sweep, space, exp_dir: Path, args, t_start: float, *, uri: str, store, guard=None,
        restart: bool = False, address: str | None = None) -> int:
    from stlm import tracking as T
    from stlm.sweep.tracking import Ledger, start_parent

    os.environ["MLFLOW_TRACKING_URI"] = uri
    experiment = sweep.arms[0].cfg.tracking.experiment
    client = T.mlflow_client(uri)
    if restart:
        restart_from_plan(client, exp_dir, store)
    if args.resume:
        n = repair_runs(client, exp_dir)  # runs a kill -9'd driver left RUNNING; the trials reopen them
        if n:
            print(f"note: {n} trial run(s) left RUNNING by the previous driver were marked KILLED until they resume.")
    ledger = Ledger(exp_dir)
    parent = start_parent(client, ledger, sweep, experiment, store.uri, space)
    write_sweep_json(exp_dir, sweep, uri, experiment, parent, where=store.uri)
    print(f"\nexperiment dir: {store}" + (f" (driver files mirrored in {exp_dir})" if store.remote else "")
          + f"\nMLflow: {uri} (experiment {experiment!r}, parent run {parent})", flush=True)
    if guard is not None:  # a driver forced out by the watchdog still ends its runs
        guard.on_force_exit(lambda: (repair_runs(client, exp_dir), end_parent(client, parent, "interrupted")))
    resume_cmd = rerun_command(sweep, store, "--resume", overrides=False)
    try:
        return _run_trials(sweep, space, exp_dir, args, t_start, client=client, uri=uri, experiment=experiment,
                           parent=parent, address=address, guard=guard, resume_cmd=resume_cmd, store=store)
    except KeyboardInterrupt:
        _end_runs(client, exp_dir, parent, "interrupted")
        print(f"\nsweep {sweep.name} interrupted after {time.time() - t_start:.0f}s, before its trials ran to the "
              f"end. Continue it with:\n  {resume_cmd}", flush=True)
        return 130
    except BaseException:
        _end_runs(client, exp_dir, parent, "failed")
        raise


def _end_runs(client, exp_dir: Path, parent: str, status: str) -> None:
    """Leave no run RUNNING on the way out, as far as the tracking server lets us: with the server away,
    the error that ends the sweep (and the --resume that repairs the runs) matters more than this."""
    try:
        repair_runs(client, exp_dir)
        end_parent(client, parent, status)
    except Exception as e:  # noqa: BLE001 - an unreachable tracking server
        print(f"note: the MLflow runs could not be ended now ({type(e).__name__}); --resume repairs them.", flush=True)


def _run_trials(sweep: Sweep, space, exp_dir: Path, args, t_start: float, *, client, uri, experiment, parent,
                address, guard, resume_cmd, store) -> int:
    import contextlib

    from stlm.sweep import runner
    from stlm.sweep.tracking import Ledger, MLflowSweepCallback
    from stlm.sweep.train_run import FreeDeadTrialsPlacementGroups

    if not address:
        runner.prepare_data_locally(sweep)
    else:  # a cluster: each corpus is tokenized once, here, and copied to the nodes (cluster_data.py)
        from stlm.sweep import cluster_data

        cluster_data.publish(sweep, store.ray(cluster_data.STORE))
    import ray

    t_ray = time.time()
    if ray.is_initialized():  # attached before anything was written (main)
        dashboard, cluster = False, ray.cluster_resources()
    else:
        dashboard, cluster = _start_ray(address, exp_dir, args, sweep)
    concurrency = runner.default_concurrency(sweep, cluster)
    print(f"Ray up in {time.time() - t_ray:.1f}s: {', '.join(f'{v:g} {k}' for k, v in cluster.items() if k in ('CPU', 'GPU'))}; "
          f"{sweep.num_trials} trials, up to {concurrency} at a time"
          + ("" if address or dashboard else "; Ray dashboard off (--ray-dashboard turns it on)"), flush=True)

    ctx = runner.Context(sweep=sweep, space=space, exp_dir=store.uri)
    callback = MLflowSweepCallback(tracking_uri=uri, experiment=experiment, sweep=sweep, space=space, exp_dir=exp_dir,
                                   exp_uri=store.uri,
                                   prepare_trial=lambda config, tid: runner.prepare_trial(ctx, config, tid))
    from stlm.sweep.disk import DiskGuard  # ends the sweep cleanly before a full disk truncates Tune's state

    tuner = runner.build_tuner(ctx, resume=args.resume and sweep_state(exp_dir, store) == "started",
                               callbacks=[callback, FreeDeadTrialsPlacementGroups(),
                                          DiskGuard(exp_dir, sweep, where=store.uri)],
                               concurrency=concurrency,
                               reporter=runner.make_reporter(sweep))
    with guard.tune_running() if guard is not None else contextlib.nullcontext():
        results = tuner.fit()
    if results.num_terminated + results.num_errors < sweep.num_trials or (guard is not None and guard.signals):
        # SIGINT / SIGTERM (or SIGUSR1): Tune stopped and saved the experiment; nothing is lost.
        # The queued MLflow writes go first (raises, naming --resume, when the server stays away).
        callback.finish("interrupted")
        if callback.outbox.pending() == 0:
            repair_runs(client, exp_dir, None)
            end_parent(client, parent, "interrupted")
        done = Ledger(exp_dir).trials.values()
        n_fin = sum(1 for t in done if t.get("status") == "finished")
        n_fail = sum(1 for t in done if t.get("status") == "failed")
        print(f"\nsweep {sweep.name} interrupted after {time.time() - t_start:.0f}s "
              f"({n_fin} of {sweep.num_trials} trials finished" + (f", {n_fail} failed" if n_fail else "")
              + f"). Continue it with:\n  {resume_cmd}", flush=True)
        return 130
    callback.finish("finished")  # every queued MLflow write is made (or a bounded wait ends the sweep)
    repair_runs(client, exp_dir, results)  # a trial Tune finished while a killed driver owned its run
    ledger = Ledger(exp_dir)  # re-read: the callback wrote it
    table, rows = summarize(sweep, results, ledger.data, exp_dir, space)
    wall = time.time() - t_start
    feasible = count_feasible(sweep, space, results)
    n_failed = sum(1 for r in rows if r["status"] == "failed")
    extra = {"wall_s": wall, "trials": rows, "feasible_fraction": feasible / max(1, len(rows)),
             "resumed": bool(args.resume)}
    extra["comparison"] = comparison_of(sweep, rows)
    if sweep.spec.multi_objective:
        extra["pareto"] = [r["trial_id"] for r in rows if r.get("pareto")]
    write_sweep_json(exp_dir, sweep, uri, experiment, parent, extra, where=store.uri)

    print("\n" + table)
    if space.arch is not None:
        print(f"\narchitecture points feasible: {feasible}/{len(rows)} ({100.0 * feasible / max(1, len(rows)):.0f}%)"
              + (f"; the sampled ffn_multiple was moved to the nearest feasible value in {space.stats['moved']} of "
                 f"{space.stats['points']} points" if space.stats["points"] and not args.resume else ""))
    report = None
    try:
        from stlm.sweep.report import build_report

        multi = len(sweep.spec.metrics) > 1  # NSGA-II: the report draws the Pareto front over all objectives
        report = build_report(uri, parent, exp_dir / "report",
                              metric=list(sweep.spec.metrics) if multi else sweep.spec.metrics[0],
                              mode=list(sweep.spec.modes) if multi else sweep.spec.modes[0],
                              control_arm=sweep.control_arm)
        store.upload("report")
    except (Exception, KeyboardInterrupt) as e:  # the report is a bonus; the results are in MLflow either way
        print(f"\n(report not written: {type(e).__name__}: {e}; write it with: stlm report {store})")
    print(f"\nsweep {sweep.name}: {len(rows)} trials ({n_failed} failed) in {wall:.0f}s; experiment dir {store}")
    if report:
        print(f"report: {report}")
    print(f"browse the runs:  mlflow ui --backend-store-uri {uri}")
    if guard is not None and guard.signals:
        return 130
    return 0 if n_failed == 0 else 1


if __name__ == "__main__":
    from stlm.cli import run_main

    sys.exit(run_main(main, sys.argv[1:]))
