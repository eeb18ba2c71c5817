"""A local sweep's data: each distinct (corpus, tokenizer) tokenized once in the driver before trials start."""

from __future__ import annotations

import time

from stlm.sweep.plan.sweep import Sweep


def distinct_corpora(sweep: Sweep):
    """The first arm of each distinct (data, tokenizer, vocabulary): the arms whose corpus is prepared."""
    seen = set()
    for arm in sweep.arms:
        key = (repr(arm.cfg.data), arm.cfg.model.tokenizer, arm.cfg.model.vocab_size)
        if key not in seen:
            seen.add(key)
            yield arm


def prepare_data_locally(sweep: Sweep, log=print) -> None:
    """Tokenize every distinct (data, tokenizer) once in the driver, so trials start on a warm cache."""
    # lazy: the tokenizers and their pool, only once a sweep runs (not for --dry-run)
    from stlm.data import prepare

    for arm in distinct_corpora(sweep):
        t0 = time.time()
        prepare(arm.cfg)
        log(
            f"data ready for arm {arm.name} ({arm.cfg.data.source}, {arm.cfg.model.tokenizer}) "
            f"in {time.time() - t0:.1f}s"
        )
