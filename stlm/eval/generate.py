"""`stlm generate CHECKPOINT --prompt ...`: sample text with a KV cache.

    stlm generate runs/baseline-10m --prompt "Once upon a time" --max-new-tokens 100 --temperature 0.8 --top-k 50

    from stlm.eval.generate import generate
    text = generate(model, tokenizer, "Once upon a time", max_new_tokens=50, temperature=0.0)  # greedy

The prompt is run once through model.forward_cached into a cache from model.new_kv_cache; every new
token is then one cached step (start_pos = tokens so far). When the sequence reaches the model's
context length the cache is full: from there each step recomputes the last context_length tokens
without the cache (the sliding window a no-cache sampler uses), so both paths give the same tokens.

Sampling: temperature <= 0 is greedy (argmax); otherwise logits / temperature, then top-k, then top-p
(smallest set of tokens whose probability reaches p), sampled with a torch.Generator seeded by `seed`
(on CPU, so a seed gives the same text on every device). Generation stops at end-of-text.

Byte-pooled models (model.embedder = byte_pooled) have no token-level logits to sample from; they are
refused with an StlmError rather than sampled some other, slower way.
"""

from __future__ import annotations

import argparse
import math

import torch

from stlm.errors import StlmError
from stlm.eval.__main__ import resolve_device
from stlm.train.checkpoint import load_model


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator
) -> int:
    """One token id from logits [V] (float32 on CPU)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p (the first one is always kept)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _check_model(model) -> None:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "embedder", "token") != "token" or not hasattr(model, "forward_cached"):
        raise StlmError(
            "stlm generate needs token-level logits and a KV cache; byte-pooled models "
            "(model.embedder=byte_pooled) are not supported."
        )


@torch.no_grad()
def generate_ids(
    model,
    prompt_ids: list[int],
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    *,
    eot_id: int | None = None,
    use_cache: bool = True,
) -> list[int]:
    """New token ids after `prompt_ids` (the prompt itself is not returned)."""
    _check_model(model)
    if not prompt_ids:
        raise StlmError("generate needs a non-empty prompt (or start it with the end-of-text token).")
    ctx_len = int(model.config.context_length)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    seq = list(prompt_ids)
    out: list[int] = []

    def full_logits() -> torch.Tensor:  # no cache: the last ctx_len tokens
        idx = torch.tensor([seq[-ctx_len:]], device=device)
        logits = model(idx)
        logits = logits[0] if isinstance(logits, tuple) else logits
        return logits[0, -1]

    try:
        cache, pos = None, 0
        if use_cache and len(seq) < ctx_len:
            cache = model.new_kv_cache(1, ctx_len, device, dtype)
            logits = model.forward_cached(torch.tensor([seq], device=device), cache, 0)[0, -1]
            pos = len(seq)
        else:
            logits = full_logits()
        for _ in range(max_new_tokens):
            nxt = sample_next(logits.float().cpu(), temperature, top_k, top_p, gen)
            if eot_id is not None and nxt == eot_id:
                break
            out.append(nxt)
            seq.append(nxt)
            if cache is not None and pos < ctx_len:
                logits = model.forward_cached(torch.tensor([[nxt]], device=device), cache, pos)[0, -1]
                pos += 1
            else:  # cache full (or disabled): slide the window
                cache = None
                logits = full_logits()
    finally:
        if was_training:
            model.train()
    return out


def generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    *,
    use_cache: bool = True,
) -> str:
    """Sample a continuation of `prompt`; returns the new text only."""
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    new = generate_ids(
        model, ids, max_new_tokens, temperature, top_k, top_p, seed, eot_id=tokenizer.eot_id, use_cache=use_cache
    )
    return tokenizer.decode(new)


def check_sampling_args(args) -> None:
    """Every bad sampling option at once, each named (a negative temperature would flip the distribution)."""
    bad = []
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        bad.append(f"--temperature must be > 0 (or exactly 0 for greedy decoding), got {args.temperature:g}")
    if args.top_k is not None and args.top_k <= 0:
        bad.append(f"--top-k must be a positive number of tokens, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        bad.append(f"--top-p must be in (0, 1], got {args.top_p:g}")
    if args.max_new_tokens < 0:
        bad.append(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.num_samples < 1:
        bad.append(f"--num-samples must be >= 1, got {args.num_samples}")
    if bad:
        raise StlmError("; ".join(bad) + ".")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="stlm generate", description="Sample text from a checkpoint (KV-cached).")
    p.add_argument("checkpoint", help="checkpoint dir, or run dir (its latest checkpoint)")
    p.add_argument("--prompt", default="", help="text to continue (empty: start after end-of-text)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-cache", action="store_true", help="recompute every step (slow; for checking the cache)")
    args = p.parse_args(argv)
    check_sampling_args(args)

    model, _, tokenizer = load_model(args.checkpoint, resolve_device(args.device))
    for i in range(args.num_samples):
        text = generate(
            model,
            tokenizer,
            args.prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed + i,
            use_cache=not args.no_cache,
        )
        if args.num_samples > 1:
            print(f"--- sample {i} (seed {args.seed + i})")
        print(args.prompt + text, flush=True)
    return 0


if __name__ == "__main__":
    import sys

    from stlm.errors import run_main

    sys.exit(run_main(main, sys.argv[1:]))
