"""Feed-forward networks (model.ffn). Hidden width f = ModelConfig.effective_ffn_dim.

Each FFN names its matrices in `shapes(d, f)` -> {name: (in, out)} so that
  * the parameter count is sum(in * out) (+ out per bias), known without building;
  * a LoRA adapter (model.sharing.mode = ffn_lora) can add a low-rank delta to each matrix;
  * `out_name` marks the residual output projection (scaled init).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FFN(nn.Module):
    out_name = "w2"

    def __init__(self, d_model: int, ffn_dim: int, bias: bool = False):
        super().__init__()
        for name, (i, o) in self.shapes(d_model, ffn_dim).items():
            setattr(self, name, nn.Linear(i, o, bias=bias))

    @staticmethod
    def shapes(d: int, f: int) -> dict[str, tuple[int, int]]:
        raise NotImplementedError

    @classmethod
    def matmul_params(cls, d: int, f: int) -> int:
        return sum(i * o for i, o in cls.shapes(d, f).values())

    @classmethod
    def n_params(cls, d: int, f: int, bias: bool) -> int:
        return sum(i * o + (o if bias else 0) for i, o in cls.shapes(d, f).values())

    def lin(self, name: str, x: torch.Tensor, lora=None) -> torch.Tensor:
        y = getattr(self, name)(x)
        return y if lora is None else y + lora(name, x)


class SwiGLU(FFN):
    """Shazeer 2020: w2(silu(w1 x) * w3 x). Three d*f matrices."""

    out_name = "w2"

    @staticmethod
    def shapes(d, f):
        return {"w1": (d, f), "w3": (d, f), "w2": (f, d)}

    def forward(self, x, lora=None):
        return self.lin("w2", F.silu(self.lin("w1", x, lora)) * self.lin("w3", x, lora), lora)


class GeluMLP(FFN):
    """GPT-2: proj(gelu(fc x)). Two d*f matrices."""

    out_name = "proj"

    @staticmethod
    def shapes(d, f):
        return {"fc": (d, f), "proj": (f, d)}

    def forward(self, x, lora=None):
        return self.lin("proj", F.gelu(self.lin("fc", x, lora), approximate="tanh"), lora)


class ReLU2(FFN):
    """So et al. 2021 (Primer): proj(relu(fc x)^2). Two d*f matrices."""

    out_name = "proj"

    @staticmethod
    def shapes(d, f):
        return {"fc": (d, f), "proj": (f, d)}

    def forward(self, x, lora=None):
        return self.lin("proj", F.relu(self.lin("fc", x, lora)).square(), lora)


FFNS: dict[str, type[FFN]] = {"swiglu": SwiGLU, "gelu": GeluMLP, "relu2": ReLU2}
