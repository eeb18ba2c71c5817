"""Plain reference transformers for the training-speed benchmark (bench_train.py).

Written for the benchmark and independent of stlm's model code: one file, nanoGPT style, the
things a careful person writes by hand. They read only the *dimensions* of an stlm ModelConfig,
so the two models have identical shapes (bench_train checks that the parameter shapes match).

    RefGPT(mc)          token model: wte -> [learned positions] -> L x (norm, attn, norm, ffn) -> norm -> tied head
    RefBytePooled(mc, tokenizer)
                        bytes of each BPE token -> byte embedding + positions -> small bidirectional
                        encoder -> masked mean -> Linear(byte_dim -> d) -> the same core -> Linear(d -> byte_dim)
                        -> small causal decoder over [start, b_0 .. b_{L-2}] -> byte logits (tied);
                        loss over the real bytes and the PAD that ends the token, as stlm scores them
    ref_optimizer(model) AdamW (fused kernel where this torch has one for the device), decay on matrices only
    ref_step(...)        forward, backward, clip to 1.0, optimizer step, zero grads

Supported: positional rope | learned | none, ffn swiglu | gelu | relu2, norm rmsnorm | layernorm,
sharing none | ffn_all (one FFN module used by every block), GQA via n_kv_heads, dropout, bias.
Attention always goes through F.scaled_dot_product_attention.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BYTE_EOT, BYTE_PAD, BYTE_VOCAB = 256, 257, 258


# --------------------------------------------------------------------------- building blocks


class Norm(nn.Module):
    def __init__(self, dim: int, kind: str, eps: float, bias: bool):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if (bias and kind == "layernorm") else None

    def forward(self, x):
        if self.kind == "rmsnorm":
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        return F.layer_norm(x, (x.size(-1),), self.weight, self.bias, self.eps)


def rope_tables(n_pos: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [n_pos, head_dim] for the rotate-half layout (halves duplicated)."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.arange(n_pos, dtype=torch.float32)[:, None] * freqs[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, n_kv: int, bias: bool, dropout: float):
        super().__init__()
        self.h, self.kv, self.hd = n_heads, n_kv, d // n_heads
        self.c_attn = nn.Linear(d, (n_heads + 2 * n_kv) * self.hd, bias=bias)
        self.c_proj = nn.Linear(n_heads * self.hd, d, bias=bias)
        self.dropout = dropout

    def forward(self, x, rope=None, causal=True, key_mask=None):
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split([self.h * self.hd, self.kv * self.hd, self.kv * self.hd], dim=-1)
        q = q.view(B, T, self.h, self.hd).transpose(1, 2)
        k = k.view(B, T, self.kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.kv, self.hd).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
        p = self.dropout if self.training else 0.0
        if key_mask is not None:  # bidirectional with padded keys: an explicit mask (no GQA here)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal, enable_gqa=self.kv != self.h)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, d: int, f: int, kind: str, bias: bool):
        super().__init__()
        self.kind = kind
        if kind == "swiglu":
            self.gate = nn.Linear(d, f, bias=bias)
            self.up = nn.Linear(d, f, bias=bias)
        else:
            self.up = nn.Linear(d, f, bias=bias)
        self.down = nn.Linear(f, d, bias=bias)

    def forward(self, x):
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        if self.kind == "gelu":
            return self.down(F.gelu(self.up(x), approximate="tanh"))
        return self.down(F.relu(self.up(x)).square())  # relu2


class Block(nn.Module):
    def __init__(
        self, d, n_heads, n_kv, mlp: nn.Module, norm: str, eps: float, bias: bool, attn_p: float, resid_p: float
    ):
        super().__init__()
        self.ln_1 = Norm(d, norm, eps, bias)
        self.attn = SelfAttention(d, n_heads, n_kv, bias, attn_p)
        self.ln_2 = Norm(d, norm, eps, bias)
        self.mlp = mlp
        self.resid_p = resid_p

    def forward(self, x, rope=None, causal=True, key_mask=None):
        p = self.resid_p if self.training else 0.0
        x = x + F.dropout(self.attn(self.ln_1(x), rope, causal, key_mask), p, self.training)
        x = x + F.dropout(self.mlp(self.ln_2(x)), p, self.training)
        return x


def _check(mc) -> None:
    assert mc.positional in ("rope", "learned", "none"), f"reference: positional {mc.positional} not written"
    assert mc.ffn in ("swiglu", "gelu", "relu2"), f"reference: ffn {mc.ffn} not written"
    assert mc.norm in ("rmsnorm", "layernorm"), f"reference: norm {mc.norm} not written"
    assert mc.sharing.mode in ("none", "ffn_all"), f"reference: sharing {mc.sharing.mode} not written"


class Core(nn.Module):
    """Positions + L blocks + final norm over [B, T, d] (shared by both reference models)."""

    def __init__(self, mc):
        super().__init__()
        _check(mc)
        d, f, L = mc.d_model, mc.effective_ffn_dim, mc.n_layers
        self.wpe = nn.Embedding(mc.context_length, d) if mc.positional == "learned" else None
        if mc.positional == "rope":
            cos, sin = rope_tables(mc.context_length, d // mc.n_heads, mc.rope_theta)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.rope = mc.positional == "rope"
        shared = MLP(d, f, mc.ffn, mc.bias) if mc.sharing.mode == "ffn_all" else None
        dp = mc.dropout
        self.h = nn.ModuleList(
            Block(
                d,
                mc.n_heads,
                mc.kv_heads,
                shared if shared is not None else MLP(d, f, mc.ffn, mc.bias),
                mc.norm,
                mc.norm_eps,
                mc.bias,
                dp.attention,
                dp.residual,
            )
            for _ in range(L)
        )
        self.ln_f = Norm(d, mc.norm, mc.norm_eps, mc.bias)
        self.emb_p = dp.embedding

    def forward(self, x):
        T = x.size(1)
        if self.wpe is not None:
            x = x + self.wpe.weight[:T]
        x = F.dropout(x, self.emb_p if self.training else 0.0, self.training)
        rope = (self.cos, self.sin) if self.rope else None
        for block in self.h:
            x = block(x, rope)
        return self.ln_f(x)


def _init(model: nn.Module, std: float, n_layers: int) -> None:
    """GPT-2 init: N(0, std), residual projections N(0, std / sqrt(2 L)), biases 0."""
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            s = std / math.sqrt(2 * n_layers) if name.endswith(("c_proj.weight", "down.weight")) else std
            nn.init.normal_(p, 0.0, s)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
        elif name.endswith("pos"):
            nn.init.normal_(p, 0.0, std)


# --------------------------------------------------------------------------- token model


class RefGPT(nn.Module):
    def __init__(self, mc):
        super().__init__()
        self.wte = nn.Embedding(mc.effective_vocab_size, mc.d_model)
        self.core = Core(mc)
        self.lm_head = nn.Linear(mc.d_model, mc.effective_vocab_size, bias=False)
        if mc.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        _init(self, mc.init_std, mc.n_layers)

    def forward(self, idx, targets=None):
        logits = self.lm_head(self.core(self.wte(idx)))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


# --------------------------------------------------------------------------- byte-level model


def byte_table(tokenizer, vocab_size: int, chunk_len: int) -> torch.Tensor:
    """[V, chunk_len]: the bytes of each token (cut at chunk_len), PAD after; specials -> [EOT, PAD, ...]."""
    rows = []
    for i in range(vocab_size):
        b = b"" if i == tokenizer.eot_id else tokenizer.token_bytes(i)
        row = list(b[:chunk_len]) if b else [BYTE_EOT]
        rows.append(row + [BYTE_PAD] * (chunk_len - len(row)))
    return torch.tensor(rows, dtype=torch.long)


class ByteStack(nn.Module):
    """A small transformer over the chunk_len bytes of each token."""

    def __init__(self, mc, n_layers: int):
        super().__init__()
        bl = mc.byte_level
        sub = dataclasses.replace(mc, d_model=bl.byte_dim, n_heads=bl.n_heads, n_kv_heads=None, ffn_dim=None)
        f = sub.effective_ffn_dim
        dp = mc.dropout
        self.pos = nn.Parameter(torch.zeros(bl.chunk_len, bl.byte_dim))
        self.blocks = nn.ModuleList(
            Block(
                bl.byte_dim,
                bl.n_heads,
                bl.n_heads,
                MLP(bl.byte_dim, f, mc.ffn, mc.bias),
                mc.norm,
                mc.norm_eps,
                mc.bias,
                dp.attention,
                dp.residual,
            )
            for _ in range(n_layers)
        )
        self.ln = Norm(bl.byte_dim, mc.norm, mc.norm_eps, mc.bias)

    def forward(self, x, causal: bool, key_mask=None):
        x = x + self.pos
        for b in self.blocks:
            x = b(x, None, causal, key_mask)
        return self.ln(x)


class RefBytePooled(nn.Module):
    def __init__(self, mc, tokenizer):
        super().__init__()
        bl = mc.byte_level
        self.L = bl.chunk_len
        self.register_buffer("table", byte_table(tokenizer, mc.effective_vocab_size, bl.chunk_len))
        self.byte_emb = nn.Embedding(BYTE_VOCAB, bl.byte_dim)
        self.encoder = ByteStack(mc, bl.encoder_layers)
        self.pool = nn.Linear(bl.byte_dim, mc.d_model, bias=mc.bias)
        self.core = Core(mc)
        self.cond = nn.Linear(mc.d_model, bl.byte_dim, bias=mc.bias)
        self.decoder = ByteStack(mc, bl.decoder_layers)
        self.byte_head = nn.Linear(bl.byte_dim, BYTE_VOCAB, bias=False)
        if mc.tie_embeddings:
            self.byte_head.weight = self.byte_emb.weight
        _init(self, mc.init_std, mc.n_layers)

    def forward(self, idx, targets):
        B, T = idx.shape
        src = self.table[idx].view(B * T, self.L)  # [N, L] byte symbols
        real = src != BYTE_PAD
        enc = self.encoder(self.byte_emb(src), causal=False, key_mask=real)
        w = real.unsqueeze(-1).to(enc.dtype)
        h = self.core(self.pool((enc * w).sum(1) / w.sum(1)).view(B, T, -1))
        tgt = self.table[targets.clamp(min=0)].view(B * T, self.L)
        tgt = tgt.masked_fill((targets < 0).view(B * T, 1), BYTE_PAD)
        dec_in = torch.cat([self.cond(h).view(B * T, 1, -1), self.byte_emb(tgt[:, :-1])], dim=1)
        logits = self.byte_head(self.decoder(dec_in, causal=True))
        # scored: the real bytes and the first PAD after them (the token ends there); later PADs are filler,
        # and so is an all-PAD row (an ignored target)
        pad = tgt == BYTE_PAD
        filler = pad & F.pad(pad[:, :-1], (1, 0), value=True)
        loss = F.cross_entropy(logits.view(-1, BYTE_VOCAB), tgt.masked_fill(filler, -1).view(-1), ignore_index=-1)
        return logits, loss


# --------------------------------------------------------------------------- optimizer and step


def ref_model(mc, tokenizer=None) -> nn.Module:
    return RefBytePooled(mc, tokenizer) if mc.embedder == "byte_pooled" else RefGPT(mc)


def fused_available(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for `device` (CUDA; CPU since torch 2.4)."""
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
        return True
    except (RuntimeError, ValueError):
        return False


def ref_optimizer(
    model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.1, betas=(0.9, 0.95), fused: bool | None = None
) -> torch.optim.AdamW:
    """nanoGPT's configure_optimizers: decay 2-D weights except embeddings; fused where available."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]  # shared tensors once
    decay = [p for p in params if p.ndim >= 2 and id(p) not in emb]
    rest = [p for p in params if p.ndim < 2 or id(p) in emb]
    device = params[0].device
    if fused is None:
        fused = fused_available(device)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=fused or None)


def ref_step(model, optimizer, x, y, grad_clip: float = 1.0, amp_dtype=None) -> torch.Tensor:
    """One training step; returns the loss (a device tensor: no host sync)."""
    if amp_dtype is not None:
        with torch.autocast(x.device.type, dtype=amp_dtype):
            _, loss = model(x, y)
    else:
        _, loss = model(x, y)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
