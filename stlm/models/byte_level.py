"""Byte-level embedder and head pooled on BPE token boundaries (model.embedder = byte_pooled).

The input is still a stream of BPE token ids. Each id is mapped to its bytes through a
[V, chunk_len] table (a buffer built from tokenizer.token_bytes(id), saved in the state dict):

    token "ing"  -> [105, 110, 103, PAD, PAD, ...]       (longer tokens are cut at chunk_len)
    EOT/special  -> [EOT, PAD, PAD, ...]                  (one symbol: never truncated)

Byte vocabulary: 256 byte values + EOT (256) + PAD (257) = 258 symbols, embedded at byte_dim.

Embedder: bytes of token t -> small bidirectional transformer (encoder_layers, pad keys masked)
          -> mean over real bytes -> Linear(byte_dim -> d_model)             = one core input vector.
Head:     core output h_t -> Linear(d_model -> byte_dim) = start vector s_t; a small causal
          transformer (decoder_layers) reads [s_t, b_0, ..., b_{L-2}] of the NEXT token (teacher
          forcing) and predicts [b_0, ..., b_{L-1}].
Scored positions: the real bytes, plus the FIRST PAD after them, which is the end-of-token event
(a token of exactly chunk_len bytes ends by length). The filler PADs after it are masked out.
Without the end event, p("in") would count every longer token that starts with "in", so the
log-probs would not be a distribution and bpb would not be comparable with token models.
log p(token) = sum of the log-probs at its scored positions (token_logprobs); the loss is their mean.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from stlm.config import ModelConfig
from stlm.errors import StlmError
from stlm.models.core import Block, BlockDims
from stlm.models.layers.norms import NORMS
from stlm.models.layers.positional import NoPositional

EOT, PAD = 256, 257
N_SYMBOLS = 258  # 256 bytes + EOT + PAD


def token_byte_table(tokenizer, vocab_size: int, chunk_len: int) -> torch.Tensor:
    """[vocab_size, chunk_len] int64: the bytes of each token, PAD-filled; specials -> [EOT, PAD, ...]."""
    if tokenizer.vocab_size != vocab_size:
        raise StlmError(
            f"model.embedder=byte_pooled: the tokenizer has {tokenizer.vocab_size} tokens but the model "
            f"expects {vocab_size} (model.tokenizer / model.vocab_size)."
        )
    table = np.full((vocab_size, chunk_len), PAD, dtype=np.int64)
    table[:, 0] = EOT  # EOT and other specials (b""): one dedicated symbol
    for i in range(vocab_size):
        b = b"" if i == tokenizer.eot_id else tokenizer.token_bytes(i)[:chunk_len]
        if b:
            table[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return torch.from_numpy(table)


class TokenBytes(nn.Module):
    """The token -> bytes table, one module shared by the embedder and the head."""

    def __init__(self, vocab_size: int, chunk_len: int):
        super().__init__()
        self.vocab_size, self.chunk_len = vocab_size, chunk_len
        placeholder = torch.full((vocab_size, chunk_len), PAD, dtype=torch.long)
        placeholder[:, 0] = EOT
        self.register_buffer("table", placeholder)  # persistent: travels with checkpoints
        self.loaded = False
        self.register_load_state_dict_post_hook(TokenBytes._mark_loaded)  # a checkpoint carries the table

    @staticmethod
    def _mark_loaded(module: TokenBytes, incompatible_keys) -> None:
        module.loaded = True

    def load(self, tokenizer) -> None:
        table = token_byte_table(tokenizer, self.vocab_size, self.chunk_len)
        self.table.copy_(table.to(self.table.device))
        self.loaded = True

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """[...] token ids (-1 = ignored) -> [..., chunk_len] byte symbols (all PAD for -1)."""
        if not self.loaded:
            raise StlmError(
                "A byte_pooled model needs its tokenizer's token bytes: build_model(cfg, tokenizer) "
                "or model.load_token_bytes(tokenizer) (or load a checkpoint's state dict)."
            )
        out = self.table[ids.clamp(min=0)]
        return out.masked_fill((ids < 0)[..., None], PAD)


class ByteTransformer(nn.Module):
    """A few blocks over the chunk_len bytes of one token: learned positions, blocks, final norm."""

    def __init__(self, cfg: ModelConfig, n_layers: int, causal: bool):
        super().__init__()
        dims = BlockDims.of_bytes(cfg)
        self.causal = causal
        self.pos_emb = nn.Parameter(torch.zeros(cfg.byte_level.chunk_len, dims.d_model))  # learned, per byte slot
        self.no_pos = NoPositional(cfg)  # blocks take a positional module; positions were added above
        self.blocks = nn.ModuleList(Block(dims, dims.make_ffn()) for _ in range(n_layers))
        self.norm = NORMS[cfg.norm](dims.d_model, cfg.norm_eps, cfg.bias)

    @staticmethod
    def n_params(cfg: ModelConfig, n_layers: int) -> int:
        dims = BlockDims.of_bytes(cfg)
        per_block = dims.attn_params() + dims.ffn_params() + 2 * dims.norm_params()
        return cfg.byte_level.chunk_len * dims.d_model + n_layers * per_block + dims.norm_params()

    @staticmethod
    def flops_per_chunk(cfg: ModelConfig, n_layers: int) -> int:
        """fwd+bwd FLOPs for one chunk of L bytes: 6 * matmul weights * L + 12 * layers * d * L * L."""
        dims, L = BlockDims.of_bytes(cfg), cfg.byte_level.chunk_len
        return 6 * n_layers * dims.matmul_params() * L + 12 * n_layers * dims.d_model * L * L

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.pos_emb
        for block in self.blocks:
            x = block(x, self.no_pos, causal=self.causal, key_mask=key_mask)
        return self.norm(x)


class BytePooledEmbedder(nn.Module):
    """Token ids -> bytes -> byte encoder -> masked mean -> [B, T, d_model]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        bl = cfg.byte_level
        self.token_bytes = TokenBytes(cfg.effective_vocab_size, bl.chunk_len)
        self.byte_emb = nn.Embedding(N_SYMBOLS, bl.byte_dim)
        self.encoder = ByteTransformer(cfg, bl.encoder_layers, causal=False)
        self.pool_proj = nn.Linear(bl.byte_dim, cfg.d_model, bias=cfg.bias)

    @staticmethod
    def count(cfg: ModelConfig) -> dict[str, int]:
        bl = cfg.byte_level
        return {
            "embedding": N_SYMBOLS * bl.byte_dim,
            "byte_encoder": ByteTransformer.n_params(cfg, bl.encoder_layers)
            + bl.byte_dim * cfg.d_model
            + (cfg.d_model if cfg.bias else 0),
        }

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> int:
        bl = cfg.byte_level
        return ByteTransformer.flops_per_chunk(cfg, bl.encoder_layers) + 6 * bl.byte_dim * cfg.d_model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        b = self.token_bytes(idx).view(B * T, -1)  # [N, L]
        real = b != PAD  # position 0 is always real (a byte or EOT)
        x = self.encoder(self.byte_emb(b), key_mask=real)  # [N, L, byte_dim]
        w = real.to(x.dtype)[..., None]
        pooled = (x * w).sum(1) / w.sum(1)  # mean over the token's real bytes
        return self.pool_proj(pooled).view(B, T, -1)


