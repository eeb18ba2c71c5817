"""Heads (chosen by model.embedder): core output [B, T, d_model] -> logits, loss, log-probs.

forward(h, targets) -> (logits, loss); logprobs(h, targets) -> [B, T] natural-log p(target).
Targets equal to -1 are ignored (loss) and get log-prob 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from stlm.config import ModelConfig
from stlm.models.byte_level import ByteDecoderHead


class TokenHead(nn.Module):
    """Linear(d -> V), weight tied to the token embedding when model.tie_embeddings."""

    def __init__(self, cfg: ModelConfig, embedder: nn.Module):
        super().__init__()
        self.lm_head = nn.Linear(cfg.d_model, cfg.effective_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = embedder.wte.weight

    @staticmethod
    def count(cfg: ModelConfig) -> dict[str, int]:
        return {"head": 0 if cfg.tie_embeddings else cfg.d_model * cfg.effective_vocab_size}

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> int:
        return 6 * cfg.d_model * cfg.effective_vocab_size  # the d x V matmul runs whether tied or not

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)

    def forward(self, h, targets=None):
        logits = self.lm_head(h)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def logprobs(self, h, targets):
        logp = F.log_softmax(self.lm_head(h).float(), dim=-1)
        lp = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
        return lp.masked_fill(targets < 0, 0.0)


HEADS: dict[str, type[nn.Module]] = {"token": TokenHead, "byte_pooled": ByteDecoderHead}
