"""Evaluation speed: benchmark items per second of stlm.eval.evaluate for a small model.

    python benchmarks/bench_eval.py [--quick | --smoke] [--tasks arc_easy,hellaswag] [--limit N]

Model: the 10M baseline (configs/baseline-10m.yaml: 12 x 128, GPT-2 vocabulary), randomly
initialised (speed does not depend on the weights), on the CPU. Data: shared/data/benchmarks.

Side by side, alternating per round and task:
  stlm    stlm.eval.evaluate(model, tokenizer, [task], limit=N): the real entry point, end to end
          (reading the task files, building items, batched + de-duplicated scoring, metrics)
  naive   the same items (built untimed), each (context, continuation) scored by its own forward pass:
          what a first implementation does (one request at a time, no batching, no sharing)
eval_items_per_s: stlm's items/s over all tasks; eval_speedup_vs_naive: the median ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import REPO, SHARED, emit, gpt2_vocab, machine, median

MODES = {
    "full": dict(limit=300, rounds=3),
    "quick": dict(limit=60, rounds=2),
    "smoke": dict(limit=3, rounds=1),
}


@torch.no_grad()
def naive_score(model, lm, items) -> None:
    """One forward per (context, continuation) pair; sum of the continuation's log-probs."""
    L = lm.max_length
    for item in items:
        for ctx, cont in zip(item.contexts, item.continuations):
            c_ids, k_ids = lm.encode_pair(ctx, cont)
            whole = (c_ids + k_ids)[-(L + 1) :]
            n = min(len(k_ids), len(whole) - 1)
            x = torch.tensor([whole[:-1]])
            logits, _ = model(x)
            lp = F.log_softmax(logits[0, -n:].float(), dim=-1)
            float(lp.gather(-1, torch.tensor(whole[-n:])[:, None]).sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="stlm evaluation speed (items/s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--smoke", action="store_true")
    p.add_argument("--tasks", default="arc_easy,hellaswag")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = dict(MODES[name])
    limit = args.limit or mode["limit"]
    info = machine()
    data_dir = SHARED / "benchmarks"
    vocab = gpt2_vocab()
    if not data_dir.is_dir() or not vocab:
        msg = f"benchmark data ({data_dir}) or the GPT-2 vocabulary not found: bench_eval skipped"
        print(msg)
        emit({"eval_items_per_s": None, "eval_speedup_vs_naive": None, "skipped": msg, "machine": info})
        return 0

    from stlm.config import load_config
    from stlm.eval import evaluate
    from stlm.eval.harness import sample_ids
    from stlm.eval.scorer import StlmLM
    from stlm.eval.tasks import TASKS
    from stlm.models import build_model
    from stlm.tokenizers import load_tokenizer

    ov = [f"data.gpt2_vocab_file={vocab}"]
    if args.smoke:
        ov += ["model.n_layers=2", "model.d_model=64", "model.n_heads=2", "model.ffn_dim=128"]
    cfg = load_config(REPO / "configs" / "baseline-10m.yaml", ov)
    tok = load_tokenizer(cfg.model, cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, tok).eval()
    lm = StlmLM(model, tok, batch_size=args.batch_size)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    per_task = {}
    for task_name in tasks:
        task = TASKS[task_name]()
        items = []
        for sub in task.subtasks():
            docs = task.docs(sub, str(data_dir))
            items += [task.item(docs[i], i, sub) for i in sample_ids(len(docs), limit, 1234, sub)]
        n = len(items)
        evaluate(
            model, tok, [task_name], limit=min(limit, 2), data_dir=str(data_dir), batch_size=args.batch_size
        )  # warm
        cached = StlmLM(model, tok, batch_size=args.batch_size, context_cache=True)
        t = {"stlm": [], "naive": [], "context_cache": [], "docs": []}
        for r in range(mode["rounds"]):
            order = ["stlm", "naive", "context_cache", "docs"]
            for who in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                if who == "stlm":  # the entry point users call, end to end
                    evaluate(model, tok, [task_name], limit=limit, data_dir=str(data_dir), batch_size=args.batch_size)
                elif who == "naive":
                    naive_score(model, lm, items)
                elif who == "context_cache":  # the scorer's optional shared-context KV cache (not the default)
                    evaluate(cached, None, [task_name], limit=limit, data_dir=str(data_dir))
                else:  # reading the task's files: a fixed cost inside every evaluate() call
                    for sub in task.subtasks():
                        task.docs(sub, str(data_dir))
                t[who].append(time.perf_counter() - t0)
        ratios = [b / a for a, b in zip(t["stlm"], t["naive"])]
        per_task[task_name] = {
            "items": n,
            "requests": sum(len(i.continuations) for i in items),
            "stlm_items_per_s": round(n / median(t["stlm"]), 2),
            "naive_items_per_s": round(n / median(t["naive"]), 2),
            "speedup_vs_naive": round(median(ratios), 3),
            "context_cache_items_per_s": round(n / median(t["context_cache"]), 2),
            "docs_load_s": round(median(t["docs"]), 3),
        }
        r = per_task[task_name]
        print(
            f"{task_name:<12} {n} items: stlm {r['stlm_items_per_s']:.1f} items/s, naive {r['naive_items_per_s']:.1f} "
            f"items/s (speedup {r['speedup_vs_naive']:.2f}x); with context_cache {r['context_cache_items_per_s']:.1f} "
            f"items/s; reading the task files {r['docs_load_s']:.2f}s per call",
            flush=True,
        )
    total_items = sum(v["items"] for v in per_task.values())
    total_s = sum(v["items"] / v["stlm_items_per_s"] for v in per_task.values())
    emit(
        {
            "eval_items_per_s": round(total_items / total_s, 2),
            "eval_speedup_vs_naive": round(min(v["speedup_vs_naive"] for v in per_task.values()), 3),
            "eval": per_task,
            "limit": limit,
            "model": "baseline-10m" + (" (smoke: 2x64)" if args.smoke else ""),
            "params": sum(p.numel() for p in model.parameters()),
            "mode": name,
            "machine": info,
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
