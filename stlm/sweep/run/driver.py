"""`python -m stlm.sweep SWEEP [key=value ...] [--dry-run] [--resume] ...` (also `stlm sweep`).

    python -m stlm.sweep sweeps/quickstart.yaml                  # run it (local Ray unless --address / RAY_ADDRESS)
    python -m stlm.sweep sweeps/ffn_type.yaml --dry-run          # arms, sizes, FLOPs, trials, resources; launches nothing
    python -m stlm.sweep sweeps/quickstart.yaml train.max_steps=30
    python -m stlm.sweep sweeps/quickstart.yaml --resume         # continue an interrupted sweep
"""

from __future__ import annotations

from stlm.sweep.resilience import layout, legacy

import os
import pickle
import shutil
import sys
import time
from pathlib import Path

from stlm.errors import StlmError
from stlm.sweep.analysis.summary import comparison_of, count_feasible, summarize
from stlm.sweep.plan.describe import describe
from stlm.sweep.plan.sweep import Sweep, load_sweep
from stlm.sweep.resilience.state import rerun_command, sweep_state
from stlm.sweep.resilience.sweep_json import write_sweep_json
from stlm.sweep.run.args import parser
from stlm.sweep.run.data import prepare_data_locally
from stlm.sweep.run.ray_cluster import check_cluster, default_concurrency, env_vars, init_ray
from stlm.sweep.run.trial import Context, prepare_trial
from stlm.sweep.run.tuner import build_tuner, make_reporter
from stlm.sweep.tracking.runs import end_runs, end_parent, repair_runs, restart_from_plan, supersede



def resolve_tracking_uri(cli: str | None, sweep: Sweep) -> str:
    from stlm.tracking import tracking_uri

    return tracking_uri(cli or sweep.arms[0].cfg.tracking.uri)


def sweep_tracking_uri(args, store, sweep: Sweep) -> str:
    """--tracking-uri, else (on --resume) the one the sweep started with (its sweep.json, read from the
    experiment directory itself: an object store's before this machine's mirror is restored), else the
    config's / $MLFLOW_TRACKING_URI."""
    from stlm.sweep.resilience.storage import read_json
    from stlm.tracking import tracking_uri

    old = (read_json(store, layout.SWEEP_JSON) or {}) if args.resume and not args.tracking_uri else {}
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


def main(argv: list[str] | None = None) -> int:
    from stlm.interrupts import Interrupts

    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    t_start = time.time()
    guard = Interrupts.install()  # SIGINT and SIGTERM: a clean stop at any phase, bounded in time

    sweep = load_sweep(args.sweep, args.overrides)
    from stlm.sweep.resilience import storage

    store = storage.open(args.experiment_dir or Path("sweep_runs") / sweep.name)
    if store.remote:  # the bucket answers (bounded), before its state is read
        from stlm.sweep.run import preflight

        preflight.check_storage(store)
    exp_dir = store.local  # the directory itself, or this machine's mirror of an object store's
    state = sweep_state(exp_dir, store)
    address = args.address or os.environ.get("RAY_ADDRESS")

    if args.resume:
        if state in ("empty", "other"):
            raise StlmError(f"--resume: {store} holds no sweep to continue (no {layout.PLAN}). Start it with: "
                            f"{rerun_command(sweep, store)}")
        if args.overrides:
            print("note: --resume continues the sweep as it was planned; the overrides given now are ignored.")
        legacy.install()  # a directory written before the package split pickled its old module names
        sweep = pickle.loads(store.read_bytes(layout.PLAN) if store.remote else (exp_dir / layout.PLAN).read_bytes())
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

    from stlm.sweep.plan.space import SearchSpace

    space = SearchSpace(sweep)
    print(describe(sweep, space), flush=True)
    from stlm.sweep.run import preflight

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
    from stlm.sweep.resilience.lock import hold

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
        (exp_dir / layout.PLAN).write_bytes(pickle.dumps(sweep))
        store.upload(layout.PLAN)

    try:
        return run(sweep, space, exp_dir, args, t_start, uri=uri, store=store, guard=guard, restart=restart,
                   address=address)
    finally:
        storage.flush_all()  # the driver's last writes reach the bucket (no-op for a local directory)


