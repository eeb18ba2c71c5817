"""Tokenize a corpus once into memory-mapped token shards, cached and shared between runs.

    data = prepare(cfg)                 # cfg: stlm.config.Config
    data.train, data.val                # np.memmap of uint16 (uint32 when vocab > 65536)
    data.tokenizer, data.manifest, data.cache_path

Layout under the cache root (data.cache_dir, else $STLM_CACHE, else ~/.cache/stlm):

    tokenizers/bpe-<vocab>-<key>.json              trained BPEs (stlm.tokenizers)
    data/<source>-<tokenizer>-<key>/train.bin      documents, each followed by end-of-text
    data/<source>-<tokenizer>-<key>/val.bin
    data/<source>-<tokenizer>-<key>/manifest.json  written last: its presence means "complete"

<key> hashes everything that determines the tokens (source identity, split and caps,
tokenizer identity, dtype, format version), so a change of any of them is a new directory.

Safety:
- Atomic: shards and manifest are written into a temp directory, fsynced, and the
  directory is renamed into place. An interrupted preparation leaves only a temp directory,
  which is never read and is removed by the next preparation of the same key.
- Verified: a cache is trusted only if its manifest repeats the expected content fields and
  key, the shard sizes match the token counts, every token id is inside the vocabulary and each
  shard's content matches the checksum recorded when it was built; anything else is rebuilt, not
  reused (a shard damaged in place, same size and valid ids, was trained on silently: issue 28).
  Where the rebuild itself fails (a hub source offline), prepare() stops with one paragraph naming
  the damaged file, and never trains on it.
- Checked at every prepare(): each trial, and `stlm train`, reads its shards once before training.
  One pass over a memmap computes the checksum and the largest id: xxh3-128 (xxhash) at 0.04 s/GB,
  the whole check at 0.09 s/GB from the page cache on 2 cores, 0.04 s/GB more than the id check
  alone (benchmarks/RESULTS.md, "Shard checksums"); from disk, the disk's read time.
  No "verified" marker keyed by inode, mtime and size: content can change under all three (a write
  that keeps the size, with the mtime set back), and at these costs a marker would save too little.
- Caches from before checksums: a manifest without them is adopted once. Its shards still pass the
  size and id checks; their checksums are computed then and written into the manifest, and checked
  from then on. (Rebuilding instead would re-tokenize every existing corpus, hours for a large
  one, to guard against damage that happened before the upgrade; delete the directory to force it.)
- Shared: a FileLock per key makes concurrent processes (sweep trials, DDP ranks) prepare
  once; the others wait and then read the finished cache.

Tokenization runs over batches of ~1 MB of documents; the main process reads the source and
writes the results in order. The first 2M characters are tokenized in this process; only a
corpus that goes on past them starts the data.num_proc worker processes (spawned, about a
second each on 2 busy cores), once, for both splits.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import re
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock

from stlm import progress
from stlm.data.shards import new_digest, recorded, trusted_manifest, verify_cache
from stlm.data.sources import GeneratedSource, Source, cache_root, get_source, source_key, val_chars
from stlm.errors import StlmError
from stlm.tokenizers import Tokenizer, load_tokenizer

if TYPE_CHECKING:
    from stlm.config import Config

FORMAT_VERSION = 1
BATCH_CHARS = 1 << 20  # documents per worker task: about 1 MB of text
PARALLEL_MIN_CHARS = 2 * BATCH_CHARS  # below this, starting worker processes costs more than it saves
log = logging.getLogger("stlm.data")


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: np.ndarray  # np.memmap, read-only
    val: np.ndarray
    manifest: dict
    cache_path: Path


# --------------------------------------------------------------------------- workers

_worker_tok: Tokenizer | None = None
_worker_dtype: Any = None


def _init_worker(tokenizer: Tokenizer, dtype: str) -> None:
    global _worker_tok, _worker_dtype
    _worker_tok, _worker_dtype = tokenizer, np.dtype(dtype)


def _init_worker_from_file(path: str, dtype: str, parent: int) -> None:
    _exit_with_parent(parent)
    with open(path, "rb") as f:
        _init_worker(pickle.load(f), dtype)


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """A tokenization worker exits once the process that started it (pid `parent`) is gone. A spawned
    pool child holds its own copy of the task queue's pipe, so it never sees EOF: after a kill -9 of
    the driver it waited for tasks for ever (alive 3.5 minutes later, issue 20). The parent's pid comes
    from the parent: a child whose parent died while it was still importing (seconds, for a main
    script that imports Ray) would otherwise take its new parent for its own."""

    def watch() -> None:
        while os.getppid() == parent:  # checked at once too: the parent may have died during start-up
            time.sleep(poll_s)
        os._exit(1)  # re-parented: the parent died

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _encode_batch(docs: list[str]) -> tuple[np.ndarray, int, int, int]:
    """(tokens with an EOT after each document, UTF-8 bytes, characters, documents)."""
    arr = _worker_tok.encode_documents(docs, dtype=_worker_dtype)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return arr, n_bytes, sum(map(len, docs)), len(docs)


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _ordered_map(pool, fn, items: Iterable, in_flight: int) -> Iterator:
    """Ordered pool.map that reads `items` lazily (Pool.imap would pull a whole corpus into memory)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Encoder:
    """_encode_batch over batches, in order: in this process for the first PARALLEL_MIN_CHARS
    characters, then in a pool of num_proc spawned processes started at that point (small corpora
    never pay for it) and kept for the next split.

    The workers load the tokenizer from a file in `scratch`, not from the pool's initargs: a spawned
    child reads its start-up data from a pipe only after importing the main script, and a GPT-2
    tokenizer (about 1 MB pickled) would fill that pipe. A child that then dies in the import (an
    unguarded script calling prepare()) left the parent blocked on the write for ever instead of
    raising BrokenProcessPool."""

    def __init__(self, tokenizer: Tokenizer, dtype: str, num_proc: int, scratch: Path):
        self.tokenizer, self.dtype, self.num_proc = tokenizer, dtype, num_proc
        self.tok_file = scratch / "tokenizer.pickle"
        self.pool: ProcessPoolExecutor | None = None
        self.chars = 0
        _init_worker(tokenizer, dtype)

    def map(self, batches: Iterator[list[str]]) -> Iterator:
        for batch in batches:
            if self.pool is None and self.num_proc > 1 and self.chars >= PARALLEL_MIN_CHARS:
                # spawn, not fork: the caller may hold threads (torch, Ray, rayon inside rustbpe) whose locks
                # a forked child would inherit mid-use. A ProcessPoolExecutor, not a multiprocessing.Pool:
                # a worker that cannot start raises BrokenProcessPool instead of being restarted for ever.
                with open(self.tok_file, "wb") as f:
                    pickle.dump(self.tokenizer, f)
                self.pool = ProcessPoolExecutor(
                    self.num_proc,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker_from_file,
                    initargs=(str(self.tok_file), self.dtype, os.getpid()),
                )
            if self.pool is not None:
                yield from _ordered_map(
                    self.pool, _encode_batch, itertools.chain([batch], batches), in_flight=2 * self.num_proc
                )
                return
            out = _encode_batch(batch)
            self.chars += out[2]
            yield out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.tok_file.unlink(missing_ok=True)


