"""Checkpoints: everything needed to continue a run bit for bit, written atomically.

A checkpoint is a directory `<out_dir>/<run_name>/step_000200/`:

    model.pt      the model's state_dict (weights only; what eval/generate load)
    trainer.pt    optimizer, scheduler, step, tokens, elapsed time, last metrics, and per rank
                  the RNG states (python, numpy, torch, cuda) and the data position (batcher state)
    config.yaml   the resolved config of the run
    meta.json     step, tokenizer name + identity, world size

It is written to a hidden temporary directory beside it and renamed into place, so a crash
mid-write never leaves a half checkpoint that --resume would pick up.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from stlm.config import Config, build_config, dump_yaml
from stlm.errors import StlmError

STEP_DIR = re.compile(r"^step_(\d+)$")


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


def save_checkpoint(path: str | os.PathLike, *, model_state: dict, trainer_state: dict, cfg: Config, meta: dict) -> Path:
    """Write a checkpoint directory atomically (temp dir, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(model_state, tmp / "model.pt")
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "config.yaml").write_text(dump_yaml(cfg))
    (tmp / "meta.json").write_text(json.dumps({**meta, "written_at": time.time()}, indent=2))
    if path.exists():  # re-writing the same step (e.g. a resumed run): swap the old one out first
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    return path


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `run_dir`, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "meta.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Keep the newest `keep` checkpoints; also drop temp dirs a crashed writer left behind
    (called by the run's only writer right after its own write completed)."""
    run_dir = Path(run_dir)
    for p in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for p in run_dir.glob(".step_*"):
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory itself, or a run directory (its latest checkpoint)."""
    p = Path(path).expanduser()
    if (p / "meta.json").is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise StlmError(f"No checkpoint at {str(p)!r}: expected a step_NNNNNN directory with meta.json, "
                        f"or a run directory (train.out_dir/run_name) that holds some.")
    return latest


def read_meta(path: str | os.PathLike) -> dict:
    return json.loads((resolve_checkpoint(path) / "meta.json").read_text())


def read_config(path: str | os.PathLike) -> Config:
    p = resolve_checkpoint(path) / "config.yaml"
    return build_config(yaml.safe_load(p.read_text()) or {})


def load_trainer_state(path: str | os.PathLike) -> dict:
    # our own pickle (RNG tuples, numpy state): not a weights-only file
    return torch.load(resolve_checkpoint(path) / "trainer.pt", map_location="cpu", weights_only=False)


def load_model_state(path: str | os.PathLike) -> dict:
    return torch.load(resolve_checkpoint(path) / "model.pt", map_location="cpu", weights_only=True)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, Config, tokenizer) from a checkpoint or run directory."""
    from stlm.models import build_model
    from stlm.tokenizers import load_tokenizer

    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    meta = read_meta(ckpt)
    tokenizer = load_tokenizer(cfg.model, cfg.data)  # cached; a trained BPE is rebuilt from the same corpus if missing
    want = meta.get("tokenizer", {}).get("identity")
    if want is not None and tokenizer.identity != want:
        raise StlmError(f"The tokenizer loaded for {str(ckpt)!r} ({tokenizer.name}, identity {tokenizer.identity}) is not the "
                        f"one the model was trained with (identity {want}); check data.cache_dir / $STLM_CACHE.")
    model = build_model(cfg.model, tokenizer)
    model.load_state_dict(load_model_state(ckpt))
    model.to(device).eval()
    return model, cfg, tokenizer
