"""Progress bars for long work (tokenization, training, scoring): tqdm on a terminal, nothing when
STLM_QUIET=1 or stderr is not a TTY (log files, Ray workers), so logs do not fill with redraws."""

from __future__ import annotations

import os
import sys


def quiet() -> bool:
    return os.environ.get("STLM_QUIET") == "1" or not sys.stderr.isatty()


def bar(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs), disabled when quiet()."""
    # lazy: tqdm.auto looks for a notebook; only once a bar is shown
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=quiet(), **kwargs)
