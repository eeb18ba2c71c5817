"""`stlm <command> ...`: one entry point, each command implemented beside its code.

stlm train CONFIG [key=value ...]      stlm.train.__main__
stlm sweep SWEEP [--dry-run]           stlm.sweep.__main__
stlm eval CHECKPOINT --tasks ...       stlm.eval.__main__
stlm report SWEEP_DIR_OR_PARENT_RUN    stlm.sweep.report.cli
stlm count CONFIG [--json]             stlm.models.params
stlm generate CHECKPOINT --prompt ...  stlm.eval.generate
stlm export CHECKPOINT OUT_DIR         stlm.export.__main__
"""

from __future__ import annotations

import importlib
import sys

from stlm import __version__
from stlm.errors import run_main

COMMANDS = {
    "train": ("stlm.train.__main__", "Train one model on one machine (logs to MLflow)."),
    "sweep": ("stlm.sweep.__main__", "Run a budget-matched ablation or Optuna search on Ray."),
    "eval": ("stlm.eval.__main__", "Score a checkpoint on bpb and benchmarks, as lm-evaluation-harness does."),
    "report": ("stlm.sweep.report.cli", "Write the statistics report of a finished sweep."),
    "count": ("stlm.models.params", "Exact parameter count and FLOPs of a config; solve a budget."),
    "generate": ("stlm.eval.generate", "Sample text from a checkpoint."),
    "export": ("stlm.export.__main__", "Write a checkpoint as a Hugging Face transformers model with a model card."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        print(f"stlm {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: stlm <command> [args]   (stlm --version: the version)\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<9} {help_}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run_main(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
