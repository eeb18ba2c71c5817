"""`stlm report SWEEP_DIR_OR_PARENT_RUN [--tracking-uri URI] [--control ARM]`: write the report of a sweep."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stlm.errors import StlmError
from stlm.sweep.analysis.trials import RUN_ID_RE
from stlm.sweep.report.document import build_report
from stlm.sweep.resilience import layout, storage
from stlm.tracking import tracking_uri


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stlm report", description="Statistics report of a finished sweep (from MLflow).")
    p.add_argument("target", help="a sweep dir (holds sweep.json) or the sweep's MLflow parent run id")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sweep.json's, else $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    p.add_argument("--out", help="output dir (default: <sweep dir>/report, or ./report-<run id> for a run id)")
    p.add_argument("--metric", help="primary metric (default: the sweep's); comma-separated for several objectives")
    p.add_argument("--mode", choices=["min", "max"], help="direction of the primary metric (default: the sweep's)")
    p.add_argument("--control", help="control arm the others are compared with (default: the sweep's)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    args = p.parse_args(argv)

    target = Path(args.target)
    sweep: dict = {}
    store = None
    if storage.is_remote(args.target):  # an s3:// experiment dir: its sweep.json, the report written back
        store = storage.open(args.target)
        sweep = storage.read_json(store, layout.SWEEP_JSON) or {}
        if not sweep.get("parent_run_id"):
            raise StlmError(
                f"{args.target} holds no readable sweep.json with a parent_run_id; pass a sweep dir "
                "written by `stlm sweep` or a parent run id."
            )
        run_id = sweep["parent_run_id"]
        out_dir = Path(args.out) if args.out else store.local / layout.REPORT
    elif target.is_dir():
        sj = target / layout.SWEEP_JSON
        if not sj.is_file():
            raise StlmError(
                f"{str(target)!r} is a directory but holds no sweep.json; pass a sweep dir written by "
                "`stlm sweep` or a parent run id."
            )
        try:
            sweep = json.loads(sj.read_text())
        except json.JSONDecodeError as e:
            raise StlmError(f"{sj} is not valid JSON: {e}.") from None
        if not sweep.get("parent_run_id"):
            raise StlmError(
                f"{sj} has no parent_run_id: the sweep did not get as far as creating its MLflow parent run."
            )
        run_id = sweep["parent_run_id"]
        out_dir = Path(args.out) if args.out else target / layout.REPORT
    elif RUN_ID_RE.match(args.target):
        run_id = args.target
        out_dir = Path(args.out) if args.out else Path.cwd() / f"report-{run_id[:8]}"
    else:
        raise StlmError(
            f"{args.target!r} is neither a sweep dir (no such directory) nor an MLflow run id (32 hex characters)."
        )

    uri = args.tracking_uri or sweep.get("tracking_uri") or tracking_uri()
    metric = [m for m in args.metric.split(",") if m] if args.metric else sweep.get("metric")
    mode = args.mode or sweep.get("mode")
    control = args.control or sweep.get("control_arm")
    try:
        md = build_report(
            uri, run_id, out_dir, metric=metric, mode=mode, control_arm=control, log_artifacts=not args.no_log
        )
    except StlmError as e:
        if sweep.get("spec_path") and "no finished trials" in str(e):  # say how to get some
            raise StlmError(
                f"{e} If the sweep was interrupted or failed, continue it with: python -m stlm.sweep "
                f"{sweep['spec_path']} --resume --experiment-dir "
                f"{sweep.get('experiment_dir', target)}"
            ) from None
        raise

    if store is not None and not args.out:
        store.upload(layout.REPORT)
    print((md.parent / "summary.txt").read_text(), end="")
    print(f"\nReport: {md}\n        {md.parent / 'report.html'}")
    if not args.no_log:
        print(f"Logged to MLflow run {run_id} (artifacts under report/).")
    return 0
