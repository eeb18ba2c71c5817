"""bpb: tokenizer-independent bits per byte on the run's prepared validation split.

Not a harness task: it calls stlm.eval.bpb.evaluate_bpb (the training loop's metric) on fixed
windows of stlm.data's val split, so it needs the run's Config (data section) and an stlm model.
"""

from __future__ import annotations

from stlm.data import prepare
from stlm.data.loader import val_windows
from stlm.errors import StlmError
from stlm.eval.bpb import evaluate_bpb


def run_bpb(model, cfg, device: str, limit: int | None, batch_size: int = 32) -> dict:
    if cfg is None:
        raise StlmError(
            "Task 'bpb' needs the run's config (its data section): pass config=cfg to "
            "stlm.eval.evaluate, or evaluate a checkpoint with `stlm eval`."
        )
    if not hasattr(model, "token_logprobs"):
        raise StlmError("Task 'bpb' scores stlm models only (it needs model.token_logprobs).")

    data = prepare(cfg)
    ctx = cfg.model.context_length
    n_all = max(1, (len(data.val) - 1) // ctx)  # every non-overlapping window of the val split
    n = min(n_all, limit) if limit else n_all
    windows = val_windows(data.val, ctx, n)
    out = evaluate_bpb(model, windows, data.tokenizer.byte_lengths, device, batch_size=batch_size)
    return {"val_bpb": float(out["val_bpb"]), "val_loss": float(out["val_loss"]), "n": len(windows)}
