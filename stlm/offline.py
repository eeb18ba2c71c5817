"""Working without a network: may stlm contact a host, and does it answer?

    why = offline_reason(download=True)   # "STLM_OFFLINE=1 is set" (or an HF_*_OFFLINE), else None
    why = unreachable(url)                # None, or why url cannot be used now (no connect when offline)
    if hub_offline(): ...                 # HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: datasets reads its cache
    why = hub_down()                      # the hub: None when it answers or datasets reads its cache

Every probe stlm makes goes through unreachable(), the one place that honours the offline variables:
- STLM_OFFLINE=1: no host but this machine's own (loopback, its interfaces' addresses, its hostname)
  is contacted: not the hub, not the GPT-2 vocabulary's download, not a tracking server or S3
  endpoint on another host. A server on this machine is still probed.
- HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1: the downloads (the hub, the GPT-2 vocabulary) are not
  tried; servers the user configured elsewhere (a cluster's MLflow) still are.
An offline probe answers at once with the variable that forbade it; callers add OFFLINE_HINT.

`datasets` retries an unreachable hub for about 30 s before it gives up; one TCP connect with a
short timeout answers the same question at once, so `stlm eval`, data preparation and the sweep's
pre-flight ask here first and fail with the offline alternatives instead (README, "Offline").
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
TRUE = ("1", "true", "yes", "on")
HUB_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
OFFLINE_HINT = (
    "Offline, point data.source at local .txt/.jsonl/.parquet files (or data.source=generated), "
    "eval.data_dir / --data-dir / $STLM_BENCHMARKS at a benchmark directory laid out like "
    "shared/data/benchmarks, and data.gpt2_vocab_file / $STLM_GPT2_VOCAB at a gpt2.tiktoken file; "
    'a token cache prepared on a machine with network ($STLM_CACHE) is reused as it is (README, "Offline").'
)


def _is_set(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in TRUE


def hub_offline() -> bool:
    """The user said so: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set to a true value."""
    return any(_is_set(k) for k in HUB_VARS)


def offline_reason(download: bool = False) -> str | None:
    """Which variable forbids contacting outside hosts, or None. STLM_OFFLINE forbids every outside
    host; for a download (the hub, the GPT-2 vocabulary) HF_HUB_OFFLINE / HF_DATASETS_OFFLINE do too."""
    for var in ("STLM_OFFLINE", *(HUB_VARS if download else ())):
        if _is_set(var):
            return f"{var}={os.environ[var].strip()} is set"
    return None


@functools.cache
def local_addresses() -> frozenset[str]:
    """This machine's own IP addresses: every interface's (Linux's /proc, read without any network)
    and what its hostname resolves to. A local Ray gives its node one of these (not only loopback)."""
    found = {"127.0.0.1", "::1"}
    try:  # IPv4: the routing table's local /32 entries
        prev = ""
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            if "/32 host LOCAL" in line:
                found.add(prev.split()[-1])
            prev = line
    except (OSError, IndexError):
        pass
    try:  # IPv6: one address a line, 32 hex digits first
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            found.add(str(ipaddress.IPv6Address(int(line.split()[0], 16))))
    except (OSError, ValueError, IndexError):
        pass
    try:
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return frozenset(found)


def is_local(host: str | None) -> bool:
    """host is this machine: localhost, its hostname, a loopback address or one of its own addresses."""
    if not host:
        return False
    h = host.strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost") or h == socket.gethostname().lower():
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    return ip.is_loopback or str(ip) in local_addresses()


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S, *, download: bool = False) -> str | None:
    """None if a TCP connection to url's host opens within `timeout`, else the reason. Offline
    (offline_reason(download)) a host other than this machine is not tried at all."""
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    why = offline_reason(download)
    if why and not is_local(u.hostname):
        return f"{u.hostname}:{port} was not tried: {why} (no host but this machine is contacted)"
    return _connect(u.hostname, port, timeout)


@functools.cache
def _connect(host: str, port: int, timeout: float) -> str | None:
    """One TCP connect, its answer kept for the process (a sweep asks per arm)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port} cannot be reached ({type(e).__name__}: {e})"


unreachable.cache_clear = _connect.cache_clear  # a test that changes what answers starts afresh


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_down() -> str | None:
    """Why the hub cannot be reached now; None when it answers, or when HF_HUB_OFFLINE /
    HF_DATASETS_OFFLINE is set (datasets then reads its cache of an earlier download, at once).
    STLM_OFFLINE alone does not tell datasets to stay off the hub, so then the hub is down."""
    return None if hub_offline() else unreachable(hub_endpoint(), download=True)


def hub_unreachable() -> str | None:
    """None when the hub can be used, else why not (offline by choice, or no connection)."""
    if hub_offline():
        return "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    return unreachable(hub_endpoint(), download=True)