def _start_ray(address: str | None, exp_dir: Path, args, sweep: Sweep) -> tuple[bool, dict]:
    """Start a local Ray or attach to `address` (bounded by --connect-timeout); (dashboard on, resources)."""
    import ray

    from stlm.sweep.run.train_run import driver_can_free_placement_groups

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic CLIReporter table: quiet, with our columns
    driver_frees_pgs = driver_can_free_placement_groups()
    env = env_vars(driver_frees_pgs=driver_frees_pgs)
    dashboard = args.ray_dashboard or not driver_frees_pgs
    init_ray(address, env, exp_dir=exp_dir, dashboard=dashboard, verbose=args.verbose,
                    connect_timeout=args.connect_timeout)
    from stlm.interrupts import Interrupts

    Interrupts.install().reclaim()  # ray.init replaced our SIGTERM handler with its own abort
    cluster = ray.cluster_resources()
    check_cluster(sweep, cluster, attached=bool(address))
    return dashboard, cluster


def run(sweep: Sweep, space, exp_dir: Path, args, t_start: float, *, uri: str, store, guard=None,
        restart: bool = False, address: str | None = None) -> int:
    from stlm import tracking as T
    from stlm.sweep.tracking.ledger import Ledger
    from stlm.sweep.tracking.runs import start_parent

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
        end_runs(client, exp_dir, parent, "interrupted")
        print(f"\nsweep {sweep.name} interrupted after {time.time() - t_start:.0f}s, before its trials ran to the "
              f"end. Continue it with:\n  {resume_cmd}", flush=True)
        return 130
    except BaseException:
        end_runs(client, exp_dir, parent, "failed")
        raise


def _run_trials(sweep: Sweep, space, exp_dir: Path, args, t_start: float, *, client, uri, experiment, parent,
                address, guard, resume_cmd, store) -> int:
    import contextlib

    from stlm.sweep.run.train_run import FreeDeadTrialsPlacementGroups
    from stlm.sweep.tracking.callback import MLflowSweepCallback
    from stlm.sweep.tracking.ledger import Ledger

    if not address:
        prepare_data_locally(sweep)
    else:  # a cluster: each corpus is tokenized once, here, and copied to the nodes (cluster_data.py)
        from stlm.sweep.run import cluster_data

        cluster_data.publish(sweep, store.ray(layout.DATA))
    import ray

    t_ray = time.time()
    if ray.is_initialized():  # attached before anything was written (main)
        dashboard, cluster = False, ray.cluster_resources()
    else:
        dashboard, cluster = _start_ray(address, exp_dir, args, sweep)
    concurrency = default_concurrency(sweep, cluster)
    print(f"Ray up in {time.time() - t_ray:.1f}s: {', '.join(f'{v:g} {k}' for k, v in cluster.items() if k in ('CPU', 'GPU'))}; "
          f"{sweep.num_trials} trials, up to {concurrency} at a time"
          + ("" if address or dashboard else "; Ray dashboard off (--ray-dashboard turns it on)"), flush=True)

    ctx = Context(sweep=sweep, space=space, exp_dir=store.uri)
    callback = MLflowSweepCallback(tracking_uri=uri, experiment=experiment, sweep=sweep, space=space, exp_dir=exp_dir,
                                   exp_uri=store.uri,
                                   prepare_trial=lambda config, tid: prepare_trial(ctx, config, tid))
    from stlm.sweep.resilience.disk import DiskGuard  # ends the sweep cleanly before a full disk truncates Tune's state

    tuner = build_tuner(ctx, resume=args.resume and sweep_state(exp_dir, store) == "started",
                               callbacks=[callback, FreeDeadTrialsPlacementGroups(),
                                          DiskGuard(exp_dir, sweep, where=store.uri)],
                               concurrency=concurrency,
                               reporter=make_reporter(sweep))
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
        from stlm.sweep.report.document import build_report

        multi = len(sweep.spec.metrics) > 1  # NSGA-II: the report draws the Pareto front over all objectives
        report = build_report(uri, parent, exp_dir / layout.REPORT,
                              metric=list(sweep.spec.metrics) if multi else sweep.spec.metrics[0],
                              mode=list(sweep.spec.modes) if multi else sweep.spec.modes[0],
                              control_arm=sweep.control_arm)
        store.upload(layout.REPORT)
    except (Exception, KeyboardInterrupt) as e:  # the report is a bonus; the results are in MLflow either way
        print(f"\n(report not written: {type(e).__name__}: {e}; write it with: stlm report {store})")
    print(f"\nsweep {sweep.name}: {len(rows)} trials ({n_failed} failed) in {wall:.0f}s; experiment dir {store}")
    if report:
        print(f"report: {report}")
    print(f"browse the runs:  mlflow ui --backend-store-uri {uri}")
    if guard is not None and guard.signals:
        return 130
    return 0 if n_failed == 0 else 1
