"""Bits per byte: the tokenizer-independent validation metric.

    bpb = sum over targets of -log p(token)  /  (ln 2 * sum over targets of bytes(token))

A model with a bigger vocabulary predicts fewer, longer tokens; dividing the total
information by the UTF-8 bytes those tokens decode to (exactly, from
tokenizer.byte_lengths; 0 for end-of-text) puts every tokenizer on the same scale.
val_loss is the plain mean nats per token, comparable only within one tokenizer.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch


@torch.no_grad()
def bpb_sums(model, windows, byte_lengths: np.ndarray, device, *, batch_size: int = 32,
             amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """float64 tensor [nll_nats, n_tokens, n_bytes] summed over `windows` (so ranks can all-reduce it)."""
    device = torch.device(device)
    table = torch.as_tensor(np.asarray(byte_lengths, dtype=np.int64), device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    amp = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    try:
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]
            T = chunk[0][0].shape[-1]
            x = torch.cat([w[0].reshape(-1, T) for w in chunk]).to(device, non_blocking=True)
            y = torch.cat([w[1].reshape(-1, T) for w in chunk]).to(device, non_blocking=True)
            with amp:
                lp = model.token_logprobs(x, y)
            real = y >= 0  # -1 marks padding / ignored targets
            sums[0] += -(lp.double() * real).sum()
            sums[1] += real.sum()
            sums[2] += table[y.clamp(min=0)].mul(real).sum()
    finally:
        model.train(was_training)
    return sums


def bpb_from_sums(sums) -> dict[str, float]:
    nll, n_tok, n_bytes = (float(v) for v in sums)
    return {
        "val_loss": nll / max(n_tok, 1.0),
        "val_bpb": nll / (math.log(2) * n_bytes) if n_bytes > 0 else float("nan"),
    }


def evaluate_bpb(model, windows, byte_lengths: np.ndarray, device="cpu", **kw) -> dict[str, float]:
    """{"val_loss": nats/token, "val_bpb": bits/byte} over fixed validation windows [(x, y), ...]."""
    if not windows:
        raise ValueError("evaluate_bpb needs at least one validation window")
    return bpb_from_sums(bpb_sums(model, windows, byte_lengths, device, **kw))
