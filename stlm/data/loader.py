"""Batches of token windows from a prepared (memory-mapped) token array.

    batcher = TokenBatcher(data.train, batch_size=16, context_length=256, seed=0, rank=r, world_size=w)
    x, y = batcher.next()           # int64 [16, 256]; y is x shifted left by one token
    state = batcher.state_dict()    # resume: TokenBatcher(...).load_state_dict(state) continues identically

Training windows start at random positions (sampled with replacement, as nanoGPT does), from
a numpy Generator seeded by (seed, rank). With world_size > 1 the token array is cut into
world_size contiguous blocks and rank r only reads windows lying entirely inside block r, so
ranks never see the same tokens in a step (their streams are disjoint by construction, not by
chance). Each step reads only the B * (T + 1) tokens it needs from the memmap.

Validation uses val_windows(): fixed, evenly spaced, non-overlapping windows, so every
evaluation of every run on the same data scores exactly the same tokens (each target once).

There is no prefetch thread, on purpose: next() costs 27 us against a step of hundreds of ms,
and a second live thread that runs torch ops gives the process a second OpenMP pool, which made
every step 22-31% slower on 2 cores (benchmarks/RESULTS.md, "Tested later").
"""

from __future__ import annotations

import numpy as np
import torch

from stlm.errors import StlmError

STATE_VERSION = 1


class TokenBatcher:
    def __init__(
        self, tokens: np.ndarray, batch_size: int, context_length: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.tokens = tokens
        self.batch_size, self.context_length = batch_size, context_length
        self.seed, self.rank, self.world_size = seed, rank, world_size
        # Block of this rank: tokens [lo, hi). A window needs T + 1 tokens (inputs and shifted targets),
        # so its start s satisfies lo <= s <= hi - (T + 1): n_starts = hi - lo - T choices.
        block = len(tokens) // world_size
        self.lo = rank * block
        self.n_starts = block - context_length
        if self.n_starts < 1:
            raise StlmError(
                f"The training split has {len(tokens)} tokens: too few for model.context_length={context_length}"
                + (f" on each of {world_size} ranks" if world_size > 1 else "")
                + ". Raise data.max_chars or lower model.context_length."
            )
        self.offsets = np.arange(context_length + 1)
        self.rng = np.random.default_rng([seed, rank])
        self.step = 0

    def next_starts(self) -> np.ndarray:
        """Start positions of the next batch's windows (advances the stream)."""
        starts = self.lo + self.rng.integers(0, self.n_starts, size=self.batch_size)
        self.step += 1
        return starts

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.next_starts()
        # Fancy indexing reads just these B x (T + 1) tokens from the memmap into a new array.
        buf = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "rng": self.rng.bit_generator.state,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "context_length": self.context_length,
            "n_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "rank", "world_size", "batch_size", "context_length", "n_tokens"):
            if state.get(key) != mine[key]:
                raise StlmError(
                    f"Cannot resume the data stream: its {key} was {state.get(key)} and is now {mine[key]}; "
                    "the batch sequence would not continue where it stopped."
                )
        self.rng.bit_generator.state = state["rng"]
        self.step = int(state["step"])


def val_windows(tokens: np.ndarray, context_length: int, n_windows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to n_windows fixed (x, y) pairs of int64 [T] tensors, evenly spaced and non-overlapping.

    The array holds A = (len - 1) // T disjoint slots of T targets; window j takes slot
    floor(j * A / n), so the windows spread over the whole split and no target is scored twice.
    If fewer than n_windows slots exist, all A are returned.
    """
    T = context_length
    available = (len(tokens) - 1) // T
    if available < 1:
        raise StlmError(
            f"The validation split has {len(tokens)} tokens: too few for one window of "
            f"model.context_length={T}. Raise data.max_chars or data.val_fraction."
        )
    n = min(n_windows, available)
    windows = []
    for slot in (np.arange(n) * available) // n:
        s = int(slot) * T
        chunk = torch.from_numpy(np.asarray(tokens[s : s + T + 1], dtype=np.int64))
        windows.append((chunk[:-1].clone(), chunk[1:].clone()))
    return windows
