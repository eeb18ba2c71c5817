"""Checkpoints: everything needed to continue a run bit for bit, written atomically.

A checkpoint is a directory `<out_dir>/<run_name>/step_000200/`:

    model.pt      the model's state_dict (weights only; what eval/generate load)
    trainer.pt    optimizer, scheduler, step, tokens, elapsed time, last metrics, and per rank
                  the RNG states (python, numpy, torch, cuda) and the data position (batcher state)
    config.yaml   the resolved config of the run
    meta.json     step, tokenizer name + identity, world size, and each file's size and BLAKE2b checksum

It is written to a hidden temporary directory beside it (every file fsynced, meta.json last) and
renamed into place, so a crash or a full disk mid-write never leaves a half checkpoint that --resume
would pick up. Loading verifies sizes and checksums: a damaged file is a one-paragraph
CorruptCheckpointError naming the file and the step, and a run directory resolves to its newest
intact checkpoint (the skipped ones are named). A run keeps its newest train.keep_checkpoints (2)
intact checkpoints, so there is one to fall back to. In a sweep the same directory is handed to
Ray Train, which moves it into its storage (stlm/sweep/run/worker.py): that persisted copy is the only one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from stlm.atomic import disk_full_guard, fsync_dir, replace_dir
from stlm.config import Config, build_config, dump_yaml
from stlm.errors import StlmError
from stlm.models import build_model
from stlm.tokenizers import load_tokenizer

STEP_NAME = re.compile(r"^step_(\d+)(?:-[0-9a-f]+)?$")  # step_000040, or a sweep trial's step_000040-3fa2c1d0
CHECKSUM = "blake2b"  # 16-byte BLAKE2b of each file, in meta.json; about 1 GB/s, so a 50M checkpoint costs ~0.6 s


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # a worker sees only its own GPU: restore the first state on it
            torch.cuda.set_rng_state(cuda[0])


# --------------------------------------------------------------------------- writing


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _write_file(path: Path, write) -> dict:
    """write(f) into `path`, fsynced; (size, checksum) for meta.json."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, CHECKSUM: _digest(path)}


def save_checkpoint(
    path: str | os.PathLike, *, model_state: dict, trainer_state: dict, cfg: Config, meta: dict, then: str | None = None
) -> Path:
    """Write a checkpoint directory atomically: files fsynced into a temp dir, meta.json (with every
    file's size and checksum) last, then one rename. A full disk raises DiskFullError and leaves
    no temp dir behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    needed = _state_bytes(model_state) * 3  # weights + Adam's two moments: roughly the checkpoint's size
    try:
        with disk_full_guard(path, needed, then):
            tmp.mkdir()
            files = {
                "model.pt": _write_file(tmp / "model.pt", lambda f: torch.save(model_state, f)),
                "trainer.pt": _write_file(tmp / "trainer.pt", lambda f: torch.save(trainer_state, f)),
                "config.yaml": _write_file(tmp / "config.yaml", lambda f: f.write(dump_yaml(cfg).encode())),
            }
            body = json.dumps({**meta, "written_at": time.time(), "files": files}, indent=2).encode()
            _write_file(tmp / "meta.json", lambda f: f.write(body))
            fsync_dir(tmp)
            replace_dir(tmp, path)  # re-writing the same step (e.g. a resumed run) swaps the old one out
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _verified[str(path)] = _stamp(path)
    return path


def _state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))


def step_of(path: str | os.PathLike) -> int | None:
    """The step in a checkpoint directory's name (step_000040, or a sweep's step_000040-3fa2c1d0)."""
    m = STEP_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `run_dir` (a meta.json was written), oldest first; not yet verified."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in run_dir.iterdir()
        if (m := STEP_NAME.match(p.name)) and (p / "meta.json").is_file()
    ]
    return [p for _, p in sorted(found)]


# --------------------------------------------------------------------------- verifying


class CorruptCheckpointError(StlmError):
    """A checkpoint file is missing, truncated or altered (its size or checksum differs from meta.json)."""


_verified: dict[str, tuple] = {}  # path -> meta.json stamp of a checkpoint already checked in this process


def _stamp(path: Path) -> tuple:
    """Identity of every file of the checkpoint as the filesystem sees it: a change to any means re-verify."""
    return tuple(
        sorted(
            (f.name, st.st_ino, st.st_size, st.st_mtime_ns) for f in path.iterdir() if f.is_file() and (st := f.stat())
        )
    )


def verify_checkpoint(path: str | os.PathLike, *, full: bool = True) -> None:
    """Raise CorruptCheckpointError (naming the file and the step) unless every file of the checkpoint
    is there with the size and checksum meta.json recorded. full=False checks sizes only (cheap)."""
    path = Path(path)
    step = step_of(path)
    where = f"checkpoint {str(path)!r} (step {step if step is not None else '?'})"
    if full:
        with contextlib.suppress(OSError):
            if _verified.get(str(path)) == _stamp(path):
                return
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise CorruptCheckpointError(f"The {where} has no meta.json: it was never completed.") from None
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"The {where} has an unreadable meta.json ({e}).") from None
    files = meta.get("files") or {name: None for name in ("model.pt", "trainer.pt", "config.yaml")}  # older layout
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpointError(f"The {where} is missing {name}; it cannot be loaded.")
        if want is None:
            continue
        size = f.stat().st_size
        if size != want["bytes"]:
            raise CorruptCheckpointError(
                f"The {where} is damaged: {name} has {size:,} bytes, {want['bytes']:,} were written (truncated or "
                "overwritten)."
            )
        if full and _digest(f) != want[CHECKSUM]:
            raise CorruptCheckpointError(
                f"The {where} is damaged: {name} does not match the checksum recorded when it was written."
            )
    if full:
        _verified[str(path)] = _stamp(path)


def intact(path: str | os.PathLike, *, full: bool = True) -> str | None:
    """None if the checkpoint verifies, else why not."""
    try:
        verify_checkpoint(path, full=full)
        return None
    except CorruptCheckpointError as e:
        return str(e)


def newest_intact(candidates: list[Path], say=None, fetch=None) -> Path | None:
    """The newest checkpoint of `candidates` (oldest first) that verifies; each one skipped is named
    through say(message). fetch(path) brings a candidate here first (downloaded from an object store)."""
    skipped = []
    for p in reversed(candidates):
        if fetch is not None:
            p = fetch(p)
        why = intact(p)
        if why is None:
            if skipped and say is not None:
                say(f"note: {' '.join(skipped)} Continuing from the newest intact checkpoint, {p} (step {step_of(p)}).")
            return p
        skipped.append(why)
    if skipped and say is not None:
        say(f"note: {' '.join(skipped)} No intact checkpoint is left.")
    return None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint of a run directory (a damaged newer one is named on stderr and skipped)."""
    return newest_intact(list_checkpoints(run_dir), say=_stderr)


