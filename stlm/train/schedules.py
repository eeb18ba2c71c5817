"""Learning-rate schedules: a multiplier of train.lr for each optimizer step.

All schedules share a linear warmup over `warmup_steps` (step s gets (s + 1) / warmup, so the
first update already moves) and end at `min_lr_ratio` (cosine, wsd). With t the fraction of the
post-warmup steps done:

  cosine    m = min + (1 - min) * (1 + cos(pi * t)) / 2
  wsd       m = 1 until the last `decay_fraction` of all steps, then linear down to min
  constant  m = 1

The multiplier is a pure function of the step, so resuming needs only the step count
(LambdaLR's state_dict holds it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from stlm.config import TrainConfig


def _warmup(step: int, cfg: TrainConfig) -> float | None:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return None


def cosine(step: int, cfg: TrainConfig) -> float:
    w = _warmup(step, cfg)
    if w is not None:
        return w
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def wsd(step: int, cfg: TrainConfig) -> float:
    w = _warmup(step, cfg)
    if w is not None:
        return w
    # decay starts after (1 - decay_fraction) of all steps, but never inside the warmup
    decay_start = max(cfg.warmup_steps, cfg.max_steps - round(cfg.decay_fraction * cfg.max_steps))
    if step < decay_start:
        return 1.0
    t = min(1.0, (step - decay_start + 1) / max(1, cfg.max_steps - decay_start))
    return 1.0 - (1.0 - cfg.min_lr_ratio) * t


def constant(step: int, cfg: TrainConfig) -> float:
    w = _warmup(step, cfg)
    return 1.0 if w is None else w


SCHEDULES: dict[str, Callable[[int, TrainConfig], float]] = {"cosine": cosine, "wsd": wsd, "constant": constant}


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """train.lr is multiplied by this at optimizer step `step` (0-based)."""
    return SCHEDULES[cfg.schedule](step, cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
