"""A prepared cache's shards checked before use: the sizes, every token id inside the vocabulary, and each
shard's content against the checksum recorded when it was built (prepare.py's docstring: why, and what it costs).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import xxhash

CHECKSUM = "xxh3_128"  # 0.04 s/GB on 2 cores, blake2b 1.16 s/GB (benchmarks/bench_checksum.py)
SCAN_BYTES = 1 << 25  # check a shard 32 MB at a time

log = logging.getLogger("stlm.data")


def new_digest():
    """The running hash of a shard's bytes; `recorded(digest)` is what a manifest keeps of it."""
    return xxhash.xxh3_128()


def recorded(digest) -> str:
    """'xxh3_128:<hex>': the algorithm named with the value, so a manifest says how to check it."""
    return f"{CHECKSUM}:{digest.hexdigest()}"


def verify_cache(path: Path, content: dict, key: str) -> tuple[dict | None, str | None]:
    """(the manifest of a complete, intact cache for exactly `content`, None), or (None, why it was
    rejected) where a shard is damaged, or (None, None) where the cache is missing or partial."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None, None
    if any(manifest.get(k) != v for k, v in content.items()):
        return None, None
    itemsize = np.dtype(content["dtype"]).itemsize
    vocab = content["tokenizer"]["vocab_size"]
    adopted = []
    for split in ("train", "val"):
        shard = path / f"{split}.bin"
        try:
            n = int(manifest["splits"][split]["tokens"])
            if n <= 0 or shard.stat().st_size != n * itemsize:
                return None, None
            checksum, top = scan_shard(shard, content["dtype"])
        except (KeyError, TypeError, ValueError, OSError):
            return None, None
        if top >= vocab:
            return None, f"{shard} holds the token id {top}, outside the vocabulary of {vocab}"
        recorded = manifest["splits"][split].get("checksum")
        if recorded is None:
            manifest["splits"][split]["checksum"] = checksum
            adopted.append(shard.name)
        elif recorded != checksum:
            return None, (
                f"{shard} does not match the checksum recorded when it was built ({recorded}, now {checksum}): "
                "it was changed or damaged since"
            )
    if adopted:
        _adopt(path, manifest, adopted)
    return manifest, None


def _adopt(path: Path, manifest: dict, shards: list[str]) -> None:
    """Record the checksums of a cache built before they existed (see the module docstring)."""
    tmp = path / f".manifest-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    try:
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / "manifest.json")
        log.info("%s: recorded the checksums of %s (a cache built before checksums)", path, ", ".join(shards))
    except OSError as e:  # a read-only cache: checked by size and ids only, as before
        tmp.unlink(missing_ok=True)
        log.warning("%s: could not record the checksums of %s (%s)", path, ", ".join(shards), e)


def trusted_manifest(path: Path, content: dict, key: str) -> dict | None:
    """The manifest of a complete cache for exactly `content`, or None (missing, partial or damaged)."""
    manifest, damage = verify_cache(path, content, key)
    if damage:
        log.warning("%s: not used, the cache is rebuilt", damage)
    return manifest


def scan_shard(path: Path, dtype: str) -> tuple[str, int]:
    """(the shard's checksum as recorded in a manifest, its largest token id; -1 if empty), in one
    pass. The id check catches an id of 65535 in a 2048-token vocabulary that would crash or poison
    training; the checksum catches the rest (valid ids swapped or changed, the size unchanged).
    Over a memmap: read() into a buffer copied every byte out of the page cache, 6x the time of
    hashing it in place (benchmarks/bench_checksum.py)."""
    digest = new_digest()
    top = -1
    if path.stat().st_size:  # np.memmap refuses an empty file
        tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        step = SCAN_BYTES // tokens.itemsize
        for i in range(0, len(tokens), step):
            part = tokens[i : i + step]
            digest.update(part)
            top = max(top, int(part.max()))
    return recorded(digest), top
