"""Embedders (model.embedder): token ids [B, T] -> vectors [B, T, d_model].

Each class has `count(cfg) -> {component: params}` and `flops_per_token(cfg)` for params.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from stlm.config import ModelConfig
from stlm.models.byte_level import BytePooledEmbedder


class TokenEmbedder(nn.Module):
    """A [V, d] table: gpt2 (V=50257), a trained BPE (V=model.vocab_size) or raw bytes (V=257)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.effective_vocab_size, cfg.d_model)

    @staticmethod
    def count(cfg: ModelConfig) -> dict[str, int]:
        return {"embedding": cfg.effective_vocab_size * cfg.d_model}

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> int:
        return 0  # a lookup, not a matmul

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.wte(idx)


EMBEDDERS: dict[str, type[nn.Module]] = {"token": TokenEmbedder, "byte_pooled": BytePooledEmbedder}
