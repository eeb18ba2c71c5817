"""`stlm export CHECKPOINT OUT_DIR`: a directory that transformers loads offline, with a model card.

    stlm export runs/baseline-10m export/baseline-10m               # latest checkpoint of a run directory
    stlm export runs/baseline-10m/step_001000 out --license mit --eval-json results.json
    stlm export 3f2c...e1 out --tracking-uri sqlite:///mlflow.db     # an MLflow run id (as `stlm eval` takes)

CHECKPOINT is resolved as `stlm eval` resolves it. Models with no exact transformers equivalent are
refused with the config key that stands in the way. Upload the directory with huggingface_hub (see
the README); nothing here touches the network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stlm.errors import StlmError
from stlm.eval.__main__ import RUN_ID, resolve_run
from stlm.export.convert import export_checkpoint
from stlm.preflight import check_tracking
from stlm.tracking import tracking_uri


def resolve(ref: str, tracking_uri: str | None) -> tuple[Path, str | None]:
    """(checkpoint or run directory, MLflow run id or None): a path, else a run id as `stlm eval` takes it."""
    path = Path(ref)
    if path.exists():
        return path, None
    if RUN_ID.match(ref) or ref.startswith("runs:/"):
        return resolve_run(ref, tracking_uri), ref.removeprefix("runs:/").strip("/").split("/")[0]
    raise StlmError(
        f"Checkpoint {ref!r} does not exist (expected a checkpoint or run directory, or a 32-character MLflow run id)."
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="stlm export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", help="checkpoint dir, run dir (latest checkpoint) or MLflow run id")
    p.add_argument("out_dir", help="directory to write (config.json, model.safetensors, tokenizer, README.md)")
    p.add_argument("--license", default="other", help="license in the model card's front matter (default: other)")
    p.add_argument("--name", default=None, help="model name in the card, e.g. you/stlm-10m (default: OUT_DIR's name)")
    p.add_argument("--eval-json", default=None, help="an `stlm eval --json` results file to put in the card")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (run id, or the run's eval scores)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    args = p.parse_args(argv)

    if args.tracking_uri:  # the run's eval scores are read from it: a dead server answers in seconds
        check_tracking(tracking_uri(args.tracking_uri), "stlm export --tracking-uri")
    path, run_id = resolve(args.checkpoint, args.tracking_uri)
    r = export_checkpoint(
        path,
        args.out_dir,
        run_id=run_id,
        tracking_uri=args.tracking_uri,
        eval_json=args.eval_json,
        license=args.license,
        name=args.name,
        force=args.force,
    )
    print(
        f"exported {r.target.hf_class} to {r.out_dir}: {r.exported_params:,} parameters ({r.unique_params:,} unique), "
        f"max |logit difference| {r.max_abs_diff:.2g}; files: {', '.join(r.files)}"
    )
    return 0


if __name__ == "__main__":
    import sys

    from stlm.errors import run_main

    sys.exit(run_main(main, sys.argv[1:]))
