"""Data pipeline speed: parallel tokenization (stlm.data.prepare) and the loader's cost per step.

    python benchmarks/bench_data.py [--quick | --smoke]

1. Tokenization, MB/s of UTF-8 text, on the same documents (the shared corpora with the GPT-2
   tokenizer, else the generated corpus with a BPE), alternating each round:
     prepare_np2   stlm.data.prepare(num_proc=2) end to end into a fresh cache dir: reading the source,
                   the train/val split, tokenization in 2 spawned processes, shards + manifest
     prepare_np1   the same with num_proc=1
     tiktoken_loop single-process baseline: tiktoken encode_ordinary per document + EOT into one uint16
                   array, documents already in memory (reading them is not charged to the baseline)
     tiktoken_batch the same with encode_ordinary_batch (tiktoken's own thread pool)
     read_only     just reading the source's train + val documents in one pass, as prepare does (where
                   prepare's time goes)
   tokenize_speedup = tiktoken_loop time / prepare_np2 time (> 1: prepare is faster).
   cpu_seconds / cores_busy: CPU time of each job (with its worker processes) and CPU time / wall time.
2. Loader: TokenBatcher.next() time vs one training step (stlm train_step) of the benchmark's CPU
   model on the same data, alternating; loader_overhead = next time / step time.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import SHARED, bench_config, emit, gpt2_vocab, machine, median

MODES = {
    # copies: the shared corpora are ~7 MB, where starting worker processes is a visible share of the
    # time (measured on 2 cores: tokenize_speedup 0.99 at 28 MB, 1.21 at 84 MB); full mode tokenizes
    # them 12 times over, as a real corpus is larger still. tiktoken_batch (a slow reference point,
    # 4-5x slower than the loop) is timed in the first round only.
    "full": dict(chars=None, copies=12, rounds=3, loader_calls=300, loader_rounds=5, steps=3),
    "quick": dict(chars=2_000_000, copies=1, rounds=2, loader_calls=200, loader_rounds=3, steps=2),
    "smoke": dict(chars=60_000, copies=1, rounds=1, loader_calls=20, loader_rounds=1, steps=1),
}


def cpu_s() -> float:
    """User + system CPU-seconds of this process and of its children that have exited (pool workers)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def repeated_corpus(work: Path, copies: int) -> Path:
    """The shared corpora, `copies` times over (new file names, same text), in `work`."""
    from stlm.data.sources import LOCAL_FORMATS

    src = SHARED / "corpora"
    if copies <= 1 or not src.is_dir():
        return src
    out = work / "corpus"
    out.mkdir(exist_ok=True)
    for i in range(copies):
        for f in sorted(src.rglob("*")):
            if f.is_file() and f.suffix in LOCAL_FORMATS:
                shutil.copyfile(f, out / f"{i}-{f.parent.name}-{f.name}")
    return out


def corpus_config(chars: int | None, cache: str, num_proc: int, src: Path | None = None):
    """The shared corpora (tinystories + wikitext-2) with GPT-2 when present, else the generated corpus + BPE."""
    from stlm.config import build_config

    src = src or SHARED / "corpora"
    vocab = gpt2_vocab()
    if src.is_dir() and vocab:
        data = {
            "model": {"tokenizer": "gpt2"},
            "data": {"source": str(src), "gpt2_vocab_file": vocab, "max_chars": chars},
        }
    else:
        data = {
            "model": {"tokenizer": "bpe", "vocab_size": 2048},
            "data": {"source": "generated", "max_chars": chars or 8_000_000, "bpe_train_chars": 200_000},
        }
    data["data"].update(cache_dir=cache, num_proc=num_proc)
    return build_config(data)