def _tokenize_split(docs: Iterable[str], encoder: _Encoder, path: Path, cap: int | None, desc: str) -> dict:
    stats = {"tokens": 0, "bytes": 0, "chars": 0, "documents": 0}
    digest = new_digest()  # of the bytes as written: no second pass over the shard
    bar = progress.bar(total=cap, desc=desc, unit="char", unit_scale=True)
    try:
        with open(path, "wb") as f:
            for arr, n_bytes, n_chars, n_docs in encoder.map(_batches(docs)):
                data = arr.tobytes()
                f.write(data)
                digest.update(data)
                stats["tokens"] += len(arr)
                stats["bytes"] += n_bytes
                stats["chars"] += n_chars
                stats["documents"] += n_docs
                bar.update(n_chars)
            f.flush()
            os.fsync(f.fileno())
    except BrokenProcessPool as e:
        raise StlmError(
            f"The data.num_proc={encoder.num_proc} tokenization processes could not run ({e}). They are started "
            "with 'spawn', which re-imports the main script: guard it with `if __name__ == \"__main__\":`, "
            "or set data.num_proc=1."
        ) from None
    finally:
        bar.close()
    stats["checksum"] = recorded(digest)
    return stats


# --------------------------------------------------------------------------- cache


def _content(cfg: Config, source: Source, tokenizer: Tokenizer, dtype: str) -> dict:
    """Every manifest field that determines the tokens; its hash names the cache directory."""
    d = cfg.data
    return {
        "format_version": FORMAT_VERSION,
        "source": d.source,
        "subset": d.subset,
        "revision": d.revision,
        "source_key": source_key(source, d),
        "tokenizer": {
            "name": tokenizer.name,
            "identity": tokenizer.identity,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
        },
        "dtype": dtype,
        "split_seed": d.split_seed,
        "val_fraction": d.val_fraction,
        "max_chars": d.max_chars,
        "val_chars": val_chars(d),
    }


