"""Writes a reader can trust: temp file (or directory) + fsync + rename, and one error for a full disk.

    write_atomic(path, text_or_bytes)      the file is the old one or the new one, never half of either
    with disk_full_guard(path, needed):    OSError ENOSPC / EDQUOT -> DiskFullError (a StlmError)
        ...

A crash or a full disk mid-write leaves at most a hidden `.NAME.tmp-PID` beside the target, which
the failed writer removes itself when it can (and the next writer of that target otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from stlm.errors import StlmError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(StlmError):
    """A write failed because the disk (or quota) is full; what was written before is intact."""


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: str | os.PathLike) -> int | None:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full_error(path: str | os.PathLike, needed: int | None, then: str | None = None) -> DiskFullError:
    then = then or "then run the same command again with --resume: it continues from the last complete checkpoint"
    return DiskFullError(
        f"The disk holding {path} is full: {human_bytes(free_bytes(path))} free, and this write needs about "
        f"{human_bytes(needed)}. Nothing complete was lost (the half-written file was removed). Free some space, "
        f"{then}."
    )


@contextlib.contextmanager
def disk_full_guard(path: str | os.PathLike, needed: int | None = None, then: str | None = None):
    try:
        yield
    except OSError as e:
        if e.errno in DISK_FULL:
            raise disk_full_error(path, needed, then) from None
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: str | bytes, *, then: str | None = None) -> None:
    """Replace `path` with `data` atomically and durably; a full disk raises DiskFullError."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with disk_full_guard(path, len(raw), then):
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (best effort: some filesystems refuse)
        fsync_dir(path.parent)


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished directory `tmp` to `path`, replacing what is there: the old one is first
    renamed aside, so a reader sees the old or the new directory, never a mix."""
    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
