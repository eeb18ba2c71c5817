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

from stlm import tracking
from stlm.config import Config, load_config
from stlm.errors import StlmError
from stlm.interrupts import Interrupts
from stlm.models import count_params
from stlm.preflight import check, data_problems, tracking_problems, writable_problems
from stlm.train import checkpoint as ckpt
from stlm.train.loop import train

RUN_FILE = "mlflow_run.json"  # beside the checkpoints: which MLflow run to append to on --resume


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="stlm train", description="Train one model on one machine (logs to MLflow).")
    p.add_argument("config", help="YAML config (e.g. configs/baseline-10m.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of this run")
    p.add_argument("--run-name", default=None, help="run name (default: train.run_name, else the config file stem)")
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (= tracking.uri=..., as stlm sweep takes it)"
    )
    return p.parse_intermixed_args(argv)  # options may come before, between or after the overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    guard = Interrupts.install()  # SIGTERM ends the run like Ctrl-C: its MLflow run KILLED, not RUNNING
    cfg = load_config(args.config, args.overrides)
    cfg.tracking.uri = args.tracking_uri or cfg.tracking.uri
    found = (
        tracking_problems(tracking.tracking_uri(cfg.tracking.uri))
        + data_problems(cfg)
        + writable_problems(cfg.train.out_dir, "train.out_dir")
    )
    check(found, f"stlm train {args.config}")  # before the MLflow run and the run directory exist
    run_dir = name_run(cfg, args.run_name or cfg.train.run_name or Path(args.config).stem)
    resume_from = resume_point(run_dir, args.resume)
    client = tracking.mlflow_client(cfg.tracking.uri)
    run_id = mlflow_run(client, cfg, args.config, run_dir, resume_from)
    guard.on_force_exit(lambda: tracking.end_run(client, run_id, "KILLED"))
    final, last_ckpt = train_logged(cfg, client, run_id, resume_from)
    print(done_line(final, last_ckpt or str(run_dir), run_id, client.tracking_uri))
    return 0


def name_run(cfg: Config, run_name: str) -> Path:
    """Sets the run's name and absolute output directory in `cfg` (both are logged and checkpointed with it);
    returns the run directory."""
    cfg.train.run_name = run_name
    cfg.train.out_dir = str(Path(cfg.train.out_dir).expanduser().resolve())
    return Path(cfg.train.out_dir) / run_name


def resume_point(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from; a run directory holding checkpoints is only continued with --resume."""
    resume_from = ckpt.latest_checkpoint(run_dir)
    if resume_from is not None and not resume:
        raise StlmError(
            f"{str(run_dir)!r} already holds checkpoints (latest {resume_from.name}). "
            f"Pass --resume to continue that run, or --run-name NAME to start a new one."
        )
    if resume and resume_from is None:
        print(f"stlm train: no checkpoint in {run_dir}; starting from scratch", file=sys.stderr)
    return resume_from


def mlflow_run(client, cfg: Config, config_file: str, run_dir: Path, resume_from: Path | None) -> str:
    """The MLflow run to log to: on resume the one this run directory was logging to, else a new one. It is
    recorded in the run directory with this process's pid, so a second `stlm train` there is refused."""
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
        run_id = new_run(client, cfg, config_file)
        run_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(
        json.dumps(
            {"run_id": run_id, "tracking_uri": client.tracking_uri, "pid": os.getpid(), "host": socket.gethostname()}
        )
    )
    return run_id


def new_run(client, cfg: Config, config_file: str) -> str:
    """A new MLflow run with the config (every key) and the model's size as params."""
    counted = count_params(cfg.model)
    run_id = tracking.create_run(
        client,
        cfg.tracking.experiment,
        run_name=cfg.train.run_name,
        tags={"stlm.command": "train", "stlm.config_file": str(Path(config_file).resolve())},
    )
    tracking.log_config(
        client, run_id, cfg, extra={"params.total": counted.total, "flops_per_token": counted.flops_per_token}
    )
    return run_id


def train_logged(cfg: Config, client, run_id: str, resume_from: Path | None) -> tuple[dict, str | None]:
    """Train with the metrics going to the MLflow run, and end it: FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED.
    The final metrics and the last checkpoint this session wrote (None: none)."""
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
    return final, (last_ckpt[0] if last_ckpt else None)


def done_line(final: dict, where: str, run_id: str, tracking_uri: str) -> str:
    # the run's rate (every token over the whole wall time, evaluations included), not the last window's
    tps = final["tokens"] / final["elapsed_s"] if final.get("elapsed_s") else float("nan")
    mfu = f", mfu {final['mfu']:.1%}" if "mfu" in final else ""
    return (
        f"done: {final['step']} steps, {final['tokens']:,} tokens in {final['elapsed_s']:.0f} s "
        f"({tps:,.0f} tok/s{mfu}); val_loss {final['val_loss']:.4f}, val_bpb {final['val_bpb']:.4f}; "
        f"{final['params']:,} params; checkpoint {where}; mlflow run {run_id} ({tracking_uri})"
    )


def _end(client, run_id: str, status: str) -> None:
    try:
        tracking.flush()  # the queued metrics first: an ended run takes no more
    finally:
        tracking.end_run(client, run_id, status)


def end_orphan_run(client, saved: dict) -> None:
    """The MLflow run of an earlier `stlm train` in this run directory that was killed (kill -9, OOM) before
    it could end its run: RUNNING for ever, unless its process is gone, which is checked here."""
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