def _key(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_label(source: Source) -> str:
    """The readable start of a source's cache directory name (the key that follows it is what identifies it)."""
    name = Path(source.name).stem if source.identity()["kind"] == "local" else source.name
    return re.sub(r"[^\w.-]+", "_", name)[:40]


def _build(cfg: Config, source: Source, tokenizer: Tokenizer, content: dict, key: str, final: Path) -> dict:
    d = cfg.data
    root = final.parent
    for stale in root.glob(f".tmp-{final.name}-*"):  # left by an interrupted run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        t0 = time.time()
        splits = {}
        encoder = _Encoder(tokenizer, content["dtype"], max(1, d.num_proc), scratch=tmp)
        try:
            caps = {"train": d.max_chars, "val": val_chars(d)}
            spill = tmp / "val-documents.jsonl"  # a hashed split's val documents, met while reading train
            docs = dict(zip(caps, source.splits(caps["train"], caps["val"], spill)))
            for split, cap in caps.items():
                splits[split] = _tokenize_split(
                    docs[split], encoder, tmp / f"{split}.bin", cap, desc=f"tokenize {source.name} {split}"
                )
                if splits[split]["documents"] == 0:
                    hint = " Raise data.val_fraction or use a larger corpus." if split == "val" else ""
                    raise StlmError(f"data.source={source.name!r} gave no {split} documents.{hint}")
            spill.unlink(missing_ok=True)
        finally:
            encoder.close()
        manifest = {
            **content,
            "key": key,
            "splits": splits,
            "build_id": uuid.uuid4().hex,
            "created": time.time(),
            "seconds": round(time.time() - t0, 2),
        }
        with open(tmp / "manifest.json", "w") as f:  # last: a directory with a manifest is complete
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # an untrusted (tampered or older) cache under the same name
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "prepared %s: %s train / %s val tokens in %.1fs -> %s",
        source.name,
        splits["train"]["tokens"],
        splits["val"]["tokens"],
        manifest["seconds"],
        final,
    )
    return manifest


def _open(path: Path, manifest: dict, tokenizer: Tokenizer) -> PreparedData:
    dtype = np.dtype(manifest["dtype"])
    train = np.memmap(path / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(path / "val.bin", dtype=dtype, mode="r")
    return PreparedData(tokenizer=tokenizer, train=train, val=val, manifest=manifest, cache_path=path)


def prepare(cfg: Config) -> PreparedData:
    """Tokenized train/val token arrays for cfg.data and cfg.model.tokenizer (built once, then cached)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # We are a tokenization worker being spawned, re-running an unguarded main script that calls
        # prepare(): waiting for the lock our parent holds would deadlock. Fail, so the parent reports it.
        raise StlmError(
            "prepare() called while a worker process starts: guard the main script with "
            '`if __name__ == "__main__":` or set data.num_proc=1.'
        )
    source = get_source(cfg.data)
    if isinstance(source, GeneratedSource) and cfg.data.max_chars is None:
        raise StlmError("data.max_chars must be set for data.source=generated: the generated corpus is infinite.")
    tokenizer = load_tokenizer(cfg.model, cfg.data)
    dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
    content = _content(cfg, source, tokenizer, dtype)
    key = _key(content)
    root = cache_root(cfg.data) / "data"
    final = root / f"{cache_label(source)}-{tokenizer.name}-{key}"
    manifest = trusted_manifest(final, content, key)
    if manifest is None:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f"{final.name}.lock")):
            # built (or repaired) by another process while we waited?
            manifest, damage = verify_cache(final, content, key)
            if manifest is None:
                try:
                    manifest = _build(cfg, source, tokenizer, content, key, final)
                except Exception as e:
                    if not damage:
                        raise
                    raise StlmError(
                        f"{damage}, and the cache could not be rebuilt from data.source={cfg.data.source!r}: {e} "
                        f"Nothing was trained on it. Make the source readable again, or replace {final} with an "
                        "intact copy."
                    ) from e
    return _open(final, manifest, tokenizer)


# --------------------------------------------------------------------------- for copies made elsewhere


def cache_location(cfg: Config) -> tuple[Path, dict, str]:
    """(the directory prepare(cfg) reads and writes, the content fields its manifest must repeat, their
    key), building nothing: for copying a finished cache between machines (stlm.sweep.cluster_data)."""
    source = get_source(cfg.data)
    tokenizer = load_tokenizer(cfg.model, cfg.data)
    dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
    content = _content(cfg, source, tokenizer, dtype)
    key = _key(content)
    return cache_root(cfg.data) / "data" / f"{cache_label(source)}-{tokenizer.name}-{key}", content, key
