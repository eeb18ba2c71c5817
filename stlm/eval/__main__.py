"""`stlm eval CHECKPOINT_OR_RUN --tasks blimp,hellaswag,...`: score a checkpoint as lm-evaluation-harness does.

    stlm eval runs/baseline-10m                      # latest checkpoint of a run dir; tasks = the run's eval.tasks + bpb
    stlm eval runs/baseline-10m/step_001000 --tasks blimp,hellaswag,arc_easy --limit 200 --items items.jsonl
    stlm eval 3f2c...e1 --tracking-uri sqlite:///mlflow.db   # an MLflow run id: its checkpoint is looked up
    stlm eval gpt2 --hf --tasks hellaswag --limit 100        # any Hugging Face causal LM (needs stlm[transformers])

Unset options fall back to the run's config (eval.limit, eval.seed, eval.data_dir, eval.batch_size).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from stlm.errors import StlmError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_device(device: str) -> str:
    import torch

    if device in ("auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_run(ref: str, tracking_uri: str | None) -> Path:
    """An MLflow run id (or runs:/<id>) -> a local checkpoint directory.

    Tried in order: the run's tag `stlm.checkpoint` (a local path), an artifact directory holding a
    checkpoint (meta.json, or step_* directories), and params train.out_dir + train.run_name.
    """
    from stlm.tracking import mlflow_client

    run_id = ref.removeprefix("runs:/").strip("/").split("/")[0]
    client = mlflow_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:  # noqa: BLE001
        raise StlmError(f"{ref!r} is neither a checkpoint directory nor an MLflow run in {client.tracking_uri}: {e}") from None
    tried = []
    tag = run.data.tags.get("stlm.checkpoint")
    if tag:
        tried.append(f"tag stlm.checkpoint={tag}")
        if Path(tag).exists():
            return Path(tag)
    for art in client.list_artifacts(run_id):
        if not art.is_dir:
            continue
        names = [Path(a.path).name for a in client.list_artifacts(run_id, art.path)]
        if "meta.json" in names or any(n.startswith("step_") for n in names):
            import mlflow

            tried.append(f"artifact {art.path}")
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=art.path,
                                                            tracking_uri=client.tracking_uri))
    out_dir, name = run.data.params.get("train.out_dir"), run.data.params.get("train.run_name")
    if out_dir and name and name != "None":
        tried.append(f"params train.out_dir/train.run_name = {out_dir}/{name}")
        if (Path(out_dir) / name).exists():
            return Path(out_dir) / name
    raise StlmError(f"MLflow run {run_id} has no checkpoint this machine can read (tried: {'; '.join(tried) or 'nothing found'}).")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="stlm eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint dir, run dir (latest checkpoint), MLflow run id, or with --hf a hub model")
    p.add_argument("--tasks", default=None, help="comma-separated: blimp,hellaswag,arc_easy,arc_challenge,winogrande,mmlu,bpb")
    p.add_argument("--limit", type=int, default=None, help="items per (sub)task, a seeded random subset (default: all)")
    p.add_argument("--seed", type=int, default=None, help="seed of the --limit subset")
    p.add_argument("--data-dir", default=None, help="local benchmark files (else eval.data_dir, $STLM_BENCHMARKS, the hub)")
    p.add_argument("--items", default=None, help="write per-item predictions and log-likelihoods here (JSONL)")
    p.add_argument("--json", default=None, help="write the results dict here")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-context-cache", action="store_true",
                   help="score every (context, continuation) row in full instead of running shared contexts once")
    p.add_argument("--all", action="store_true", help="print every BLiMP / MMLU member, not only the groups")
    p.add_argument("--hf", action="store_true", help="CHECKPOINT is a Hugging Face model name or path")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for a run id")
    args = p.parse_args(argv)

    from stlm.eval.harness import evaluate, format_table

    device = resolve_device(args.device)
    cfg = None
    if args.hf:
        from stlm.eval.hf import HFLM

        model = HFLM(args.checkpoint, batch_size=args.batch_size or 32, device=device)
        tokenizer, default_tasks = None, ["hellaswag"]
    else:
        from stlm.train.checkpoint import load_model

        path = Path(args.checkpoint)
        if not path.exists():
            if RUN_ID.match(args.checkpoint) or args.checkpoint.startswith("runs:/"):
                path = resolve_run(args.checkpoint, args.tracking_uri)
            else:
                raise StlmError(f"Checkpoint {args.checkpoint!r} does not exist (expected a checkpoint or run directory, "
                                f"or a 32-character MLflow run id).")
        model, cfg, tokenizer = load_model(path, device)
        default_tasks = [*cfg.eval.tasks, "bpb"]
    ev = cfg.eval if cfg is not None else None
    tasks = args.tasks.split(",") if args.tasks else default_tasks
    t0 = time.perf_counter()
    results = evaluate(
        model,
        tokenizer,
        tasks,
        limit=args.limit if args.limit is not None else (ev.limit if ev else None),
        seed=args.seed if args.seed is not None else (ev.seed if ev else 1234),
        data_dir=args.data_dir or (ev.data_dir if ev else None),
        batch_size=args.batch_size or (ev.batch_size if ev else 32),
        device=device,
        items_path=args.items,
        config=cfg,
        context_cache=not args.no_context_cache,
        verbose=True,
    )
    dt = time.perf_counter() - t0
    print(format_table(results, show_members=args.all))
    print(f"done in {dt:.1f}s on {device}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    from stlm.cli import run_main

    sys.exit(run_main(main, sys.argv[1:]))
