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

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from stlm.progress import bar

Request = tuple[list[int], list[int]]  # (context_ids, continuation_ids)


def progress(iterable, total: int | None = None, desc: str = ""):
    return bar(iterable, total=total, desc=desc, leave=False)


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
        return ctx, whole[len(ctx) :]


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

    def _selected_logits(self, idx: torch.Tensor, sel: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        """Logits of rows r at positions a..b-1, for each (r, a, b) in `sel`."""
        logits = self._logits(idx)
        return [logits[r, a:b] for r, a, b in sel]

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
            whole = (list(ctx) + list(cont))[-(L + 1) :]
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

    def _logits_rows(self, width: int, cont: int) -> int:
        """Positions of vocabulary logits one row of `width` costs (all of them for a plain forward)."""
        return width

    def _batches(self, order, spans) -> list[list]:
        """Rows in order, batch_size at a time, fewer when their logits would pass max_logits_elements."""
        batches, cur, cur_t, cost = [], [], 0, 0
        vocab = max(self.vocab_size, 1)
        for key, reqs in order:
            t = len(spans[reqs[0]][0]) - 1
            if not cur:
                cur_t = t  # the first (longest) row sets the padded width
            c = self._logits_rows(cur_t, max(spans[i][1] for i in reqs)) * vocab if self.has_logits else 0
            if cur and (len(cur) >= self.batch_size or cost + c > self.max_logits_elements):
                batches.append(cur)
                cur, cur_t, cost = [], t, 0
                c = self._logits_rows(t, max(spans[i][1] for i in reqs)) * vocab if self.has_logits else 0
            cur.append((key, reqs))
            cost += c
        if cur:
            batches.append(cur)
        return batches

    def _score_batch(self, batch, spans, results) -> None:
        T = len(spans[batch[0][1][0]][0]) - 1
        idx = torch.zeros(len(batch), T, dtype=torch.long)
        tgt = torch.full((len(batch), T), -1, dtype=torch.long)  # -1: padding, not a target
        for r, (_, reqs) in enumerate(batch):
            whole = spans[reqs[0]][0]
            idx[r, : len(whole) - 1] = torch.tensor(whole[:-1])
            tgt[r, : len(whole) - 1] = torch.tensor(whole[1:])
        idx, tgt = idx.to(self.device), tgt.to(self.device)
        if self.has_logits:
            sel = []  # per row: the positions whose logits a continuation reads
            for r, (_, reqs) in enumerate(batch):
                n = len(spans[reqs[0]][0]) - 1  # real length of this row
                sel.append((r, n - max(spans[i][1] for i in reqs), n))
            for (_row, a, b), logits, (_, reqs) in zip(sel, self._selected_logits(idx, sel), batch):
                lp = F.log_softmax(logits.float(), dim=-1)  # [b - a, V]
                for i in reqs:
                    whole, c = spans[i]
                    cont = torch.tensor(whole[-c:], device=lp.device)
                    part = lp[b - a - c :]
                    ll = part.gather(-1, cont[:, None]).squeeze(-1).sum()
                    results[i] = (float(ll), bool((part.argmax(-1) == cont).all()))
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

    context_cache=True (token models with a KV cache): a context shared by several continuations runs
    once. Its tokens but the last are prefilled into a KV cache, which is copied to one row per distinct
    continuation; the rows then run from there. Contexts of equal length are batched together. Requests
    that are left-truncated, have a one-token context (BLiMP's EOT) or whose continuations all read the
    same row (MMLU: row sharing already runs that context once) take the plain batched path. Scores equal
    the plain path's up to float rounding (cached steps run other kernels than one full forward).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 32,
        device: str = "cpu",
        dedup: bool = True,
        context_cache: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = str(device)
        self.dedup = dedup
        self.context_cache = context_cache and hasattr(model, "forward_cached")
        cfg = getattr(model, "config", None)
        self.max_length = int(getattr(cfg, "context_length", 1024))
        self.eot_id = int(tokenizer.eot_id)
        self.vocab_size = int(getattr(tokenizer, "vocab_size", 0))
        self.has_logits = getattr(cfg, "embedder", "token") == "token"
        # stlm's token models are embedder -> core -> head: the vocabulary matmul (most of a small
        # model's FLOPs with GPT-2's 50k tokens) can then run on the continuation positions only.
        self.split_head = (
            self.has_logits
            and all(hasattr(model, a) for a in ("embedder", "core", "head"))
            and hasattr(model.head, "logits")
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _logits(self, idx):
        out = self.model(idx)
        return out[0] if isinstance(out, tuple) else out

    def _logits_rows(self, width, cont):
        return cont if self.split_head else width

    def _selected_logits(self, idx, sel):
        if not self.split_head:
            return super()._selected_logits(idx, sel)
        h = self.model.core(self.model.embedder(idx))  # [B, T, d]
        picked = torch.cat([h[r, a:b] for r, a, b in sel])
        logits = self.model.head.logits(picked)
        return list(torch.split(logits, [b - a for _, a, b in sel]))

    def _token_logprobs(self, idx, targets):
        return self.model.token_logprobs(idx, targets)

    @torch.no_grad()
    def loglikelihood(self, requests: list[Request]) -> list[tuple[float, bool | None]]:
        if not (self.context_cache and self.has_logits):
            return super().loglikelihood(requests)
        L = self.max_length
        by_ctx: dict[tuple, list[int]] = {}
        for i, (ctx, cont) in enumerate(requests):
            if len(ctx) >= 2 and cont and len(ctx) + len(cont) <= L + 1:  # not truncated
                by_ctx.setdefault(tuple(ctx), []).append(i)
        # A group is worth the cache when it has >= 2 distinct continuation rows: a row is the last
        # context token + the continuation but its last token (MMLU's " A".." D" are one row: plain path).
        groups: dict[int, list[tuple[tuple, dict]]] = {}  # prefix length -> [(ctx, {row: [requests]})]
        cached: set[int] = set()
        for ctx, members in by_ctx.items():
            rows: dict[tuple, list[int]] = {}
            for i in members:
                rows.setdefault((ctx[-1], *requests[i][1][:-1]), []).append(i)
            if len(rows) >= 2:
                groups.setdefault(len(ctx) - 1, []).append((ctx, rows))
                cached.update(members)
        results: list[tuple[float, bool | None]] = [(0.0, None)] * len(requests)
        rest = [i for i in range(len(requests)) if i not in cached]
        if rest:
            for i, r in zip(rest, super().loglikelihood([requests[i] for i in rest])):
                results[i] = r
        # Groups with the same prefix length share a batch: prefill [G, P] once, then all their rows.
        chunks = []
        for plen, gs in sorted(groups.items(), reverse=True):
            cur, n_rows = [], 0
            for g in gs:
                if cur and n_rows + len(g[1]) > self.batch_size:
                    chunks.append((plen, cur))
                    cur, n_rows = [], 0
                cur.append(g)
                n_rows += len(g[1])
            if cur:
                chunks.append((plen, cur))
        for plen, chunk in progress(chunks, desc="scoring (shared contexts)"):
            self._score_shared(plen, chunk, requests, results)
        return results

    def _score_shared(self, plen: int, chunk, requests, results) -> None:
        """Prefill each group's context (but its last token) once, copy its KV cache to the group's
        rows, run every row from position plen; read the continuation log-probs from those rows."""
        model, dev = self.model, self.device
        rows = [(g, key, reqs) for g, (_, rws) in enumerate(chunk) for key, reqs in rws.items()]
        width = max(len(key) for _, key, _ in rows)
        prefix = torch.tensor([list(ctx[:-1]) for ctx, _ in chunk], device=dev)  # [G, plen]
        ctx_cache = model.new_kv_cache(len(chunk), plen + width, dev, None)
        if self.split_head:  # the prefix's own logits are never read: skip the head
            model.core(model.embedder(prefix), cache=ctx_cache, start=0)
        else:
            model.forward_cached(prefix, ctx_cache, 0)
        cache = model.new_kv_cache(len(rows), plen + width, dev, None)
        owner = torch.tensor([g for g, _, _ in rows], device=dev)
        cache.k[:, :, :, :plen] = ctx_cache.k[:, owner, :, :plen]  # [layers, B, kv_heads, T, hd]
        cache.v[:, :, :, :plen] = ctx_cache.v[:, owner, :, :plen]
        idx = torch.zeros(len(rows), width, dtype=torch.long)
        for r, (_, key, _) in enumerate(rows):
            idx[r, : len(key)] = torch.tensor(key)
        idx = idx.to(dev)
        if self.split_head:
            h = model.core(model.embedder(idx), cache=cache, start=plen)
            logits = model.head.logits(h)
        else:
            logits = model.forward_cached(idx, cache, plen)
        for r, (_, key, reqs) in enumerate(rows):
            lp = F.log_softmax(logits[r, : len(key)].float(), dim=-1)
            for i in reqs:
                tgt = torch.tensor(requests[i][1], device=lp.device)
                results[i] = (float(lp.gather(-1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all()))
