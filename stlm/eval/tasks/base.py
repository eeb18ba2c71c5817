"""What every benchmark shares: the Item it produces and the Task it is.

A task turns documents (rows of the benchmark) into Items. An Item is one
multiple-choice question written as lm-evaluation-harness writes it: for choice i
the model scores log P(continuations[i] | contexts[i]). Tasks with one shared prompt
(HellaSwag, ARC, MMLU) repeat the context; WinoGrande puts the choice in the context
and shares the continuation; BLiMP has an empty context (scored after EOT).

Where the data comes from, in order:
  1. a local directory (eval.data_dir / --data-dir / $STLM_BENCHMARKS) holding the
     files named by each task (see stlm/eval/tasks/<task>.py and shared/data/SOURCES.md);
  2. the Hugging Face hub dataset the harness uses (datasets.load_dataset).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stlm.errors import StlmError
from stlm.offline import OFFLINE_HINT, hub_down

# The harness's default target_delimiter: the continuation is " " + choice.
TARGET_DELIMITER = " "


@dataclass
class Item:
    task: str  # leaf task name: hellaswag, arc_easy, blimp_adjunct_island, mmlu_anatomy, ...
    doc_id: int  # position of the document in its split (stable across runs)
    contexts: list[str]  # one per choice
    continuations: list[str]  # one per choice, already with the target delimiter
    choices: list[str]  # the harness's doc_to_choice: the strings whose length normalises acc_norm / acc_bytes
    gold: int
    extra: dict[str, Any] = field(default_factory=dict)  # written to the items JSONL for inspection


class Task:
    """One benchmark. Groups (blimp, mmlu) have several leaf subtasks."""

    name: str = ""
    folder: str = ""  # sub-directory of the benchmarks dir
    metrics: tuple[str, ...] = ("acc", "acc_norm", "acc_bytes")
    # How a group combines its subtasks: "mean" (unweighted, BLiMP) or "weighted" (by size, MMLU).
    group_weighting: str | None = None

    def subtasks(self) -> list[str]:
        """Leaf task names. A plain task is its own single subtask."""
        return [self.name]

    def docs(self, subtask: str, data_dir: str | None) -> list[dict]:
        """All documents of one leaf task, in their canonical order."""
        raise NotImplementedError

    def item(self, doc: dict, doc_id: int, subtask: str) -> Item:
        raise NotImplementedError

    # -- helpers for loaders --------------------------------------------------------

    def local_dir(self, data_dir: str | None) -> Path | None:
        """The task's folder under the benchmarks dir (or the dir itself), None when no dir is set."""
        root = resolve_data_dir(data_dir)
        if root is None:
            return None
        sub = root / self.folder
        return sub if sub.is_dir() else root

    def missing(self, where: Path, expected: str) -> StlmError:
        return StlmError(
            f"Benchmark data for task {self.name!r} not found in {str(where)!r}: expected {expected}. "
            f"Point eval.data_dir (or --data-dir, or $STLM_BENCHMARKS) at a directory laid out like "
            f"shared/data/benchmarks (see shared/data/SOURCES.md), or unset it to download from the hub."
        )


def resolve_data_dir(data_dir: str | None) -> Path | None:
    d = data_dir or os.environ.get("STLM_BENCHMARKS")
    if not d:
        return None
    p = Path(d).expanduser()
    if not p.is_dir():
        raise StlmError(
            f"Benchmark directory {str(p)!r} (eval.data_dir / --data-dir / $STLM_BENCHMARKS) does not exist."
        )
    return p


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_hub(task: str, path: str, name: str | None, split: str) -> list[dict]:
    """datasets.load_dataset, turned into a plain list; offline failures become StlmError.

    An unreachable hub fails at once (one quick probe, stlm.offline) instead of after datasets'
    ~30 s of retries; with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, datasets reads its cache only."""
    where = f"{path}{'/' + name if name else ''} [{split}]"
    why = hub_down()
    if why:
        raise StlmError(
            f"Task {task!r}: no local benchmark directory is set (eval.data_dir / --data-dir / $STLM_BENCHMARKS) "
            f"and the Hugging Face hub cannot be reached to load {where}: {why}. {OFFLINE_HINT} "
            f"With HF_DATASETS_OFFLINE=1 an earlier download in the datasets cache is read."
        )
    try:
        # lazy: datasets, only when a benchmark is read from the hub
        import datasets

        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise StlmError(
            f"Task {task!r}: no local benchmark directory is set (eval.data_dir / --data-dir / $STLM_BENCHMARKS) "
            f"and loading {where} from the Hugging Face hub failed: "
            f"{type(e).__name__}: {e}"
        ) from None
    return [dict(row) for row in ds]
