"""`stlm eval CHECKPOINT_OR_RUN --tasks blimp,hellaswag,...`: score a checkpoint as lm-evaluation-harness does.

    stlm eval runs/baseline-10m                      # latest checkpoint of a run dir; tasks: the run's eval.tasks + bpb
    stlm eval runs/baseline-10m/step_001000 --tasks blimp,hellaswag,arc_easy --limit 200 --items items.jsonl
    stlm eval 3f2c...e1 --tracking-uri sqlite:///mlflow.db   # an MLflow run id: its checkpoint is looked up
    stlm eval gpt2 --hf --tasks hellaswag --limit 100        # any Hugging Face causal LM (needs stlm[transformers])

Unset options fall back to the run's config (eval.limit, eval.seed, eval.data_dir, eval.batch_size).

--limit N takes N items per (sub)task: `--subset first` the first N documents, as lm-evaluation-harness's
--limit does (so both score the same items), `--subset random` (the default, as in sweeps) a seeded
random draw; the output says which. A checkpoint that came from an MLflow run (a run id, a `stlm train`
run directory, or a sweep trial's checkpoint) gets the results logged back to that run: metrics
eval/<task>/<metric> at the checkpoint's step, and the per-item file under eval/ (--no-log: neither).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stlm import tracking as T
from stlm.config import Config
from stlm.errors import StlmError
from stlm.eval.harness import evaluate, flat_metrics, format_table
from stlm.eval.hf import HFLM
from stlm.preflight import check_tracking
from stlm.sweep.resilience import storage
from stlm.tracking import mlflow_client
from stlm.train.checkpoint import load_model, read_meta

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_device(device: str) -> str:

    if device in ("auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_run(ref: str, tracking_uri: str | None) -> Path:
    """An MLflow run id (or runs:/<id>) -> a local checkpoint directory.

    Tried in order: the run's tag `stlm.checkpoint` (a local path), an artifact directory holding a
    checkpoint (meta.json, or step_* directories), and params train.out_dir + train.run_name.
    """
    run_id = ref.removeprefix("runs:/").strip("/").split("/")[0]
    check_tracking(T.tracking_uri(tracking_uri), f"run {run_id}")  # a dead server: seconds, not MLflow's 4 minutes
    client = mlflow_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - any failure to read the run means the same to the user: not found
        raise StlmError(
            f"{ref!r} is neither a checkpoint directory nor an MLflow run in {client.tracking_uri}: {e}"
        ) from None
    tried = []
    tag = run.data.tags.get("stlm.checkpoint")
    if tag:
        tried.append(f"tag stlm.checkpoint={tag}")

        if storage.is_remote(tag):  # a sweep's run in an object store: its checkpoints, downloaded once
            local = storage.cache_root() / "downloads" / hashlib.sha1(tag.encode()).hexdigest()[:12]
            if local.is_dir() or storage.Storage(tag, bucket_ok=True).download("", local) is not None:
                return local
        elif Path(tag).exists():
            return Path(tag)
    for art in client.list_artifacts(run_id):
        if not art.is_dir:
            continue
        names = [Path(a.path).name for a in client.list_artifacts(run_id, art.path)]
        if "meta.json" in names or any(n.startswith("step_") for n in names):
            # lazy: mlflow, only to download a run's artifacts
            import mlflow

            tried.append(f"artifact {art.path}")
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=art.path, tracking_uri=client.tracking_uri
                )
            )
    out_dir, name = run.data.params.get("train.out_dir"), run.data.params.get("train.run_name")
    if out_dir and name and name != "None":
        tried.append(f"params train.out_dir/train.run_name = {out_dir}/{name}")
        if (Path(out_dir) / name).exists():
            return Path(out_dir) / name
    raise StlmError(
        f"MLflow run {run_id} has no checkpoint this machine can read (tried: {'; '.join(tried) or 'nothing found'})."
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="stlm eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "checkpoint", help="checkpoint dir, run dir (latest checkpoint), MLflow run id, or with --hf a hub model"
    )
    p.add_argument(
        "--tasks", default=None, help="comma-separated: blimp,hellaswag,arc_easy,arc_challenge,winogrande,mmlu,bpb"
    )
    p.add_argument("--limit", type=int, default=None, help="items per (sub)task, a seeded random subset (default: all)")
    p.add_argument(
        "--subset",
        choices=("random", "first"),
        default="random",  # stlm.eval.harness.SUBSETS
        help="which --limit items: first N docs (lm-evaluation-harness's --limit) or a seeded random draw",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the --limit subset (--subset random)")
    p.add_argument(
        "--data-dir", default=None, help="local benchmark files (else eval.data_dir, $STLM_BENCHMARKS, the hub)"
    )
    p.add_argument("--items", default=None, help="write per-item predictions and log-likelihoods here (JSONL)")
    p.add_argument("--json", default=None, help="write the results dict here")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--no-context-cache",
        action="store_true",
        help="score every (context, continuation) row in full instead of running shared contexts once",
    )
    p.add_argument("--all", action="store_true", help="print every BLiMP / MMLU member, not only the groups")
    p.add_argument("--hf", action="store_true", help="CHECKPOINT is a Hugging Face model name or path")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for a run id")
    p.add_argument("--no-log", action="store_true", help="do not log the results back to the checkpoint's MLflow run")
    return p.parse_args(argv)


@dataclass
class Subject:
    """What is scored: the model and its tokenizer (None: the model's own), its stlm config (None for a hub
    model), the tasks run when --tasks is not given, and for a checkpoint its directory and the MLflow run
    (id, tracking URI) it came from, if any."""

    model: Any
    tokenizer: Any
    cfg: Config | None
    default_tasks: list[str]
    path: Path | None = None
    source: tuple[str, str | None] | None = None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    subject = load_subject(args, device)
    ev = subject.cfg.eval if subject.cfg is not None else None
    tasks = args.tasks.split(",") if args.tasks else subject.default_tasks
    limit = args.limit if args.limit is not None else (ev.limit if ev else None)
    seed = args.seed if args.seed is not None else (ev.seed if ev else 1234)
    selection = make_selection(limit, args.subset, seed)
    log = subject.source is not None and not args.no_log
    items_path = args.items
    if items_path is None and log:
        items_path = str(Path(tempfile.mkdtemp(prefix="stlm-eval-")) / "items.jsonl")  # logged to the run below
    t0 = time.perf_counter()
    results = evaluate(
        subject.model,
        subject.tokenizer,
        tasks,
        limit=limit,
        seed=seed,
        subset=args.subset,
        data_dir=args.data_dir or (ev.data_dir if ev else None),
        batch_size=args.batch_size or (ev.batch_size if ev else 32),
        device=device,
        items_path=items_path,
        config=subject.cfg,
        context_cache=not args.no_context_cache,
        verbose=True,
    )
    dt = time.perf_counter() - t0
    print(format_table(results, show_members=args.all))
    print(f"items: {describe_selection(selection)}")
    print(f"done in {dt:.1f}s on {device}")
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "selection": selection}, indent=2))
    if log:
        run_id, uri = subject.source
        step = _checkpoint_step(subject.path)
        log_back(run_id, uri, flat_metrics(results), step, items_path, selection)
        print(f"logged to MLflow run {run_id} (metrics eval/<task>/<metric> at step {step}, items under eval/)")
    return 0


def load_subject(args: argparse.Namespace, device: str) -> Subject:
    """The model CHECKPOINT names: a hub model (--hf), or an stlm checkpoint found from a path or an MLflow run."""
    if args.hf:
        model = HFLM(args.checkpoint, batch_size=args.batch_size or 32, device=device)
        return Subject(model, None, None, ["hellaswag"])
    path, source = checkpoint_path(args.checkpoint, args.tracking_uri)
    model, cfg, tokenizer = load_model(path, device)
    return Subject(model, tokenizer, cfg, [*cfg.eval.tasks, "bpb"], path, source)


def checkpoint_path(ref: str, tracking_uri: str | None) -> tuple[Path, tuple[str, str | None] | None]:
    """A checkpoint or run directory, or an MLflow run id -> (the local directory, the MLflow run it came from)."""
    path = Path(ref)
    if path.exists():
        return path, source_run(path)
    if RUN_ID.match(ref) or ref.startswith("runs:/"):
        path = resolve_run(ref, tracking_uri)
        return path, (ref.removeprefix("runs:/").strip("/").split("/")[0], tracking_uri)
    raise StlmError(
        f"Checkpoint {ref!r} does not exist (expected a checkpoint or run directory, or a 32-character MLflow run id)."
    )


def make_selection(limit: int | None, subset: str, seed: int) -> dict:
    """Which items were scored, as the results file and the MLflow run record it: all, or --limit with how."""
    return {
        "limit": limit,
        "subset": subset if limit is not None else "all",
        **({"seed": seed} if limit is not None and subset == "random" else {}),
    }


def describe_selection(sel: dict) -> str:
    if sel["subset"] == "all":
        return "every document of every task"
    if sel["subset"] == "first":
        return f"the first {sel['limit']} documents per (sub)task (as lm-evaluation-harness --limit {sel['limit']})"
    return (
        f"a seeded random {sel['limit']} documents per (sub)task (seed {sel['seed']}; --subset first for the harness's)"
    )


def source_run(path: Path) -> tuple[str, str] | None:
    """The MLflow run a checkpoint came from: a `stlm train` run directory's mlflow_run.json, or a sweep
    trial's (exp_dir/trials/<trial id>/checkpoints/...: the sweep's ledger names the run)."""
    p = Path(path).expanduser().resolve()
    for d in [p, *p.parents]:
        f = d / "mlflow_run.json"
        if f.is_file():
            saved = json.loads(f.read_text())
            return saved["run_id"], saved.get("tracking_uri")
        if d.parent.name == "trials" and (d.parent.parent / "mlflow_state.json").is_file():
            exp = d.parent.parent
            entry = json.loads((exp / "mlflow_state.json").read_text()).get("trials", {}).get(d.name)
            uri = (
                json.loads((exp / "sweep.json").read_text()).get("tracking_uri")
                if (exp / "sweep.json").is_file()
                else None
            )
            return (entry["run_id"], uri) if entry else None
    return None


def _checkpoint_step(path: Path) -> int:

    try:
        return int(read_meta(path).get("step", 0))
    except (StlmError, OSError, ValueError):
        return 0


def log_back(
    run_id: str, tracking_uri: str | None, metrics: dict, step: int, items_path: str | None, selection: dict
) -> None:
    check_tracking(T.tracking_uri(tracking_uri), f"logging back to run {run_id}")
    client = T.mlflow_client(tracking_uri)
    T.mark_model_training(client, client.get_run(run_id).info.experiment_id)  # results land in a training view
    T.log_metrics(client, run_id, metrics, step=step)
    T.set_tags(client, run_id, {"stlm.eval.subset": selection["subset"], "stlm.eval.limit": selection["limit"]})
    if items_path and Path(items_path).is_file():
        client.log_artifact(run_id, items_path, artifact_path="eval")


if __name__ == "__main__":
    import sys

    from stlm.errors import run_main

    sys.exit(run_main(main, sys.argv[1:]))
