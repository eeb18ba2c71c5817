"""Causal self-attention: MHA / GQA / MQA (n_kv_heads), optional QK-norm, through
torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels).

Shapes: x [B, T, d]; q [B, H, T, hd]; k, v [B, KV, T, hd] with H % KV == 0.
Parameters: qkv d * (H + 2 KV) hd  +  proj H hd * d  (+ biases)  (+ 2 hd for QK-norm).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from stlm.models.layers.dropout import ScaledDropout
from stlm.models.layers.norms import RMSNorm

# SDPA's enable_gqa (torch >= 2.5) lets flash attention read grouped kv heads without copying them.
HAS_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)


class KVCache:
    """Keys and values of every *applied* layer (a block run twice has two slots).

    k, v: [n_layers_applied, B, KV, max_len, hd]. Made by STLM.new_kv_cache.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, device, dtype):
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write positions start .. start+T of `layer`; return all keys/values 0 .. start+T."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        *,
        bias: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        hd = self.head_dim
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * hd, bias=bias)
        self.proj = nn.Linear(n_heads * hd, d_model, bias=bias)  # residual output projection (scaled init)
        # QK-norm (Dehghani et al. 2023): RMSNorm over the head dim, one weight shared by all heads.
        self.q_norm = RMSNorm(hd, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(hd, norm_eps) if qk_norm else None
        self.attn_dropout = ScaledDropout(dropout)

    @staticmethod
    def n_params(d_model: int, n_heads: int, n_kv_heads: int, bias: bool, qk_norm: bool) -> int:
        hd = d_model // n_heads
        n = Attention.matmul_params(d_model, n_heads, n_kv_heads)
        if bias:
            n += (n_heads + 2 * n_kv_heads) * hd + d_model
        if qk_norm:
            n += 2 * hd
        return n

    @staticmethod
    def matmul_params(d_model: int, n_heads: int, n_kv_heads: int) -> int:
        hd = d_model // n_heads
        return d_model * (n_heads + 2 * n_kv_heads) * hd + n_heads * hd * d_model

    def forward(
        self,
        x: torch.Tensor,
        pos,
        *,
        causal: bool = True,
        key_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int = 0,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, KV, hd).transpose(1, 2)  # [B, KV, T, hd]
        v = v.view(B, T, KV, hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = pos.rotate(q, k, start)
        if cache is not None:
            k, v = cache.update(layer, k, v, start)
        Tk = k.shape[2]

        # Mask: the fast path is is_causal=True (flash). A bias (ALiBi), a cache offset or a key
        # padding mask (byte encoder) needs an explicit attn_mask.
        mask, is_causal = None, False
        bias = pos.bias(T, Tk, start)
        if key_mask is not None:  # [B, Tk] bool, True = real key (bidirectional byte encoder)
            mask = key_mask[:, None, None, :]
        if causal:
            if bias is None and mask is None and Tk == T:
                is_causal = True
            elif not (bias is None and mask is None and T == 1):  # one new token sees the whole cache
                allowed = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(diagonal=Tk - T)
                mask = allowed if mask is None else mask & allowed
        if bias is not None:
            bias = bias.to(q.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))

        gqa = {}
        if KV != H:
            if mask is None and HAS_GQA:
                gqa = {"enable_gqa": True}  # flash attention reads the grouped kv heads without copies
            else:  # the kernels that take a mask want as many kv heads as query heads
                k = k.repeat_interleave(H // KV, dim=1)
                v = v.repeat_interleave(H // KV, dim=1)
        dropout_p = self.attn_dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, **gqa)
        y = y.transpose(1, 2).reshape(B, T, H * hd)
        return self.proj(y)