def bench_tokenize(mode: dict, work: Path) -> dict:
    from stlm.data import prepare
    from stlm.data.sources import get_source, val_chars
    from stlm.tokenizers import load_tokenizer

    corpus = repeated_corpus(work, mode["copies"])
    base = corpus_config(mode["chars"], str(work / "tok-cache"), 2, corpus)
    tok = load_tokenizer(base.model, base.data)  # gpt2: read from file; bpe: trained once here, not timed
    src = get_source(base.data)

    def read():  # as prepare reads: one pass for both splits of a hashed split
        train, val = src.splits(base.data.max_chars, val_chars(base.data), work / "val-documents.jsonl")
        return list(train), list(val)

    train_docs, val_docs = read()  # also warms the page cache
    docs = train_docs + val_docs
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    enc = tok.enc
    eot = tok.eot_id

    def tiktoken_loop():
        out: list[int] = []
        for d in docs:
            out.extend(enc.encode_ordinary(d))
            out.append(eot)
        return np.asarray(out, dtype=np.uint16)

    def tiktoken_batch():
        out: list[int] = []
        for ids in enc.encode_ordinary_batch(docs):
            out.extend(ids)
            out.append(eot)
        return np.asarray(out, dtype=np.uint16)

    def prepared(num_proc):
        def fn():
            d = work / f"prep-{num_proc}-{time.time_ns()}"
            cfg = corpus_config(mode["chars"], str(d), num_proc, corpus)
            # the tokenizer file (bpe) is shared so only tokenization is timed
            if (work / "tok-cache" / "tokenizers").is_dir():
                shutil.copytree(work / "tok-cache" / "tokenizers", d / "tokenizers")
            c0, t0 = cpu_s(), time.perf_counter()
            data = prepare(cfg)
            dt, cpu = time.perf_counter() - t0, cpu_s() - c0
            s = data.manifest["splits"]
            n = s["train"]["tokens"] + s["val"]["tokens"]
            shutil.rmtree(d, ignore_errors=True)
            return dt, cpu, n

        return fn

    jobs = {
        "prepare_np2": prepared(2),
        "prepare_np1": prepared(1),
        "tiktoken_loop": tiktoken_loop,
        "tiktoken_batch": tiktoken_batch,
        "read_only": read,
    }
    times: dict[str, list[float]] = {k: [] for k in jobs}
    cpus: dict[str, list[float]] = {k: [] for k in jobs}
    tokens = {}
    for r in range(mode["rounds"]):
        order = list(jobs) if r % 2 == 0 else list(reversed(jobs))
        for name in order:
            if name == "tiktoken_batch" and r > 0:
                continue
            c0, t0 = cpu_s(), time.perf_counter()
            res = jobs[name]()
            dt, cpu = time.perf_counter() - t0, cpu_s() - c0
            if name.startswith("prepare"):
                dt, cpu, tokens[name] = res
            elif name.startswith("tiktoken"):
                tokens[name] = len(res)
            times[name].append(dt)
            cpus[name].append(cpu)
    t = {k: median(v) for k, v in times.items()}
    mb = n_bytes / 1e6
    if len({tokens.get("prepare_np2"), tokens.get("tiktoken_loop")}) != 1:
        print(f"note: token counts differ: {tokens}")
    out = {
        "corpus": str(base.data.source),
        "copies": mode["copies"],
        "tokenizer": tok.name,
        "mb": round(mb, 3),
        "documents": len(docs),
        "tokens": tokens.get("tiktoken_loop"),
        "seconds": {k: round(v, 3) for k, v in t.items()},
        "mb_per_s": {k: round(mb / v, 2) for k, v in t.items()},
        # CPU-seconds (this process + its finished children) and cores kept busy: on 2 cores prepare is
        # bound by total CPU (reading, hashing the split, starting workers, tokenizing), not by waiting
        "cpu_seconds": {k: round(median(v), 3) for k, v in cpus.items()},
        "cores_busy": {k: round(median(v) / t[k], 2) for k, v in cpus.items()},
        "tokenize_speedup": round(t["tiktoken_loop"] / t["prepare_np2"], 3),
        "tokenize_speedup_vs_batch": round(t["tiktoken_batch"] / t["prepare_np2"], 3),
        "np2_vs_np1": round(t["prepare_np1"] / t["prepare_np2"], 3),
        "read_share_of_prepare_np2": round(t["read_only"] / t["prepare_np2"], 3),
    }
    print(
        "tokenization (MB/s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in out["mb_per_s"].items())
        + f"  on {mb:.1f} MB ({len(docs)} docs, {tok.name})",
        flush=True,
    )
    return out


