"""Normalization layers (model.norm). Pre-norm everywhere, plus a final norm before the head.

Each class has `n_params(dim, bias)` so stlm.models.params can count without building.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """x / rms(x) * weight (no bias, no mean subtraction)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # weight in x's dtype: QK-norm sees bf16 q/k under autocast, and mixed dtypes miss the fused kernel
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)

    @staticmethod
    def n_params(dim: int, bias: bool) -> int:
        return dim


class LayerNorm(nn.Module):
    """Classic LayerNorm; the bias follows model.bias (as in nanoGPT)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    @staticmethod
    def n_params(dim: int, bias: bool) -> int:
        return dim * (2 if bias else 1)


class NoNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def n_params(dim: int, bias: bool) -> int:
        return 0


NORMS: dict[str, type[nn.Module]] = {"rmsnorm": RMSNorm, "layernorm": LayerNorm, "none": NoNorm}
