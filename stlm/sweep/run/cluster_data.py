"""A sweep's data on a cluster: each corpus tokenized once, then copied to the nodes, never re-tokenized.

A local sweep prepares its corpora in the driver, into the cache its trials read
(run/data.py, prepare_data_locally). On a cluster every node has its own cache (~/.cache/stlm), so:

    the driver (on the head)   publish(sweep, store): prepare() each distinct (data, tokenizer) once,
                               in the driver's own cache, and copy the finished directory (shards,
                               manifest, a trained BPE) to <store>/<cache dir name>/
    each Ray Train worker      localize(cfg, store): copy that directory into this node's cache under
                               prepare()'s own lock, unless a trusted copy is there; prepare() then
                               finds a complete cache and tokenizes nothing

store is <experiment dir>/data: storage every node already reads (NFS, or an s3:// URI through
pyarrow's filesystems). The manifest is copied last, as prepare() writes it last: a directory
without one is incomplete and is copied again. A node's copy is checked against the checksums in
the manifest before it replaces anything: a copy damaged in the store or on the way stops the
trial with one paragraph naming the store's file, and is never trained on. A node copies a
corpus once: its trials find the local copy trusted. The build_id in the manifest travels with
the copies, so the tokenizations of a sweep can be counted afterwards: one build_id per corpus.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from filelock import FileLock

from stlm.data import prepare
from stlm.data.prepare import cache_location
from stlm.data.shards import trusted_manifest, verify_cache
from stlm.data.sources import cache_root
from stlm.errors import StlmError
from stlm.sweep.resilience.storage import copy_file, filesystem, read_fs_json
from stlm.sweep.run.data import distinct_corpora

log = logging.getLogger("stlm.data")
SHARDS = ("train.bin", "val.bin", "manifest.json")  # manifest last: its presence means complete


def _bpe_files(cfg, tokenizer) -> list[Path]:
    """The trained BPE file(s) in this machine's cache that are `tokenizer` (found by identity)."""
    if cfg.model.tokenizer != "bpe":
        return []  # gpt2's vocabulary ships with the package, bytes need nothing
    out = []
    for f in sorted((cache_root(cfg.data) / "tokenizers").glob(f"bpe-{tokenizer.vocab_size}-*.json")):
        try:
            if json.loads(f.read_text()).get("identity") == tokenizer.identity:
                out.append(f)
        except (OSError, ValueError):
            continue
    return out


def publish(sweep, store: str, log=print) -> list[str]:
    """Prepare every distinct corpus of the sweep here (once) and copy it to `store`; the names copied."""
    fs, base = filesystem(store)
    names = []
    for arm in distinct_corpora(sweep):
        t0 = time.time()
        data = prepare(arm.cfg)
        dest = f"{base}/{data.cache_path.name}"
        there = read_fs_json(fs, f"{dest}/manifest.json")
        if there and there.get("build_id") == data.manifest["build_id"]:
            log(f"data for arm {arm.name} already in {store} ({data.cache_path.name})")
            continue
        t1 = time.time()
        fs.create_dir(f"{dest}/tokenizers", recursive=True)
        local = filesystem(str(data.cache_path))[0]
        for f in _bpe_files(arm.cfg, data.tokenizer):
            copy_file(local, str(f), fs, f"{dest}/tokenizers/{f.name}")
        for name in SHARDS:
            copy_file(local, str(data.cache_path / name), fs, f"{dest}/{name}")
        names.append(data.cache_path.name)
        tokens = sum(s["tokens"] for s in data.manifest["splits"].values())
        log(
            f"data for arm {arm.name} ({arm.cfg.data.source}, {arm.cfg.model.tokenizer}): {tokens:,} tokens ready in "
            f"{t1 - t0:.1f}s, copied to {store} in {time.time() - t1:.1f}s; every node copies it once"
        )
    return names


def localize(cfg, store: str) -> bool:
    """Copy the published cache of cfg's corpus into this node's cache unless a trusted copy is there
    (True when it copied). Nothing published (a local sweep): prepare() tokenizes on this node."""
    import pyarrow.fs as pafs  # lazy: pyarrow only on a node that copies data

    fs, base = filesystem(store)

    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        return False
    if cfg.model.tokenizer == "bpe":  # prepare() needs the tokenizer before it can name the cache
        tok_dir = cache_root(cfg.data) / "tokenizers"
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if (
                info.type == pafs.FileType.File
                and info.path.rsplit("/", 2)[-2] == "tokenizers"
                and not (tok_dir / info.base_name).is_file()
            ):
                tok_dir.mkdir(parents=True, exist_ok=True)
                tmp = tok_dir / f".{info.base_name}.{uuid.uuid4().hex[:8]}"
                copy_file(fs, info.path, pafs.LocalFileSystem(), str(tmp))
                os.replace(tmp, tok_dir / info.base_name)
    final, content, key = cache_location(cfg)
    if trusted_manifest(final, content, key) is not None:
        return False
    src = f"{base}/{final.name}"
    if read_fs_json(fs, f"{src}/manifest.json") is None:
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f"{final.name}.lock")):  # prepare()'s lock: it waits for this copy
        if trusted_manifest(final, content, key) is not None:
            return False
        t0 = time.time()
        tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # prepare() clears these
        tmp.mkdir()
        try:
            for name in SHARDS:
                copy_file(fs, f"{src}/{name}", pafs.LocalFileSystem(), str(tmp / name))
            _, damage = verify_cache(tmp, content, key)
            if damage:
                # named by the store's path: the temporary copy is removed below
                raise StlmError(
                    f"The data copied to this node is damaged: {damage.replace(str(tmp), src)}. Nothing was "
                    f"trained on it. Delete {src} so that the next run publishes an intact copy, and rerun."
                )
            if final.exists():  # an incomplete or stale copy under the same name
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("copied %s from %s to this node in %.1fs", final.name, store, time.time() - t0)
    return True
