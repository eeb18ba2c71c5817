"""A trial's Ray Train checkpoints: persisted whole, the registered ones found again, the newest intact one
resumed, strays discarded."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import torch

from stlm.atomic import disk_full_guard, fsync_dir
from stlm.sweep.resilience import layout
from stlm.train.checkpoint import CorruptCheckpointError, intact, newest_intact, step_dir_name, step_of


def persisted_name(step: int) -> str:
    """A persisted checkpoint's directory name: the step, plus a token so that a step written again
    after a fallback never lands on (and is never deleted as) an older directory of the same step."""
    return f"{step_dir_name(int(step))}-{uuid.uuid4().hex[:8]}"


def persist_directory(src: Path, dest: Path) -> None:
    """Move a finished checkpoint directory to `dest` atomically: a rename on the same filesystem,
    else a copy into a hidden temp directory there, renamed once complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}.tmp")
        size = sum(f.stat().st_size for f in src.iterdir())
        try:
            with disk_full_guard(dest, size):
                shutil.copytree(src, tmp)
                os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(src, ignore_errors=True)
    fsync_dir(dest.parent)


def registered_checkpoints(storage: Path, latest: str | None) -> list[Path]:
    """The checkpoints Ray Train registered for this run (its snapshot, plus the latest it hands back),
    oldest first, none past the latest."""
    if latest is None:
        return []
    names = {Path(latest).name}
    try:
        names |= set(re.findall(r"step_\d+-[0-9a-f]+", (storage / layout.SNAPSHOT).read_text()))
    except OSError:
        pass
    top = step_of(latest)
    found = [storage / n for n in names if top is not None and (step_of(n) or 0) <= top] or [Path(latest)]
    return sorted(found, key=lambda p: (step_of(p) or 0, p == Path(latest)))


def resume_point(storage: Path, latest: str | None, say=None, fetch=None) -> Path | None:
    """The registered checkpoint to continue from: the newest intact one (a damaged one is named and
    skipped); None for a fresh run. No intact one left is a CorruptCheckpointError. `fetch(path)`
    brings a candidate here before it is checked (an object store's checkpoint)."""
    candidates = registered_checkpoints(storage, latest)
    if not candidates:
        return None
    start = newest_intact(candidates, say=say, fetch=fetch)
    if start is None:
        raise CorruptCheckpointError(
            f"Every checkpoint Ray Train registered for this trial is damaged, so it "
            f"cannot continue: {intact(candidates[-1])}"
        )
    return start


def discard_unregistered(storage: Path, latest: str | None, staging: Path, say=None, remote=None) -> None:
    """Delete this run's checkpoints that Ray Train never registered (persisted after its latest one by
    an attempt whose driver had stopped listening, or left in the local staging directory by a killed
    worker) and half-copied temp directories. remote=(Storage, run dir): the run is in an object store
    (storage is then the local directory its snapshot was downloaded to)."""
    registered = set(registered_checkpoints(storage, latest))
    if remote is not None:  # the bucket's step_* "directories" (an upload cut short is one too)
        st, rel = remote
        names = {p.name for p in registered}
        gone = [n for n in st.names(rel) if (n.startswith("step_") and n not in names) or n.startswith(".step_")]
        for n in gone:
            st.delete(f"{rel}/{n}")
        stale = [Path(st.uri) / rel / n for n in gone]
    else:
        stale = [p for p in storage.glob("step_*") if p not in registered] + list(storage.glob(".step_*"))
    if staging.is_dir():
        stale += list(staging.glob("step_*")) + list(staging.glob(".step_*"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if stale and say is not None:
        say(
            f"discarded {len(stale)} checkpoint(s) Ray Train had not registered: {', '.join(p.name for p in stale)}"
            + (f" (its latest is {Path(latest).name})" if latest else "")
        )


def read_history(path: str) -> list[dict]:
    """The reports saved with a checkpoint by worker_loop, oldest first (else the checkpoint's own
    metrics, memory-mapped so the optimizer state is not read)."""
    f = Path(path) / layout.HISTORY
    if f.is_file():
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]

    try:
        state = torch.load(Path(path) / "trainer.pt", map_location="cpu", weights_only=False, mmap=True)
        metrics = state.get("metrics")
        return [dict(metrics)] if metrics else []
    except Exception:  # another checkpoint layout: nothing to replay
        return []
