"""Shared test fixtures: the real public data beside the repo, and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real BLiMP, HellaSwag, ARC, ..., TinyStories); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
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
