"""A trial killed by Ray's memory monitor: told apart from a crash, and named with the node's figures.

When a node passes RAY_memory_usage_threshold (95%), Ray's monitor kills the workers that started last,
which need not belong to the trial that grew: a bystander. Its error is Ray's generic paragraph ("...
Refer to the documentation on how to address the out of memory issue"); the raylet's line in it
("Memory on the node (IP: 10.0.0.2, ID: 4f2c...) was 22.81GB used / 22.80GB limit (0.950000)") holds
what a user needs. Such a kill is retried from the last checkpoint on a budget of its own
(run/train_run.py), so a bystander keeps its crash retries.
"""

from __future__ import annotations

import re

# what Ray writes when its memory monitor killed the worker (raylet, Ray 2.60; the exit type in ActorDiedError)
MARKERS = ("NODE_OUT_OF_MEMORY", "running low on memory", "OutOfMemoryError")
NODE_FIGURES = re.compile(
    r"Memory on the node \(IP: (?P<ip>[^,]+), ID: (?P<node>[^)]+)\) was (?P<used>[\d.]+)GB used / "
    r"(?P<total>[\d.]+)GB limit"
)
THRESHOLD = re.compile(r"exceeded threshold of (?P<bytes>\d+)B \((?P<percent>[\d.]+)% of")
KILLED = "killed for low memory"


def low_memory(error_text: str) -> str | None:
    """'killed for low memory ...' with the node's figures when Ray's memory monitor ended this trial, else None."""
    if not any(m in error_text for m in MARKERS):
        return None
    figures = ""
    if m := NODE_FIGURES.search(error_text):
        figures = f": node {m['ip']} had {float(m['used']):.1f} GB of its {float(m['total']):.1f} GB in use"
        if t := THRESHOLD.search(error_text):
            figures += f", past the monitor's threshold of {int(t['bytes']) / 1e9:.1f} GB ({float(t['percent']):g}%)"
    return (
        f"{KILLED} by Ray's memory monitor{figures}. Lower resources.max_concurrent or train.batch_size "
        "(train.grad_accum keeps the batch), or give the trials nodes with more memory."
    )
