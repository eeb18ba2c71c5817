"""Working without a network: is the Hugging Face hub (or tiktoken's download) reachable at all?

    if hub_offline(): ...             # HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set: never try the hub
    why = hub_unreachable()           # None, or why the hub cannot be used now (one quick probe, cached)

`datasets` retries an unreachable hub for about 30 s before it gives up; one TCP connect with a
short timeout answers the same question at once, so `stlm eval`, data preparation and the sweep's
pre-flight ask here first and fail with the offline alternatives instead (README, "Offline").
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
TRUE = ("1", "true", "yes", "on")
OFFLINE_HINT = ("Offline, point data.source at local .txt/.jsonl/.parquet files (or data.source=generated), "
                "eval.data_dir / --data-dir / $STLM_BENCHMARKS at a benchmark directory laid out like "
                "shared/data/benchmarks, and data.gpt2_vocab_file / $STLM_GPT2_VOCAB at a gpt2.tiktoken file; "
                "a token cache prepared on a machine with network ($STLM_CACHE) is reused as it is (README, \"Offline\").")


def hub_offline() -> bool:
    """The user said so: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set to a true value."""
    return any(os.environ.get(k, "").strip().lower() in TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=None)
def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a TCP connection to url's host opens within `timeout`, else the reason (cached per process)."""
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{u.hostname}:{port} cannot be reached ({type(e).__name__}: {e})"


def hub_down() -> str | None:
    """Why the hub cannot be reached now; None when it answers, or when HF_HUB_OFFLINE /
    HF_DATASETS_OFFLINE is set (datasets then reads its cache of an earlier download, at once)."""
    return None if hub_offline() else unreachable(hub_endpoint())


def hub_unreachable() -> str | None:
    """None when the hub can be used, else why not (offline by choice, or no connection)."""
    if hub_offline():
        return "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    return unreachable(hub_endpoint())
