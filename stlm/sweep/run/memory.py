"""Memory: what one trial needs, and how many trials fit at once.

Ray schedules trials by CPUs and GPUs only; its memory monitor then kills workers once the node passes
95% (RAY_memory_usage_threshold), and the worker it picks need not be the one that grew: one trial too
many ends another trial. So the driver caps how many trials run at once by their summed estimate
against the memory free on the machine (a local Ray) or Ray's `memory` resource (an attached cluster),
and says so whenever the cap is lower than the CPUs (or resources.max_concurrent) would allow.
"""

from __future__ import annotations

import math

from stlm.fmt import gib
from stlm.sweep.plan.sweep import Sweep

# A process with torch, Ray and stlm imported, before any tensor: 360 MiB RSS measured (torch 2.13 CPU,
# Ray 2.60). Every trial has one per Ray Train worker, and one more for its Tune trial (the Train controller).
PROCESS_BYTES = 400 * 2**20


def estimate_memory(cfg, params: int) -> float:
    """Bytes one worker's training needs, roughly: fp32 weights + gradients + 2 AdamW moments (16 bytes a
    parameter), then activations kept for the backward pass (~34 bytes per token and width per layer, as
    Korthikanti et al. count them, plus the attention matrix) and the fp32 logits with their gradient."""
    m, t = cfg.model, cfg.train
    tokens = t.batch_size * m.context_length
    per_layer = tokens * (34 * m.d_model) + 5 * t.batch_size * m.n_heads * m.context_length**2
    logits = 2 * 4 * tokens * m.effective_vocab_size
    return 16.0 * params + m.n_layers * per_layer + logits


def trial_memory(sweep: Sweep) -> float:
    """Bytes the largest arm's trial needs: each worker's training and process, and the trial's own process."""
    workers = sweep.spec.resources.workers
    training = max(estimate_memory(a.cfg, a.count.total) for a in sweep.arms)
    return workers * (training + PROCESS_BYTES) + PROCESS_BYTES


def free_memory() -> float:
    """Bytes this machine can give now without swapping (MemAvailable); inf where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return float(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return math.inf


def memory_concurrency(sweep: Sweep, wanted: int, memory: float, where: str) -> tuple[int, str | None]:
    """How many of `wanted` trials at once fit in `memory` bytes, and the note that says so when it is fewer.
    Never below one: a single trial that cannot fit is pre-flight's refusal, not a cap."""
    need = trial_memory(sweep)
    wanted = max(1, min(wanted, sweep.num_trials))
    fits = max(1, int(memory // need)) if math.isfinite(memory) else wanted
    if fits >= wanted:
        return wanted, None
    return fits, (
        f"memory: {wanted} trials at once would need about {gib(wanted * need)} (about {gib(need)} each: "
        f"weights, optimizer state, activations and the processes), and {where} has {gib(memory)} free; "
        f"running {fits} at once so that Ray's memory monitor does not kill trials."
    )
