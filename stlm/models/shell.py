"""The shell: embedder -> core -> head.

    model = build_model(cfg.model, tokenizer)        # tokenizer only needed for byte_pooled
    logits, loss = model(idx, targets)               # idx, targets: [B, T] token ids
    lp = model.token_logprobs(idx, targets)          # [B, T] log p(target | prefix)

Init (GPT-2): every Linear / Embedding weight ~ N(0, init_std), biases 0; residual output
projections (attn.proj, the FFN output matrix) ~ N(0, init_std / sqrt(2 * n_layers)) with
n_layers as configured (not the applied depth, so a sharing ablation changes only the sharing);
LoRA A ~ N(0, init_std), LoRA B = 0; norm weights 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from stlm.config import ModelConfig
from stlm.errors import StlmError
from stlm.models.byte_level import ByteTransformer
from stlm.models.core import Block, Core
from stlm.models.embedders import EMBEDDERS
from stlm.models.heads import HEADS
from stlm.models.layers.attention import KVCache
from stlm.models.layers.dropout import ScaledDropout
from stlm.models.layers.ffn import FFN
from stlm.models.layers.positional import LearnedPositional
from stlm.models.sharing import LoRA


class STLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embedder = EMBEDDERS[cfg.embedder](cfg)
        self.core = Core(cfg)
        self.head = HEADS[cfg.embedder](cfg, self.embedder)
        self._init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def _init_weights(self) -> None:
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, LearnedPositional):
                nn.init.normal_(m.wpe.weight, 0.0, std)
            elif isinstance(m, ByteTransformer):
                nn.init.normal_(m.pos_emb, 0.0, std)
            elif isinstance(m, LoRA):
                for a in m.A.values():
                    nn.init.normal_(a, 0.0, std)
                for b in m.B.values():
                    nn.init.zeros_(b)
        for m in self.modules():  # after the generic pass: scaled residual projections
            if isinstance(m, Block):
                nn.init.normal_(m.attn.proj.weight, 0.0, resid_std)
            if isinstance(m, FFN):
                nn.init.normal_(getattr(m, m.out_name).weight, 0.0, resid_std)

    # ------------------------------------------------------------------ main API
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Token models: (logits [B, T, V], mean CE over targets != -1).
        byte_pooled: (byte logits [B, T, chunk_len, 258], mean CE over real target bytes)."""
        self._check_length(idx)
        h = self.core(self.embedder(idx))
        return self.head(h, targets)

    def token_logprobs(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[B, T] log p(targets[b, t] | idx[b, :t+1]); 0 where targets == -1. Causal, so right
        padding leaves the real positions unchanged."""
        self._check_length(idx)
        h = self.core(self.embedder(idx))
        return self.head.logprobs(h, targets)

    def _check_length(self, idx: torch.Tensor) -> None:
        if idx.shape[1] > self.config.context_length:
            raise StlmError(
                f"Sequence of {idx.shape[1]} tokens is longer than model.context_length={self.config.context_length}."
            )

    def set_dropout_scale(self, m: float) -> None:
        """p = configured p * m for embedding, attention and residual dropout (see dropout_scale)."""
        for mod in self.modules():
            if isinstance(mod, ScaledDropout):
                mod.set_scale(m)

    def load_token_bytes(self, tokenizer) -> None:
        """byte_pooled: fill the token -> bytes table from tokenizer.token_bytes."""
        if self.config.embedder != "byte_pooled":
            return
        self.embedder.token_bytes.load(tokenizer)

    # ------------------------------------------------------------------ generation (token models)
    def new_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        cfg = self.config
        if cfg.embedder != "token":
            raise StlmError("KV-cached generation is implemented for model.embedder=token only.")
        if max_len > cfg.context_length:
            raise StlmError(f"KV cache of {max_len} positions exceeds model.context_length={cfg.context_length}.")
        p = next(self.parameters())
        return KVCache(
            self.core.n_applied, batch_size, cfg.kv_heads, max_len, cfg.head_dim,
            device or p.device, dtype or p.dtype,
        )  # fmt: skip

    def forward_cached(self, idx: torch.Tensor, cache: KVCache, start_pos: int) -> torch.Tensor:
        """Logits [B, T, V] for tokens at positions start_pos .. start_pos+T, reading/writing `cache`."""
        if start_pos + idx.shape[1] > cache.max_len:
            raise StlmError(f"forward_cached: position {start_pos + idx.shape[1]} is past the cache ({cache.max_len}).")
        h = self.core(self.embedder(idx), cache=cache, start=start_pos)
        return self.head.logits(h)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(model_cfg: ModelConfig, tokenizer=None) -> STLM:
    """Build the model of `model_cfg` (CPU, fp32). byte_pooled models read the token bytes of `tokenizer`."""
    model = STLM(model_cfg)
    if tokenizer is not None:
        model.load_token_bytes(tokenizer)
    return model
