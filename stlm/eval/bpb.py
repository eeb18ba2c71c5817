"""Bits per byte: the tokenizer-independent validation metric.

    val_bpb  = sum over text targets of -log p(token)  /  (ln 2 * sum over text targets of bytes(token))
    val_loss = sum over all targets of -log p(token)   /  number of targets          (nats per token)

A model with a bigger vocabulary predicts fewer, longer tokens; dividing the total
information by the UTF-8 bytes those tokens decode to (exactly, from
tokenizer.byte_lengths) puts every tokenizer on the same scale.

Text targets are those with byte length > 0. The end-of-text token that prepare() puts after
each document (it stands for the document boundary; a .txt source's blank-line separators are
dropped, not stored) has byte length 0, so it is left out of val_bpb's numerator as well as its
denominator: bpb prices only the characters of the text, as lm-evaluation-harness's
bits_per_byte scores a document's text only. Counting its bits over no bytes inflated bpb.
val_loss keeps every target, end-of-text included; it is comparable only within one tokenizer.
Byte-level models (model.embedder=byte_pooled) give token_logprobs per BPE token too, so the
same rule applies to them.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch


@torch.no_grad()
def bpb_sums(
    model, windows, byte_lengths: np.ndarray, device, *, batch_size: int = 32, amp_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """float64 tensor [nll_nats, n_tokens, n_bytes, text_nll_nats] summed over `windows` (so ranks can
    all-reduce it): nll and count of every target, then bytes and nll of the text targets (bytes > 0)."""
    device = torch.device(device)
    table = torch.as_tensor(np.asarray(byte_lengths, dtype=np.int64), device=device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    try:
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            T = chunk[0][0].shape[-1]
            x = torch.cat([w[0].reshape(-1, T) for w in chunk]).to(device, non_blocking=True)
            y = torch.cat([w[1].reshape(-1, T) for w in chunk]).to(device, non_blocking=True)
            with amp:
                lp = model.token_logprobs(x, y)
            real = y >= 0  # -1 marks padding / ignored targets
            n_bytes = table[y.clamp(min=0)] * real
            nll = -lp.double() * real
            sums[0] += nll.sum()
            sums[1] += real.sum()
            sums[2] += n_bytes.sum()
            sums[3] += (nll * (n_bytes > 0)).sum()  # text targets only: end-of-text stands for no byte
    finally:
        model.train(was_training)
    return sums


def bpb_from_sums(sums) -> dict[str, float]:
    nll, n_tok, n_bytes, text_nll = (float(v) for v in sums)
    return {
        "val_loss": nll / max(n_tok, 1.0),
        "val_bpb": text_nll / (math.log(2) * n_bytes) if n_bytes > 0 else float("nan"),
    }


def evaluate_bpb(model, windows, byte_lengths: np.ndarray, device="cpu", **kw) -> dict[str, float]:
    """{"val_loss": nats/token, "val_bpb": bits/byte} over fixed validation windows [(x, y), ...]."""
    if not windows:
        raise ValueError("evaluate_bpb needs at least one validation window")
    return bpb_from_sums(bpb_sums(model, windows, byte_lengths, device, **kw))
