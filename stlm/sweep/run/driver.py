"""The sweep driver, `python -m stlm.sweep SWEEP [key=value ...] [--dry-run] [--resume] ...` (also `stlm sweep`).

    python -m stlm.sweep sweeps/quickstart.yaml                  # run it (local Ray unless --address / RAY_ADDRESS)
    python -m stlm.sweep sweeps/ffn_type.yaml --dry-run          # arms, sizes, FLOPs, trials: launches nothing
    python -m stlm.sweep sweeps/quickstart.yaml train.max_steps=30
    python -m stlm.sweep sweeps/quickstart.yaml --resume         # continue an interrupted sweep

Ray (and the modules that subclass its classes) is imported only once the sweep launches: a dry run never needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

from stlm.errors import StlmError
from stlm.fmt import gib
from stlm.interrupts import Interrupts
from stlm.sweep.analysis.summary import comparison_of, count_feasible, summarize
from stlm.sweep.plan.describe import describe
from stlm.sweep.plan.space import SearchSpace
from stlm.sweep.plan.sweep import Sweep, load_sweep
from stlm.sweep.report.document import build_report
from stlm.sweep.resilience import layout, storage
from stlm.sweep.resilience.fingerprint import fingerprint
from stlm.sweep.resilience.lock import hold
from stlm.sweep.resilience.planned import planned_sweep
from stlm.sweep.resilience.state import (
    DESCRIBE,
    FRESH,
    OVERWRITE,
    RESTART,
    STARTED,
    Decision,
    decide,
    rerun_command,
    sweep_state,
)
from stlm.sweep.resilience.sweep_json import write_sweep_json
from stlm.sweep.run import cluster_data, preflight
from stlm.sweep.run.args import parser
from stlm.sweep.run.data import prepare_data_locally
from stlm.sweep.run.head_watch import watch_cluster
from stlm.sweep.run.memory import free_memory, memory_concurrency, trial_memory
from stlm.sweep.run.ray_cluster import check_cluster, default_concurrency, env_vars, init_ray
from stlm.sweep.run.trial import Context, prepare_trial
from stlm.sweep.run.tuner import build_tuner, make_reporter
from stlm.sweep.tracking.ledger import Ledger
from stlm.sweep.tracking.runs import (
    end_parent,
    end_runs,
    repair_runs,
    restart_from_plan,
    start_parent,
    status_note,
    supersede,
    ui_lines,
)
from stlm.tracking import END_STATE, mlflow_client, tracking_uri


@dataclasses.dataclass(frozen=True)
class SweepSession:
    """One driver's sweep, as every step after the experiment directory's decision reads it."""

    sweep: Sweep
    space: SearchSpace
    store: storage.Storage
    args: argparse.Namespace
    t_start: float  # when the command started (the sweep's wall time)
    uri: str  # the MLflow tracking URI
    address: str | None  # the Ray cluster attached to; None: a local Ray
    guard: Interrupts | None
    client: object = None  # the MLflow client, once run_under_parent() has it
    parent: str | None = None  # the parent run's id, once run_under_parent() started or reopened it
    plan_text: str = ""  # what --dry-run prints: the parent run's plan.txt

    @property
    def exp_dir(self) -> Path:
        """The experiment directory itself, or this machine's mirror of an object store's."""
        return self.store.local

    @property
    def experiment(self) -> str:
        return self.sweep.arms[0].cfg.tracking.experiment

    @property
    def resume_cmd(self) -> str:
        return rerun_command(self.sweep, self.store, "--resume", overrides=False)


def resolve_tracking_uri(cli: str | None, sweep: Sweep) -> str:
    return tracking_uri(cli or sweep.arms[0].cfg.tracking.uri)


def sweep_tracking_uri(args, store, sweep: Sweep) -> str:
    """--tracking-uri, else (on --resume) the one the sweep started with (its sweep.json, read from the
    experiment directory itself: an object store's before this machine's mirror is restored), else the
    config's / $MLFLOW_TRACKING_URI."""
    old = (storage.read_json(store, layout.SWEEP_JSON) or {}) if args.resume and not args.tracking_uri else {}
    return tracking_uri(args.tracking_uri or old.get("tracking_uri") or resolve_tracking_uri(None, sweep))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)  # key=value before or after options
    t_start = time.time()
    guard = Interrupts.install()  # SIGINT and SIGTERM: a clean stop at any phase, bounded in time

    sweep = load_sweep(args.sweep, args.overrides)
    store = storage.open(args.experiment_dir or Path("sweep_runs") / sweep.name)
    if store.local.exists() and not store.local.is_dir() and not store.remote:
        raise StlmError(f"--experiment-dir {store.local} is a file, not a directory; choose another --experiment-dir.")
    if store.remote:  # the bucket answers (bounded), before its state is read
        preflight.check_storage(store)
    decision = decide(
        sweep_state(store.local, store), resume=args.resume, overwrite=args.overwrite, dry_run=args.dry_run
    )
    sweep = planned_sweep(sweep, store, decision, overrides=args.overrides)
    for note in getattr(sweep, "notes", []):
        print(f"note: {note}")

    space = SearchSpace(sweep)
    plan_text = describe(sweep, space)
    print(plan_text, flush=True)
    address = args.address or os.environ.get("RAY_ADDRESS")
    uri = sweep_tracking_uri(args, store, sweep)
    preflight.check(sweep, attached=bool(address), tracking_uri=uri)  # every problem at once; nothing written yet
    where = (
        f"the cluster at {address} is checked once connected" if address else "each trial's request fits this machine"
    )
    print(f"pre-flight: data, tokenizers and eval data found; {where}.")
    if decision.action == DESCRIBE:
        if not address:  # what the real run will say once Ray is up (_start_cluster)
            wanted, free = default_concurrency(sweep, preflight.local_resources()), free_memory()
            n, note = memory_concurrency(sweep, wanted, free, "this machine")
            print(note or f"memory: about {gib(trial_memory(sweep))} per trial; {n} at once fit in {gib(free)} free.")
        print("\n--dry-run: nothing launched.")
        return 0

    session = SweepSession(
        sweep=sweep,
        space=space,
        store=store,
        args=args,
        t_start=t_start,
        uri=uri,
        address=address,
        guard=guard,
        plan_text=plan_text,
    )
    if address:  # attach (bounded) and check the cluster before anything is written
        _start_ray(session)
    _prepare_experiment_dir(session, decision)
    try:
        return run_under_parent(session, restart=decision.action == RESTART)
    finally:
        storage.flush_all()  # the driver's last writes reach the bucket (no-op for a local directory)