def prune_choice(steps: list[tuple[int, bool]], current: int, keep: int) -> list[int]:
    """Which checkpoints to delete after step `current` was written: every one ahead of it (a stale
    leftover of a run that went further before it was rolled back: never the one to resume from),
    every damaged one, and the intact ones beyond the newest `keep` (the current one included).
    steps: (step, intact) of every checkpoint in the run directory."""
    ahead = [s for s, _ in steps if s > current]
    damaged = [s for s, ok in steps if s <= current and not ok and s != current]
    good = sorted(s for s, ok in steps if s <= current and (ok or s == current))
    return sorted(ahead + damaged + good[:-keep] if keep > 0 else ahead + damaged + good)


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, current: int | None = None) -> list[int]:
    """Apply prune_choice to `run_dir` (called by the run's only writer right after writing step
    `current`); also drop temp dirs a crashed writer left behind. Returns the steps deleted."""
    run_dir = Path(run_dir)
    ckpts = {step_of(p): p for p in list_checkpoints(run_dir)}
    if current is None:
        current = max(ckpts, default=0)
    gone = prune_choice([(s, intact(p, full=False) is None) for s, p in ckpts.items()], current, keep)
    for s in gone:
        shutil.rmtree(ckpts[s], ignore_errors=True)
    for p in run_dir.glob(".step_*"):
        shutil.rmtree(p, ignore_errors=True)
    return gone


# --------------------------------------------------------------------------- reading


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory itself (verified), or a run directory (its newest intact checkpoint)."""
    p = Path(path).expanduser()
    if (p / "meta.json").is_file() or step_of(p) is not None and p.is_dir():
        verify_checkpoint(p)
        return p
    ckpts = list_checkpoints(p)
    latest = newest_intact(ckpts, say=_stderr)
    if latest is None:
        if ckpts:
            raise CorruptCheckpointError(f"No intact checkpoint in {str(p)!r}: {intact(ckpts[-1])}")
        raise StlmError(
            f"No checkpoint at {str(p)!r}: expected a step_NNNNNN directory with meta.json, "
            f"or a run directory (train.out_dir/run_name) that holds some."
        )
    return latest


def read_meta(path: str | os.PathLike) -> dict:
    return json.loads((resolve_checkpoint(path) / "meta.json").read_text())


def read_config(path: str | os.PathLike) -> Config:
    p = resolve_checkpoint(path) / "config.yaml"
    return build_config(yaml.safe_load(p.read_text()) or {})


def _load(path, name: str, weights_only: bool):
    ckpt = resolve_checkpoint(path)
    try:
        return torch.load(ckpt / name, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # an older checkpoint without checksums, damaged: still one paragraph
        raise CorruptCheckpointError(
            f"The checkpoint {str(ckpt)!r} (step {step_of(ckpt)}) has an unreadable {name} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})."
        ) from None


def load_trainer_state(path: str | os.PathLike) -> dict:
    return _load(path, "trainer.pt", weights_only=False)  # our own pickle (RNG tuples, numpy state)


def load_model_state(path: str | os.PathLike) -> dict:
    return _load(path, "model.pt", weights_only=True)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, Config, tokenizer) from a checkpoint or run directory."""
    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    meta = read_meta(ckpt)
    tokenizer = load_tokenizer(cfg.model, cfg.data)  # cached; a trained BPE is rebuilt from the same corpus if missing
    want = meta.get("tokenizer", {}).get("identity")
    if want is not None and tokenizer.identity != want:
        raise StlmError(
            f"The tokenizer loaded for {str(ckpt)!r} ({tokenizer.name}, identity {tokenizer.identity}) is not the "
            f"one the model was trained with (identity {want}); check data.cache_dir / $STLM_CACHE."
        )
    model = build_model(cfg.model, tokenizer)
    model.load_state_dict(load_model_state(ckpt))
    model.to(device).eval()
    return model, cfg, tokenizer
