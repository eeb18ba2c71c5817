"""The core: n_layers pre-norm transformer blocks (with optional sharing) and a final norm.

    x = x + drop(attn(norm1(x)))
    x = x + drop(ffn(norm2(x)))

`BlockDims` carries the shape of a block so the same Block class serves the core and the small
byte-level encoder/decoder, and so params.py can count a block without building it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from stlm.config import ModelConfig
from stlm.models.layers.attention import Attention, KVCache
from stlm.models.layers.dropout import ScaledDropout
from stlm.models.layers.ffn import FFNS
from stlm.models.layers.norms import NORMS
from stlm.models.layers.positional import POSITIONALS
from stlm.models.sharing import SHARING, LoRAFFN


@dataclass(frozen=True)
class BlockDims:
    d_model: int
    n_heads: int
    n_kv_heads: int
    ffn: str
    ffn_dim: int
    norm: str
    norm_eps: float
    bias: bool
    qk_norm: bool
    attn_dropout: float
    resid_dropout: float

    @staticmethod
    def of(cfg: ModelConfig) -> BlockDims:
        return BlockDims(
            cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.ffn, cfg.effective_ffn_dim, cfg.norm, cfg.norm_eps,
            cfg.bias, cfg.qk_norm, cfg.dropout.attention, cfg.dropout.residual,
        )  # fmt: skip

    @staticmethod
    def of_bytes(cfg: ModelConfig) -> BlockDims:
        """The byte encoder/decoder: width byte_level.byte_dim, MHA, FFN width from ffn_multiple."""
        bl = cfg.byte_level
        sub = dataclasses.replace(cfg, d_model=bl.byte_dim, n_heads=bl.n_heads, n_kv_heads=None, ffn_dim=None)
        return BlockDims.of(sub)

    # --- counting (mirrors the modules built below)
    def attn_params(self) -> int:
        return Attention.n_params(self.d_model, self.n_heads, self.n_kv_heads, self.bias, self.qk_norm)

    def ffn_params(self) -> int:
        return FFNS[self.ffn].n_params(self.d_model, self.ffn_dim, self.bias)

    def norm_params(self) -> int:
        return NORMS[self.norm].n_params(self.d_model, self.bias)

    def matmul_params(self) -> int:
        """Weights multiplied once per token by one application of the block."""
        return Attention.matmul_params(self.d_model, self.n_heads, self.n_kv_heads) + FFNS[self.ffn].matmul_params(
            self.d_model, self.ffn_dim
        )

    def make_ffn(self) -> nn.Module:
        return FFNS[self.ffn](self.d_model, self.ffn_dim, self.bias)


class Block(nn.Module):
    def __init__(self, dims: BlockDims, ffn: nn.Module):
        super().__init__()
        norm = NORMS[dims.norm]
        self.norm1 = norm(dims.d_model, dims.norm_eps, dims.bias)
        self.attn = Attention(
            dims.d_model, dims.n_heads, dims.n_kv_heads, bias=dims.bias, qk_norm=dims.qk_norm,
            norm_eps=dims.norm_eps, dropout=dims.attn_dropout,
        )  # fmt: skip
        self.norm2 = norm(dims.d_model, dims.norm_eps, dims.bias)
        self.ffn = ffn  # possibly the same object as in other blocks (sharing)
        self.resid_dropout = ScaledDropout(dims.resid_dropout)

    def forward(self, x, pos, **attn_kw):
        x = x + self.resid_dropout(self.attn(self.norm1(x), pos, **attn_kw))
        x = x + self.resid_dropout(self.ffn(self.norm2(x)))
        return x


class Core(nn.Module):
    """Positional encoding, embedding dropout, the (shared) blocks in schedule order, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dims = BlockDims.of(cfg)
        sharing = SHARING[cfg.sharing.mode]
        sh, L = cfg.sharing, cfg.n_layers
        self.pos = POSITIONALS[cfg.positional](cfg)
        self.emb_dropout = ScaledDropout(cfg.dropout.embedding)

        n_blocks = sharing.n_blocks(sh, L)
        groups = sharing.ffn_groups(sh, L)  # one entry per built block
        ffns = {g: dims.make_ffn() for g in dict.fromkeys(groups)}  # one module per group, in order
        blocks = []
        for i in range(n_blocks):
            ffn = ffns[groups[i]]
            if sharing.lora:
                ffn = LoRAFFN(ffn, dims.d_model, dims.ffn_dim, sh.lora_rank)
            blocks.append(Block(dims, ffn))
        self.blocks = nn.ModuleList(blocks)
        self.schedule = sharing.schedule(sh, L)  # block index at each applied layer
        self.norm = NORMS[cfg.norm](cfg.d_model, cfg.norm_eps, cfg.bias)

    @property
    def n_applied(self) -> int:
        return len(self.schedule)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        x = self.emb_dropout(self.pos.embed(x, start))
        for layer, i in enumerate(self.schedule):
            x = self.blocks[i](x, self.pos, cache=cache, layer=layer, start=start)
        return self.norm(x)
