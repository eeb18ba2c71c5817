"""`stlm train CONFIG [key=value ...] [--resume] [--run-name NAME]`: one training run on one machine.

Checkpoints go to <train.out_dir>/<run name>/step_NNNNNN (the run name defaults to
train.run_name, else the config file's stem); params, metrics and the config go to MLflow
(tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db). --resume continues
from the latest checkpoint of that run directory and appends to the same MLflow run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from stlm.config import load_config
from stlm.errors import StlmError

RUN_FILE = "mlflow_run.json"  # beside the checkpoints: which MLflow run to append to on --resume


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="stlm train", description="Train one model on one machine (logs to MLflow).")
    p.add_argument("config", help="YAML config (e.g. configs/baseline-10m.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of this run")
    p.add_argument("--run-name", default=None, help="run name (default: train.run_name, else the config file stem)")
    return p.parse_intermixed_args(argv)  # options may come before, between or after the overrides


def main(argv: list[str] | None = None) -> int:
    from stlm import tracking
    from stlm.interrupts import Interrupts
    from stlm.models import count_params
    from stlm.train import checkpoint as ckpt
    from stlm.train.loop import train

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    guard = Interrupts.install()  # SIGTERM ends the run like Ctrl-C: its MLflow run KILLED, not RUNNING
    cfg = load_config(args.config, args.overrides)
    run_name = args.run_name or cfg.train.run_name or Path(args.config).stem
    cfg.train.run_name = run_name
    cfg.train.out_dir = str(Path(cfg.train.out_dir).expanduser().resolve())
    run_dir = Path(cfg.train.out_dir) / run_name

    resume_from = ckpt.latest_checkpoint(run_dir)
    if resume_from is not None and not args.resume:
        raise StlmError(
            f"{str(run_dir)!r} already holds checkpoints (latest {resume_from.name}). "
            f"Pass --resume to continue that run, or --run-name NAME to start a new one."
        )
    if args.resume and resume_from is None:
        print(f"stlm train: no checkpoint in {run_dir}; starting from scratch", file=sys.stderr)

    # ---- MLflow: a new run, or the one this run directory was logging to
    client = tracking.mlflow_client(cfg.tracking.uri)
    run_file = run_dir / RUN_FILE
    run_id = None
    saved = json.loads(run_file.read_text()) if run_file.is_file() else None
    if saved and saved.get("host") == socket.gethostname() and _alive(saved.get("pid")):
        raise StlmError(
            f"Another `stlm train` (pid {saved['pid']}) is writing {str(run_dir)!r}; wait for it to end, "
            "or pass --run-name NAME to start a separate run."
        )
    if resume_from is not None and saved:
        if tracking.reopen_run(client, saved["run_id"]):
            run_id = saved["run_id"]
    elif saved:
        end_orphan_run(client, saved)  # killed (kill -9) before its first checkpoint: nothing to append to
    if run_id is None:
        counted = count_params(cfg.model)
        run_id = tracking.create_run(
            client,
            cfg.tracking.experiment,
            run_name=run_name,
            tags={"stlm.command": "train", "stlm.config_file": str(Path(args.config).resolve())},
        )
        tracking.log_config(
            client, run_id, cfg, extra={"params.total": counted.total, "flops_per_token": counted.flops_per_token}
        )
        run_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(
        json.dumps(
            {"run_id": run_id, "tracking_uri": client.tracking_uri, "pid": os.getpid(), "host": socket.gethostname()}
        )
    )
    guard.on_force_exit(lambda: tracking.end_run(client, run_id, "KILLED"))

    last_ckpt: list[str] = []

    def on_log(metrics: dict) -> None:  # queued: MLflow's writer batches them off the training loop's path
        tracking.log_metrics(client, run_id, metrics, step=metrics["step"], synchronous=False)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            last_ckpt[:] = [checkpoint_dir]

    try:
        final = train(
            cfg, report=report, resume_from=str(resume_from) if resume_from else None, on_log=on_log, progress=True
        )
    except KeyboardInterrupt:
        _end(client, run_id, "KILLED")
        raise
    except BaseException:
        _end(client, run_id, "FAILED")
        raise
    _end(client, run_id, "FINISHED")

    where = last_ckpt[0] if last_ckpt else str(run_dir)
    # the run's rate (every token over the whole wall time, evaluations included), not the last window's
    tps = final["tokens"] / final["elapsed_s"] if final.get("elapsed_s") else float("nan")
    mfu = f", mfu {final['mfu']:.1%}" if "mfu" in final else ""
    print(
        f"done: {final['step']} steps, {final['tokens']:,} tokens in {final['elapsed_s']:.0f} s "
        f"({tps:,.0f} tok/s{mfu}); val_loss {final['val_loss']:.4f}, val_bpb {final['val_bpb']:.4f}; "
        f"{final['params']:,} params; checkpoint {where}; mlflow run {run_id} ({client.tracking_uri})"
    )
    return 0


def _end(client, run_id: str, status: str) -> None:
    from stlm import tracking

    try:
        tracking.flush()  # the queued metrics first: an ended run takes no more
    finally:
        tracking.end_run(client, run_id, status)


def end_orphan_run(client, saved: dict) -> None:
    """The MLflow run of an earlier `stlm train` in this run directory that was killed (kill -9, OOM) before
    it could end its run: RUNNING for ever, unless its process is gone, which is checked here."""
    from stlm import tracking

    try:
        if client.get_run(saved["run_id"]).info.status == "RUNNING":
            client.set_tag(saved["run_id"], "stlm.status", "killed")
            tracking.end_run(client, saved["run_id"], "KILLED")
            print(
                f"stlm train: the earlier run {saved['run_id']} of this directory was killed before its first "
                "checkpoint; marked KILLED in MLflow, starting a new run",
                file=sys.stderr,
            )
    except Exception:  # noqa: BLE001 - deleted, or another store: nothing to repair
        pass


def _alive(pid) -> bool:
    """Process `pid` exists and (where /proc tells) is an stlm command, not a recycled pid."""
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return b"stlm" in cmdline.read_bytes() if Path("/proc").is_dir() else True
    except OSError:
        return False


if __name__ == "__main__":
    from stlm.errors import run_main

    sys.exit(run_main(main, sys.argv[1:]))
