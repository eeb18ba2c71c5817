"""Ray Data against stlm's own process pool for tokenizing a corpus (issue 19, item 4).

    python benchmarks/bench_ray_data.py [--copies 4] [--rounds 3]

The same documents (the shared corpora, `copies` times over, GPT-2 tokenizer) tokenized, alternating
each round, by
  pool_np2     stlm.data.prepare's encoder: 2 spawned processes fed ~1 MB batches in order
               (prepare._Encoder, what the driver runs for a cluster sweep)
  ray_data_2   ray.data.from_items(the same batches).map_batches(Encode, ActorPoolStrategy(size=2), num_cpus=1)
               on a Ray instance with 2 CPUs (already started: a cluster has it running),
               results collected in order into one array
Both start from documents in memory and end with one uint16 array, so only the tokenization and
its transport are compared. ratio = ray_data time / pool time (> 1: Ray Data is slower).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import corpus_config, repeated_corpus
from run import emit, machine, median


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    import importlib

    import ray

    prepare = importlib.import_module("stlm.data.prepare")  # the module (stlm.data.prepare is also a function)
    from stlm.data.sources import get_source
    from stlm.tokenizers import load_tokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-ray-data-"))
    cfg = corpus_config(None, str(work / "cache"), 2, repeated_corpus(work, args.copies))
    if cfg.model.tokenizer != "gpt2":
        print("needs the shared corpora and the GPT-2 vocabulary (../shared/data)", file=sys.stderr)
        return 2
    tok = load_tokenizer(cfg.model, cfg.data)
    docs = list(get_source(cfg.data).documents("train"))
    batches = list(prepare._batches(docs))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)

    def pool_np2() -> np.ndarray:
        enc = prepare._Encoder(tok, "uint16", 2, work)
        try:
            return np.concatenate([arr for arr, *_ in enc.map(iter(batches))])
        finally:
            enc.close()

    model_cfg, data_cfg = cfg.model, cfg.data

    class Encode:  # one per Ray Data worker: the tokenizer loaded once, as the pool's workers load it
        def __init__(self):
            self.tok = load_tokenizer(model_cfg, data_cfg)

        def __call__(self, batch: dict) -> dict:
            return {"ids": [self.tok.encode_documents(list(b), dtype=np.uint16) for b in batch["docs"]]}

    def ray_data_2() -> np.ndarray:
        ds = ray.data.from_items([{"docs": b} for b in batches]).map_batches(
            Encode, batch_size=1, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_format="numpy"
        )
        return np.concatenate([row["ids"] for row in ds.iter_rows()])

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    times = {"pool_np2": [], "ray_data_2": []}
    out = {}
    for _ in range(args.rounds):
        for name, fn in (("pool_np2", pool_np2), ("ray_data_2", ray_data_2)):
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
    assert np.array_equal(out["pool_np2"], out["ray_data_2"]), "the two paths tokenized differently"
    ratios = [r / p for r, p in zip(times["ray_data_2"], times["pool_np2"])]
    emit(
        {
            "bench": "ray_data",
            "machine": machine(),
            "mb": round(n_bytes / 1e6, 1),
            "tokens": int(out["pool_np2"].size),
            "pool_np2_mb_s": round(n_bytes / 1e6 / median(times["pool_np2"]), 2),
            "ray_data_2_mb_s": round(n_bytes / 1e6 / median(times["ray_data_2"]), 2),
            "ratio_ray_data_over_pool": [round(r, 3) for r in ratios],
            "seconds": times,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
