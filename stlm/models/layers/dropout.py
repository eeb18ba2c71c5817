"""Dropout whose probability follows a schedule (model.dropout).

`dropout_scale(cfg, step, max_steps)` is the multiplier m(t); the training loop calls
`model.set_dropout_scale(m)`, which sets p = base_p * m on every ScaledDropout (a float
assignment: nothing is re-allocated).

Note for torch.compile: the probability is a Python float, so dynamo specializes on it and a
new value recompiles the graph. constant / early / late schedules take at most two values; for
linear / triangle the caller should round m (e.g. to 1/20) to bound the number of graphs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from stlm.config import DropoutConfig


def dropout_scale(cfg: DropoutConfig, step: int, max_steps: int) -> float:
    """Multiplier m(t) in [0, 1] for the dropout probabilities at `step`, t = step / max_steps."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    s = cfg.schedule
    if s == "constant":
        return 1.0
    if s == "linear":  # start -> end
        return cfg.start + (cfg.end - cfg.start) * t
    if s == "triangle":  # start -> 1 at t = 0.5 -> start
        return cfg.start + (1.0 - cfg.start) * (1.0 - abs(2.0 * t - 1.0))
    if s == "early":  # dropout only in the first `switch` of training
        return 1.0 if t < cfg.switch else 0.0
    if s == "late":  # dropout only after `switch`
        return 0.0 if t < cfg.switch else 1.0
    raise ValueError(f"unknown dropout schedule {s!r}")  # config validation prevents this


# The schedules dropout_scale knows (checked against CHOICES["model.dropout.schedule"] in a test).
SCHEDULES = ("constant", "linear", "triangle", "early", "late")


class ScaledDropout(nn.Module):
    """nn.Dropout with a configured base probability and a settable multiplier."""

    def __init__(self, p: float):
        super().__init__()
        self.base_p = float(p)
        self.p = float(p)

    def set_scale(self, m: float) -> None:
        self.p = self.base_p * float(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return F.dropout(x, self.p, training=True)

    def extra_repr(self) -> str:
        return f"base_p={self.base_p}, p={self.p}"
