"""Weight sharing across layers (model.sharing.mode).

A sharing strategy answers three questions about a core of n_layers:
  n_blocks      how many distinct blocks are built
  schedule      which block runs at each applied layer (len = applied depth)
  ffn_groups    which FFN object each built block uses (same index = same module object)
and whether each block gets a LoRA adapter on its (shared) FFN. parameters() de-duplicates
shared modules, so the unique parameter count falls out of torch; params.py mirrors it.

  none          L blocks, L FFNs
  ffn_all       L blocks, 1 FFN                     (MobiLlama)
  ffn_group     L blocks, ceil(L / g) FFNs, layer i uses FFN i // g
  ffn_lora      L blocks, 1 FFN + per-block LoRA of rank r on each FFN matrix
  block_all     1 block applied L times             (ALBERT)
  block_repeat  L blocks, each applied `repeats` times in a row: 0,0,1,1,...  (MobileLLM)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from stlm.config import SharingConfig
from stlm.models.layers.ffn import FFN


class NoSharing:
    lora = False

    @staticmethod
    def n_blocks(sh: SharingConfig, n_layers: int) -> int:
        return n_layers

    @classmethod
    def schedule(cls, sh: SharingConfig, n_layers: int) -> list[int]:
        return list(range(cls.n_blocks(sh, n_layers)))

    @classmethod
    def ffn_groups(cls, sh: SharingConfig, n_layers: int) -> list[int]:
        return list(range(cls.n_blocks(sh, n_layers)))


class FFNAll(NoSharing):
    @classmethod
    def ffn_groups(cls, sh, n_layers):
        return [0] * n_layers


class FFNGroup(NoSharing):
    @classmethod
    def ffn_groups(cls, sh, n_layers):
        return [i // sh.group_size for i in range(n_layers)]


class FFNLoRA(FFNAll):
    lora = True


class BlockAll(NoSharing):
    @staticmethod
    def n_blocks(sh, n_layers):
        return 1

    @classmethod
    def schedule(cls, sh, n_layers):
        return [0] * n_layers


class BlockRepeat(NoSharing):
    @classmethod
    def schedule(cls, sh, n_layers):
        return [i for i in range(n_layers) for _ in range(sh.repeats)]


SHARING: dict[str, type[NoSharing]] = {
    "none": NoSharing,
    "ffn_all": FFNAll,
    "ffn_group": FFNGroup,
    "ffn_lora": FFNLoRA,
    "block_all": BlockAll,
    "block_repeat": BlockRepeat,
}


def n_unique_ffns(sh: SharingConfig, n_layers: int) -> int:
    """Distinct FFN modules built (each counted once in the parameters)."""
    return len(set(SHARING[sh.mode].ffn_groups(sh, n_layers)))


class LoRA(nn.Module):
    """Per-layer low-rank deltas on the matrices of a shared FFN: W x + B (A x), A [r, in], B [out, r].

    B starts at zero, so at init every layer computes exactly the shared FFN (Hu et al. 2021).
    Parameters: r * (in + out) per matrix.
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int):
        super().__init__()
        self.A = nn.ParameterDict({n: nn.Parameter(torch.empty(rank, i)) for n, (i, o) in shapes.items()})
        self.B = nn.ParameterDict({n: nn.Parameter(torch.zeros(o, rank)) for n, (i, o) in shapes.items()})

    def forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A[name].t()) @ self.B[name].t()

    @staticmethod
    def n_params(shapes: dict[str, tuple[int, int]], rank: int) -> int:
        return sum(rank * (i + o) for i, o in shapes.values())


class LoRAFFN(nn.Module):
    """A shared FFN (the same module object in every layer) plus this layer's own adapter."""

    def __init__(self, shared: FFN, d_model: int, ffn_dim: int, rank: int):
        super().__init__()
        self.shared = shared
        self.lora = LoRA(shared.shapes(d_model, ffn_dim), rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(x, self.lora)
