"""Log-likelihood scoring: the LM interface the evaluator talks to, and its batched torch implementation.

The evaluator sees only `LM`:
    lm.encode(text) -> list[int]          (no special tokens)
    lm.eot_id, lm.max_length
    lm.loglikelihood([(context_ids, continuation_ids), ...]) -> [(sum log P(continuation | context), is_greedy)]

Strings become token pairs exactly as lm-evaluation-harness does it (TemplateLM.loglikelihood and
_encode_pair in lm_eval/api/model.py):
  * empty context -> context = [EOT] (the harness's prefix token), continuation = encode(continuation);
  * else trailing spaces of the context move onto the continuation, then
    whole = encode(context + continuation), ctx = encode(context), continuation = whole[len(ctx):]
    (the pair is split where the context's own encoding ends, so BPE merges across the boundary
    are those of the whole string).

Scoring (HFLM._loglikelihood_tokens): the model reads inp = (ctx + cont)[-(max_length + 1):][:-1]
(truncated from the left), the continuation's log-probs are the last len(cont) positions, and
is_greedy says whether argmax equals every continuation token.

Batching: requests are turned into rows; identical rows are computed once (the harness's
one-token-continuation cache, generalised: MMLU's " A"/" B"/" C"/" D" share one row since they differ
only in the final target, which is read from the same logits); rows are sorted by length, longest first,
and right-padded within a batch. A causal model does not let padding on the right change the real
positions, so batched scores equal one-at-a-time scores.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

Request = tuple[list[int], list[int]]  # (context_ids, continuation_ids)


def progress(iterable, total: int | None = None, desc: str = ""):
    """tqdm when on a TTY and not STLM_QUIET=1."""
    from tqdm import tqdm

    quiet = os.environ.get("STLM_QUIET") == "1" or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=quiet, leave=False)


class LM(ABC):
    """A causal language model as the evaluator sees it."""

    eot_id: int
    max_length: int

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def loglikelihood(self, requests: list[Request]) -> list[tuple[float, bool | None]]: ...

    def encode_pair(self, context: str, continuation: str) -> Request:
        """(context, continuation) strings -> token ids, as the harness's TemplateLM.loglikelihood."""
        if context == "":
            return [self.eot_id], self.encode(continuation)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        if not ctx:  # an all-whitespace context: condition on EOT like an empty one
            return [self.eot_id], whole
        return ctx, whole[len(ctx):]


class TorchLM(LM):
    """Batched scoring for any torch causal LM; subclasses give logits (or per-token log-probs).

    `_logits(idx) -> [B, T, V]` when the model has token-level logits (enables row sharing and
    is_greedy); otherwise `_token_logprobs(idx, targets) -> [B, T]` and is_greedy is None.
    """

    batch_size: int = 32
    device: str = "cpu"
    dedup: bool = True  # compute identical rows once
    max_logits_elements: int = 2**27  # cap on B*T*V per forward (512 MiB of fp32 logits)
    vocab_size: int = 0
    has_logits: bool = True

    def _logits(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _token_logprobs(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def loglikelihood(self, requests: list[Request]) -> list[tuple[float, bool | None]]:
        L = self.max_length
        # 1. rows: the token sequence the model reads; requests that read the same sequence share it.
        rows: dict[tuple, list[int]] = {}
        spans: list[tuple[list[int], int]] = []  # per request: (whole, cont_len)
        for i, (ctx, cont) in enumerate(requests):
            if not cont:
                raise ValueError(f"request {i} has an empty continuation")
            whole = (list(ctx) + list(cont))[-(L + 1):]
            cont_len = min(len(cont), len(whole) - 1)
            spans.append((whole, cont_len))
            # With logits the last target is read from the row, so it need not be part of the key.
            key = tuple(whole[:-1]) if self.has_logits else tuple(whole)
            if not self.dedup:
                key = (i, *key)
            rows.setdefault(key, []).append(i)
        # 2. longest rows first; chunk into batches; pad on the right.
        order = sorted(rows.items(), key=lambda kv: -len(spans[kv[1][0]][0]))
        results: list[tuple[float, bool | None]] = [(0.0, None)] * len(requests)
        batches = self._batches(order, spans)
        for batch in progress(batches, desc="scoring"):
            self._score_batch(batch, spans, results)
        return results

    def _batches(self, order, spans) -> list[list]:
        batches, cur, cur_t = [], [], 0
        for key, reqs in order:
            t = len(spans[reqs[0]][0]) - 1
            if not cur:
                cur_t = t  # the first (longest) row sets the padded width
            too_big = self.has_logits and (len(cur) + 1) * cur_t * max(self.vocab_size, 1) > self.max_logits_elements
            if cur and (len(cur) >= self.batch_size or too_big):
                batches.append(cur)
                cur, cur_t = [], t
            cur.append((key, reqs))
        if cur:
            batches.append(cur)
        return batches

    def _score_batch(self, batch, spans, results) -> None:
        T = len(spans[batch[0][1][0]][0]) - 1
        idx = torch.zeros(len(batch), T, dtype=torch.long)
        tgt = torch.zeros(len(batch), T, dtype=torch.long)
        for r, (_, reqs) in enumerate(batch):
            whole = spans[reqs[0]][0]
            idx[r, : len(whole) - 1] = torch.tensor(whole[:-1])
            tgt[r, : len(whole) - 1] = torch.tensor(whole[1:])
        idx, tgt = idx.to(self.device), tgt.to(self.device)
        if self.has_logits:
            logits = self._logits(idx)
            for r, (_, reqs) in enumerate(batch):
                n = len(spans[reqs[0]][0]) - 1  # real length of this row
                c_max = max(spans[i][1] for i in reqs)
                lp = F.log_softmax(logits[r, n - c_max : n].float(), dim=-1)  # [c_max, V]
                for i in reqs:
                    whole, c = spans[i]
                    cont = torch.tensor(whole[-c:], device=lp.device)
                    sel = lp[c_max - c :]
                    ll = sel.gather(-1, cont[:, None]).squeeze(-1).sum()
                    greedy = bool((sel.argmax(-1) == cont).all())
                    results[i] = (float(ll), greedy)
        else:
            lp = self._token_logprobs(idx, tgt).float()
            for r, (_, reqs) in enumerate(batch):
                n = len(spans[reqs[0]][0]) - 1
                for i in reqs:
                    c = spans[i][1]
                    results[i] = (float(lp[r, n - c : n].sum()), None)


class StlmLM(TorchLM):
    """An stlm model + tokenizer behind the LM interface.

    Token models: logits from model(idx) (full vocabulary: row sharing and is_greedy).
    Byte-pooled models (logits are over bytes): model.token_logprobs, one row per request, no is_greedy.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 32, device: str = "cpu", dedup: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = str(device)
        self.dedup = dedup
        cfg = getattr(model, "config", None)
        self.max_length = int(getattr(cfg, "context_length", 1024))
        self.eot_id = int(tokenizer.eot_id)
        self.vocab_size = int(getattr(tokenizer, "vocab_size", 0))
        self.has_logits = getattr(cfg, "embedder", "token") == "token"

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _logits(self, idx):
        out = self.model(idx)
        return out[0] if isinstance(out, tuple) else out

    def _token_logprobs(self, idx, targets):
        return self.model.token_logprobs(idx, targets)

