"""What checking a token shard costs at every trial start: the hash for the manifest's checksums, and
the whole check prepare() does (stlm.data.shards.trusted_manifest), in seconds per GB.

    python benchmarks/bench_checksum.py [--mb 256] [--rounds 9]

One shard of --mb MB of random uint16 ids is written to a temp directory (page cache warm, as
for a trial that starts after the driver prepared the data), then each round times, in turn:
    read       readinto() over the file into a 32 MB buffer: what copying out of the page cache costs
    ids_only   the check before checksums: the largest id, over a memmap in 16M-token chunks
    blake2b    hashlib.blake2b (standard library) over a memmap, 32 MB at a time
    xxh3_128   xxhash.xxh3_128, the same way
    verify     trusted_manifest() of a cache holding the shard: size, ids and xxh3-128 in one pass
Reported: median s/GB of each with its 95% interval over rounds, and the per-round ratios
blake2b / xxh3_128 and verify / ids_only (the cost the checksum adds to what a trial already paid).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import emit, machine, median, median_ci

from stlm.data.shards import SCAN_BYTES, scan_shard, trusted_manifest

VOCAB = 50304


def read(path: Path) -> None:
    buf = bytearray(SCAN_BYTES)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def hash_mapped(path: Path, digest) -> str:
    tokens = np.memmap(path, dtype=np.uint8, mode="r")
    for i in range(0, len(tokens), SCAN_BYTES):
        digest.update(tokens[i : i + SCAN_BYTES])
    return digest.hexdigest()


def ids_only(path: Path, chunk: int = 1 << 24) -> int:
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    return max(int(tokens[i : i + chunk].max()) for i in range(0, len(tokens), chunk))


def make_cache(root: Path, mb: int) -> tuple[Path, dict, str]:
    rng = np.random.default_rng(0)
    cache = root / "cache"
    cache.mkdir()
    splits = {}
    for split, n in (("train", mb << 19), ("val", 1 << 16)):  # mb MB of 2-byte ids; a small val split
        rng.integers(0, VOCAB, size=n, dtype=np.uint16).tofile(cache / f"{split}.bin")
        splits[split] = {"tokens": n, "checksum": scan_shard(cache / f"{split}.bin", "uint16")[0]}
    content = {"dtype": "uint16", "tokenizer": {"vocab_size": VOCAB}}
    (cache / "manifest.json").write_text(json.dumps({**content, "key": "bench", "splits": splits}))
    return cache, content, "bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stlm-bench-checksum-"))
    try:
        cache, content, key = make_cache(root, args.mb)
        shard = cache / "train.bin"
        gb = shard.stat().st_size / 2**30
        jobs = {
            "read": lambda: read(shard),
            "ids_only": lambda: ids_only(shard),
            "blake2b": lambda: hash_mapped(shard, hashlib.blake2b(digest_size=16)),
            "xxh3_128": lambda: hash_mapped(shard, xxhash.xxh3_128()),
            "verify": lambda: trusted_manifest(cache, content, key) or sys.exit("the intact cache was not trusted"),
        }
        read(shard)  # warm the page cache
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(args.rounds):
            for name, job in jobs.items():
                t0 = time.perf_counter()
                job()
                times[name].append((time.perf_counter() - t0) / gb)
        ratios = {
            "blake2b_over_xxh3": [b / x for b, x in zip(times["blake2b"], times["xxh3_128"])],
            "verify_over_ids_only": [v / i for v, i in zip(times["verify"], times["ids_only"])],
        }
        result = {
            "shard_gb": round(gb, 3),
            "rounds": args.rounds,
            "s_per_gb": {k: round(median(v), 4) for k, v in times.items()},
            "s_per_gb_ci95": {k: median_ci(v) for k, v in times.items()},
            "ratio": {k: round(median(v), 2) for k, v in ratios.items()},
            "ratio_ci95": {k: median_ci(v) for k, v in ratios.items()},
            "machine": machine(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for k, v in result["s_per_gb"].items():
        print(f"{k:10s} {v:.3f} s/GB  (95% CI {result['s_per_gb_ci95'][k]})")
    for k, v in result["ratio"].items():
        print(f"{k}: {v}  (95% CI {result['ratio_ci95'][k]})")
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