class ByteDecoderHead(nn.Module):
    """Core output -> the next token's bytes, teacher-forced; loss over real bytes only."""

    def __init__(self, cfg: ModelConfig, embedder: BytePooledEmbedder):
        super().__init__()
        bl = cfg.byte_level
        self.token_bytes = embedder.token_bytes  # shared table
        self.byte_emb = embedder.byte_emb  # shared input embedding of bytes
        self.cond = nn.Linear(cfg.d_model, bl.byte_dim, bias=cfg.bias)
        self.decoder = ByteTransformer(cfg, bl.decoder_layers, causal=True)
        self.out = nn.Linear(bl.byte_dim, N_SYMBOLS, bias=False)
        if cfg.tie_embeddings:
            self.out.weight = self.byte_emb.weight

    @staticmethod
    def count(cfg: ModelConfig) -> dict[str, int]:
        bl = cfg.byte_level
        return {
            "byte_decoder": cfg.d_model * bl.byte_dim
            + (bl.byte_dim if cfg.bias else 0)
            + ByteTransformer.n_params(cfg, bl.decoder_layers),
            "head": 0 if cfg.tie_embeddings else N_SYMBOLS * bl.byte_dim,
        }

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> int:
        bl = cfg.byte_level
        return (
            6 * cfg.d_model * bl.byte_dim
            + ByteTransformer.flops_per_chunk(cfg, bl.decoder_layers)
            + 6 * bl.chunk_len * bl.byte_dim * N_SYMBOLS
        )

    def byte_logits(self, h: torch.Tensor, target_bytes: torch.Tensor) -> torch.Tensor:
        """h [B, T, d], target_bytes [B, T, L] -> logits [B, T, L, 258] for each target byte."""
        B, T, L = target_bytes.shape
        start = self.cond(h).view(B * T, 1, -1)  # s_t
        prev = self.byte_emb(target_bytes.view(B * T, L)[:, :-1])  # b_0 .. b_{L-2}
        x = self.decoder(torch.cat([start, prev], dim=1))  # position j predicts b_j
        return self.out(x).view(B, T, L, N_SYMBOLS)

    @staticmethod
    def scored(target_bytes: torch.Tensor) -> torch.Tensor:
        """[..., L] bool: real bytes and the end-of-token PAD right after them; filler PADs are False.
        Ignored targets (-1) are all PAD, and nothing of them is scored."""
        pad = target_bytes == PAD
        first_pad = torch.zeros_like(pad)
        first_pad[..., 1:] = pad[..., 1:] & ~pad[..., :-1]
        return ~pad | first_pad

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, target_bytes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over scored positions (real bytes + end-of-token); filler PADs contribute nothing."""
        tgt = target_bytes.masked_fill(~ByteDecoderHead.scored(target_bytes), -1)
        return F.cross_entropy(logits.float().reshape(-1, N_SYMBOLS), tgt.reshape(-1), ignore_index=-1)

    def forward(self, h: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if targets is None:
            raise StlmError("A byte_pooled model decodes the next token's bytes: forward needs targets.")
        tb = self.token_bytes(targets)
        logits = self.byte_logits(h, tb)
        return logits, self.loss_from_logits(logits, tb)

    def logprobs(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        tb = self.token_bytes(targets)
        logp = F.log_softmax(self.byte_logits(h, tb).float(), dim=-1)
        lp = logp.gather(-1, tb[..., None]).squeeze(-1)  # [B, T, L]
        return lp.masked_fill(~self.scored(tb), 0.0).sum(-1)  # -1 targets are all PAD -> 0