def _prepare_experiment_dir(session: SweepSession, decision: Decision) -> None:
    """Lock the directory, supersede and delete what an overwrite replaces, and write the plan of a new sweep."""
    store, exp_dir = session.store, session.exp_dir
    hold(exp_dir, store)  # one driver per experiment directory: taken before --overwrite deletes anything
    store.start_session(resume=decision.action != FRESH)  # an object store: its driver files, here
    note = decision.note(store)
    if note:
        print(note)
    if decision.action == OVERWRITE:
        supersede(exp_dir, delete_runs=decision.delete_runs)
        if store.remote:
            for name in store.names():
                store.delete(name)
            store.clear_mirror()
            store.start_session(resume=False)
        else:
            shutil.rmtree(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if not decision.resume:
        (exp_dir / layout.PLAN).write_bytes(pickle.dumps(session.sweep))
        (exp_dir / layout.PLAN_FINGERPRINT).write_text(json.dumps(fingerprint(session.sweep), indent=1))
        store.upload(layout.PLAN, layout.PLAN_FINGERPRINT)


def _start_ray(session: SweepSession) -> tuple[bool, dict]:
    """Start a local Ray or attach to the session's address (bounded by --connect-timeout); (dashboard on,
    resources)."""
    import ray  # lazy: Ray only once the sweep launches (a dry run never imports it)

    from stlm.sweep.run.train_run import driver_can_free_placement_groups  # lazy: imports Ray Train

    args = session.args
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic CLIReporter table: quiet, with our columns
    driver_frees_pgs = driver_can_free_placement_groups()
    env = env_vars(driver_frees_pgs=driver_frees_pgs)
    dashboard = args.ray_dashboard or not driver_frees_pgs
    init_ray(
        session.address,
        env,
        exp_dir=session.exp_dir,
        dashboard=dashboard,
        verbose=args.verbose,
        connect_timeout=args.connect_timeout,
    )
    Interrupts.install().reclaim()  # ray.init replaced our SIGTERM handler with its own abort
    again = session.resume_cmd + (f" --address {args.address}" if args.address else "")
    watch_cluster(args.head_timeout, address=session.address, resume_cmd=again, guard=session.guard)
    cluster = ray.cluster_resources()
    check_cluster(session.sweep, cluster, attached=bool(session.address))
    return dashboard, cluster


def run_under_parent(session: SweepSession, *, restart: bool = False) -> int:
    """Open the sweep's MLflow parent run, run the trials, and end the runs however the trials end."""
    sweep, exp_dir, store, uri = session.sweep, session.exp_dir, session.store, session.uri
    os.environ["MLFLOW_TRACKING_URI"] = uri
    client = mlflow_client(uri)
    if restart:
        restart_from_plan(client, exp_dir, store)
    if session.args.resume:
        n = repair_runs(client, exp_dir)  # runs a kill -9'd driver left RUNNING; the trials reopen them
        if n:
            print(f"note: {n} trial run(s) left RUNNING by the previous driver were marked KILLED until they resume.")
    parent = start_parent(
        client, Ledger(exp_dir), sweep, session.experiment, store.uri, session.space, session.plan_text
    )
    session = dataclasses.replace(session, client=client, parent=parent)
    write_sweep_json(exp_dir, sweep, uri, session.experiment, parent, where=store.uri)
    print(
        f"\nexperiment dir: {store}"
        + (f" (driver files mirrored in {exp_dir})" if store.remote else "")
        + f"\nMLflow: {uri} (experiment {session.experiment!r}, parent run {parent})",
        flush=True,
    )
    if session.guard is not None:  # a driver forced out by the watchdog still ends its runs
        session.guard.on_force_exit(lambda: (repair_runs(client, exp_dir), end_parent(client, parent, "interrupted")))
    try:
        return _trials_to_the_end(session)
    except KeyboardInterrupt:
        end_runs(client, exp_dir, parent, "interrupted")
        print(
            f"\nsweep {sweep.name} interrupted after {time.time() - session.t_start:.0f}s, before its trials ran "
            f"to the end. Continue it with:\n  {session.resume_cmd}",
            flush=True,
        )
        return 130
    except BaseException:
        end_runs(client, exp_dir, parent, "failed")
        raise


def _trials_to_the_end(session: SweepSession) -> int:
    """Data, Ray, Tune's fit, then the end: interrupted (130), or the summary (0; 1 when a trial failed)."""
    concurrency = _start_cluster(session)
    results, callback = _fit(session, concurrency)
    guard = session.guard
    if results.num_terminated + results.num_errors < session.sweep.num_trials or (guard is not None and guard.signals):
        return _interrupted(session, callback)
    return _finished(session, results, callback)


def _start_cluster(session: SweepSession) -> int:
    """Prepare the data where the trials read it and start (or reuse) Ray; how many trials run at a time."""
    sweep = session.sweep
    if not session.address:
        prepare_data_locally(sweep)
    else:  # a cluster: each corpus is tokenized once, here, and copied to the nodes (cluster_data.py)
        cluster_data.publish(sweep, session.store.ray(layout.DATA))
    import ray  # lazy: Ray only once the sweep launches (a dry run never imports it)

    t_ray = time.time()
    if ray.is_initialized():  # attached before anything was written (main)
        dashboard, cluster = False, ray.cluster_resources()
    else:
        dashboard, cluster = _start_ray(session)
    concurrency = default_concurrency(sweep, cluster)
    if session.address:  # Ray's schedulable memory over the cluster's nodes
        memory, where = cluster.get("memory", math.inf), "the Ray cluster"
    else:
        memory, where = free_memory(), "this machine"
    concurrency, note = memory_concurrency(sweep, concurrency, memory, where)
    if note:
        print(note, flush=True)
    resources = ", ".join(f"{v:g} {k}" for k, v in cluster.items() if k in ("CPU", "GPU"))
    print(
        f"Ray up in {time.time() - t_ray:.1f}s: {resources}; {sweep.num_trials} trials, up to {concurrency} at a "
        "time" + ("" if session.address or dashboard else "; Ray dashboard off (--ray-dashboard turns it on)"),
        flush=True,
    )
    return concurrency


def _fit(session: SweepSession, concurrency: int):
    """Tune's fit over the sweep's trials (a new experiment, or the saved one continued); (results, callback)."""
    # lazy: these subclass Ray's callbacks, so importing them imports Ray
    from stlm.sweep.resilience.disk import DiskGuard  # ends the sweep cleanly before a full disk truncates Tune's state
    from stlm.sweep.run.train_run import FreeDeadTrialsPlacementGroups
    from stlm.sweep.tracking.callback import MLflowSweepCallback

    sweep, space, store, exp_dir = session.sweep, session.space, session.store, session.exp_dir
    ctx = Context(sweep=sweep, space=space, exp_dir=store.uri)
    callback = MLflowSweepCallback(
        tracking_uri=session.uri,
        experiment=session.experiment,
        sweep=sweep,
        space=space,
        exp_dir=exp_dir,
        exp_uri=store.uri,
        prepare_trial=lambda config, tid: prepare_trial(ctx, config, tid),
    )
    tuner = build_tuner(
        ctx,
        resume=session.args.resume and sweep_state(exp_dir, store) == STARTED,
        callbacks=[callback, FreeDeadTrialsPlacementGroups(), DiskGuard(exp_dir, sweep, where=store.uri)],
        concurrency=concurrency,
        reporter=make_reporter(sweep),
    )
    guard = session.guard
    with guard.tune_running() if guard is not None else contextlib.nullcontext():
        return tuner.fit(), callback


def _interrupted(session: SweepSession, callback) -> int:
    """SIGINT / SIGTERM (or SIGUSR1): Tune stopped and saved the experiment; nothing is lost."""
    # The queued MLflow writes go first (raises, naming --resume, when the server stays away).
    callback.finish("interrupted")
    done = Ledger(session.exp_dir).trials.values()
    n_fin = sum(1 for t in done if t.get("status") == "finished")
    n_fail = sum(1 for t in done if END_STATE.get(t.get("status")) == "FAILED")
    if callback.outbox.pending() == 0:
        repair_runs(session.client, session.exp_dir, None)
        end_parent(session.client, session.parent, "interrupted")
        note = f"**Interrupted** with {n_fin} of {session.sweep.num_trials} trials finished. Continue it with "
        status_note(session.client, session.parent, note + f"`{session.resume_cmd}`; the summary is written then.")
    print(
        f"\nsweep {session.sweep.name} interrupted after {time.time() - session.t_start:.0f}s "
        f"({n_fin} of {session.sweep.num_trials} trials finished"
        + (f", {n_fail} failed" if n_fail else "")
        + f"). Continue it with:\n  {session.resume_cmd}",
        flush=True,
    )
    return 130


def _finished(session: SweepSession, results, callback) -> int:
    """Every trial ended: the MLflow writes made, the summary in sweep.json and on screen, the report."""
    sweep, space, store, exp_dir, args = session.sweep, session.space, session.store, session.exp_dir, session.args
    callback.finish("finished")  # every queued MLflow write is made (or a bounded wait ends the sweep)
    repair_runs(session.client, exp_dir, results)  # a trial Tune finished while a killed driver owned its run
    ledger = Ledger(exp_dir)  # re-read: the callback wrote it
    table, rows = summarize(sweep, results, ledger.data, exp_dir, space)
    wall = time.time() - session.t_start
    feasible = count_feasible(sweep, space, results)
    n_failed = sum(1 for r in rows if END_STATE.get(r["status"]) == "FAILED")  # failed, or stalled for good
    extra = {
        "wall_s": wall,
        "trials": rows,
        "feasible_fraction": feasible / max(1, len(rows)),
        "resumed": bool(args.resume),
    }
    extra["comparison"] = comparison_of(sweep, rows)
    if sweep.spec.multi_objective:
        extra["pareto"] = [r["trial_id"] for r in rows if r.get("pareto")]
    write_sweep_json(exp_dir, sweep, session.uri, session.experiment, session.parent, extra, where=store.uri)

    print("\n" + table)
    if space.arch is not None:
        print(
            f"\narchitecture points feasible: {feasible}/{len(rows)} ({100.0 * feasible / max(1, len(rows)):.0f}%)"
            + (
                f"; the sampled ffn_multiple was moved to the nearest feasible value in {space.stats['moved']} of "
                f"{space.stats['points']} points"
                if space.stats["points"] and not args.resume
                else ""
            )
        )
    report = _write_report(session)
    print(f"\nsweep {sweep.name}: {len(rows)} trials ({n_failed} failed) in {wall:.0f}s; experiment dir {store}")
    if report:
        print(f"report: {report}")
    print(
        f"browse the runs:  mlflow ui --backend-store-uri {session.uri}\n"
        + ui_lines(session.client, session.uri, session.parent)
    )
    if session.guard is not None and session.guard.signals:
        return 130
    return 0 if n_failed == 0 else 1


def _write_report(session: SweepSession) -> Path | None:
    """<exp>/report/, or None (said why) when it could not be written."""
    spec = session.sweep.spec
    try:
        multi = len(spec.metrics) > 1  # NSGA-II: the report draws the Pareto front over all objectives
        report = build_report(
            session.uri,
            session.parent,
            session.exp_dir / layout.REPORT,
            metric=list(spec.metrics) if multi else spec.metrics[0],
            mode=list(spec.modes) if multi else spec.modes[0],
            control_arm=session.sweep.control_arm,
        )
        session.store.upload(layout.REPORT)
        return report
    except (Exception, KeyboardInterrupt) as e:  # the report is a bonus; the results are in MLflow either way
        print(f"\n(report not written: {type(e).__name__}: {e}; write it with: stlm report {session.store})")
        return None
