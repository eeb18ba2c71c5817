"""Shared test fixtures: the real public data beside the repo, and an isolated cache. The session is
offline: no socket to a host but this machine, and every process it starts is told so."""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from pathlib import Path

import pytest
import torch
from pytest_socket import SocketBlockedError

from stlm.offline import is_local, local_addresses

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Set at import, before any test starts a process: subprocesses, `ray start` and Ray's workers inherit
# them. stlm's probes then try no outside host; datasets, huggingface_hub and transformers read only
# their caches; Ray sends no usage report.
OFFLINE_ENV = {
    "STLM_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
os.environ.update(OFFLINE_ENV)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """pytest-socket's allow-list, before it reads it: loopback, and this machine's own addresses as
    found now (a local Ray gives its node the interface's address, not 127.0.0.1). A connect to any
    other host in the test process raises SocketConnectBlockedError, naming the host."""
    if not config.pluginmanager.hasplugin("socket"):
        raise pytest.UsageError("the tests need pytest-socket, which keeps them offline: pip install -e '.[dev]'")
    if not config.option.allow_hosts:
        config.option.allow_hosts = ",".join(["127.0.0.0/8", "::1", "localhost", *sorted(local_addresses())])
    config.option.allow_unix_socket = True  # Ray's and asyncio's own local sockets
    socket.getaddrinfo = _local_names_only(socket.getaddrinfo)


def pytest_unconfigure(config):
    socket.getaddrinfo = getattr(socket.getaddrinfo, "__wrapped__", socket.getaddrinfo)


def _local_names_only(getaddrinfo):
    """A name lookup asks a DNS server before any connect that pytest-socket could refuse, and on a
    machine without DNS it fails as an OSError that a probe reports as "cannot be reached": a test
    reaching out would pass unseen. Names of this machine (localhost, its hostname) and IP literals
    resolve; any other name raises SocketBlockedError, which no `except OSError` swallows."""

    @functools.wraps(getaddrinfo)
    def guarded(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name and not is_local(name):
            try:
                ipaddress.ip_address(name.strip("[]").split("%")[0])
            except ValueError:
                raise SocketBlockedError(
                    f"A test tried to resolve {name!r}: the tests are offline (tests/conftest.py)"
                ) from None
        return getaddrinfo(host, *args, **kwargs)

    return guarded


# The test files that take longest, longest first (one CI run's --durations, summed per file). .ci/run gives xdist
# --dist loadfile --no-loadscope-reorder: each process takes the next whole file in collection order, and with the
# longest files first the processes finish together (longest processing time first). xdist's own order, by
# number of tests, left one-test files of two minutes for the end.
LONGEST_FILES = (
    "test_faults.py",
    "test_cluster.py",
    "test_sweep_e2e.py",
    "test_storage.py",
    "test_quickstart.py",
    "test_sweep_scales.py",
    "test_legacy_experiment_dir.py",
    "test_lost_head.py",
    "test_preflight.py",
    "test_checkpoint.py",
    "test_benchmarks.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real BLiMP, HellaSwag, ARC, ..., TinyStories). CI always has it: a checkout without
    it fails the tests that need it, naming the path, instead of passing them with fewer checks."""
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"the real test data is missing: {SHARED_DATA} does not exist (see its SOURCES.md; tests never download)",
            pytrace=False,
        )
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Token caches and trained tokenizers go to a per-session temp dir, never ~/.cache."""
    cache = tmp_path_factory.mktemp("stlm_cache")
    old = os.environ.get("STLM_CACHE")
    os.environ["STLM_CACHE"] = str(cache)
    os.environ.setdefault("STLM_QUIET", "1")
    # Ray Train's controller collects a report when it polls; the tests' tiny trials report every few ms, so at the
    # product's 0.5 s each report waited ~0.45 s (a 1-trial sweep: 39 s -> 32 s at 0.1 s). Subprocesses inherit it.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    yield cache
    if old is None:
        os.environ.pop("STLM_CACHE", None)
    else:
        os.environ["STLM_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Test models are tiny: a second intra-op thread only spins, and on a busy 2-core machine it
    made them 5-30x slower. Tests that measure threading set their own count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
