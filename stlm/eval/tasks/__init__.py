"""Benchmark registry: task name -> Task class (one small file per benchmark).

blimp, hellaswag, arc_easy, arc_challenge, winogrande, mmlu   (scored as lm-evaluation-harness does)
bpb                                                          (bits per byte on the run's val split)
"""

from __future__ import annotations

from stlm.eval.tasks.arc import ArcChallenge, ArcEasy
from stlm.eval.tasks.base import Item, Task
from stlm.eval.tasks.blimp import Blimp
from stlm.eval.tasks.hellaswag import HellaSwag
from stlm.eval.tasks.mmlu import MMLU
from stlm.eval.tasks.winogrande import WinoGrande

TASKS: dict[str, type[Task]] = {
    "blimp": Blimp,
    "hellaswag": HellaSwag,
    "arc_easy": ArcEasy,
    "arc_challenge": ArcChallenge,
    "winogrande": WinoGrande,
    "mmlu": MMLU,
}
SPECIAL = ("bpb",)  # handled by stlm.eval.harness itself (needs the run config)
ALL_TASKS = (*TASKS, *SPECIAL)

__all__ = ["TASKS", "SPECIAL", "ALL_TASKS", "Task", "Item"]