def bench_loader(mode: dict, smoke: bool) -> dict:
    import torch

    from stlm.data import prepare
    from stlm.data.loader import TokenBatcher
    from stlm.models import build_model
    from stlm.train.loop import train_step
    from stlm.train.optim import build_optimizer

    ov = ["model.d_model=64", "model.n_layers=2", "model.context_length=32", "train.batch_size=2"] if smoke else []
    cfg = bench_config(
        ov,
        vocab=512 if smoke else 2048,
        bpe_chars=100_000 if smoke else 500_000,
        max_chars=200_000 if smoke else 1_000_000,
    )
    data = prepare(cfg)
    B, T = cfg.train.batch_size, cfg.model.context_length
    batcher = TokenBatcher(data.train, B, T, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg.train, torch.device("cpu"))
    model.train()
    n = mode["loader_calls"]

    def loader_time():
        t0 = time.perf_counter()
        for _ in range(n):
            batcher.next()
        return (time.perf_counter() - t0) / n

    def step_time():
        batches = [batcher.next() for _ in range(mode["steps"])]  # made outside the timed region
        t0 = time.perf_counter()
        for b in batches:
            loss, _ = train_step(
                model, opt, [b], grad_clip=1.0, amp_dtype=None, device=torch.device("cpu"), want_grad_norm=False
            )
        float(loss)
        return (time.perf_counter() - t0) / len(batches)

    step_time()  # warmup
    loader_time()
    ratios, lt, st = [], [], []
    for r in range(mode["loader_rounds"]):
        a, b = (loader_time(), step_time()) if r % 2 == 0 else (lambda s: (loader_time(), s))(step_time())
        lt.append(a)
        st.append(b)
        ratios.append(a / b)
    # the 50M baseline's micro-batch shape (32 x 512) on the same memmap: the loader's cost there
    big = TokenBatcher(data.train, 32, 512, seed=0)
    t0 = time.perf_counter()
    for _ in range(max(10, n // 4)):
        big.next()
    big_us = (time.perf_counter() - t0) / max(10, n // 4) * 1e6
    out = {
        "loader_overhead": round(median(ratios), 5),
        "loader_next_us": round(median(lt) * 1e6, 1),
        "step_ms": round(median(st) * 1e3, 2),
        "batch": [B, T],
        "loader_next_us_32x512": round(big_us, 1),
    }
    print(
        f"loader: next() {out['loader_next_us']:.0f} us vs step {out['step_ms']:.1f} ms at {B}x{T} "
        f"-> overhead {out['loader_overhead']:.2%}; 32x512 next() {big_us:.0f} us",
        flush=True,
    )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="stlm data pipeline speed")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--smoke", action="store_true")
    p.add_argument("--chars", type=int, default=None, help="override the corpus cap (characters)")
    p.add_argument("--copies", type=int, default=None, help="tokenize the shared corpora this many times over")
    args = p.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = dict(MODES[name])
    if args.chars:
        mode["chars"] = args.chars
    if args.copies:
        mode["copies"] = args.copies
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="stlm-bench-data-"))
    try:
        tok = bench_tokenize(mode, work)
        loader = bench_loader(mode, args.smoke)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(
        {
            "tokenize_speedup": tok["tokenize_speedup"],
            "tokenize_speedup_vs_batch": tok["tokenize_speedup_vs_batch"],
            "loader_overhead": loader["loader_overhead"],
            "tokenize": tok,
            "loader": loader,
            "mode": name,
            "machine": info,
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
