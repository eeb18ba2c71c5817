"""The command line of `stlm sweep` (= `python -m stlm.sweep`)."""

from __future__ import annotations

import argparse


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def ray_address(text: str) -> str:
    """auto, local, or [ray://]host[:port] with a numeric port: a bad one is refused at once, not after a name
    lookup and --connect-timeout."""
    if text in ("auto", "local"):
        return text
    hostport = text.split("://", 1)[-1].rstrip("/")
    host, colon, port = hostport.rpartition(":")
    bare_ipv6 = ":" in host and not host.endswith("]")
    if not hostport or colon and not bare_ipv6 and (not host or not port.isdigit() or not 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Ray address: give host:port (e.g. 10.0.0.5:6379, or ray://host:10001), or auto"
        )
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stlm sweep",
        description=("Run a budget-matched ablation / Optuna search on Ray Tune + Ray Train, tracked in MLflow."),
    )
    p.add_argument("sweep", help="sweep YAML file (see sweeps/ and stlm/sweep/plan/schema.py)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the base config (train.max_steps=30)")
    p.add_argument("--dry-run", action="store_true", help="print arms, sizes, trials and resources; launch nothing")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep in the experiment directory; the sweep file (with the overrides it "
        "started with, unless others are given) must give the same plan: a change, even more seeds or samples, is "
        "refused naming each difference (a new plan: --overwrite or another --experiment-dir)",
    )
    p.add_argument("--overwrite", action="store_true", help="delete an existing experiment directory and start afresh")
    p.add_argument(
        "--address",
        type=ray_address,
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)",
    )
    p.add_argument(
        "--experiment-dir", default=None, help="where Tune, Train and the ledger live (default ./sweep_runs/<name>)"
    )
    p.add_argument("--verbose", action="store_true", help="show the trials' worker logs (Ray Train, training loop)")
    p.add_argument(
        "--ray-dashboard",
        action="store_true",
        help="start a local Ray with its dashboard (http://127.0.0.1:8265); off by default: 11 processes, 0.9 GB",
    )
    p.add_argument(
        "--connect-timeout",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="give up attaching to --address after this long (default 30)",
    )
    p.add_argument(
        "--head-timeout",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="stop the sweep (exit 75; --resume continues it) once the Ray head's GCS has not answered for this long "
        "(default 30)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: sweep file, $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)",
    )
    return p
