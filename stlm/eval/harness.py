"""Run benchmarks, compute metrics and standard errors as lm-evaluation-harness does.

    results = evaluate(model, tokenizer, ["blimp", "hellaswag"], limit=200, items_path="items.jsonl")
    results["hellaswag"] -> {"acc": .., "acc_stderr": .., "acc_ci95_low": .., "acc_ci95_high": ..,
                             "acc_norm": .., ..., "acc_bytes": .., ..., "n": 200}

Per item (harness ConfigurableTask.process_results for multiple_choice):
    pred       = argmax(ll)                        acc       = pred == gold
    pred_norm  = argmax(ll / len(choice))          acc_norm  (length in characters)
    pred_bytes = argmax(ll / len(choice.utf8))     acc_bytes (length in UTF-8 bytes)
argmax takes the first maximum (numpy), so ties go to the earlier choice.

Per task: the mean, its standard error sqrt(sample_var / n) with ddof=1 (the harness's mean_stderr),
and a 95% interval mean +- 1.96 se. Groups (blimp, mmlu and its four categories) combine their members'
scores (blimp: unweighted mean; mmlu: weighted by size) and their standard errors with the harness's
pooled_sample_stderr: sqrt(sum((n_i - 1) * n_i * se_i^2) / (N - k) / N). With equal sizes (BLiMP: 1000
pairs each, or `limit` each) this is exactly the standard error of the unweighted mean, sqrt(sum se_i^2) / k.

`limit` takes that many items from every leaf task (like the harness's --limit, which also applies per
sub-task): subset="first" takes the first `limit` documents, exactly the harness's --limit, so both
score the same items; subset="random" (the default of sweeps and training runs) a seeded random
subset (random.Random(f"{seed}/{task}")) in document order, which spreads a small limit over a file.

MMLU's overall score is weighted by size over its 57 subjects (= over the four categories, each
weighted over its subjects), and its stderr is pooled over the 57 subjects, as the harness pools it.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np

from stlm.errors import StlmError
from stlm.eval.scorer import LM, StlmLM
from stlm.eval.tasks import ALL_TASKS, TASKS, Item
from stlm.eval.tasks.bpb import run_bpb
from stlm.eval.tasks.mmlu import CATEGORIES, SUBJECTS

Z95 = 1.96


# --------------------------------------------------------------------------- statistics


def mean_stderr(xs) -> float:
    """Harness metrics.mean_stderr: sample standard deviation (ddof=1) / sqrt(n)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def pooled_sample_stderr(stderrs: list[float], sizes: list[int]) -> float:
    """Harness metrics.pooled_sample_stderr (used for every group)."""
    big_n, k = sum(sizes), len(sizes)
    if big_n - k <= 0:
        return float("nan")
    pooled_var = sum((n - 1) * se**2 * n for n, se in zip(sizes, stderrs)) / (big_n - k)
    return math.sqrt(pooled_var / big_n)


def summarize(values: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric, xs in values.items():
        m = sum(xs) / len(xs)
        out.update(_with_ci(metric, m, mean_stderr(xs)))
    out["n"] = len(next(iter(values.values())))
    return out


def _with_ci(metric: str, m: float, se: float) -> dict[str, float]:
    return {
        metric: m,
        f"{metric}_stderr": se,
        f"{metric}_ci95_low": m - Z95 * se,
        f"{metric}_ci95_high": m + Z95 * se,
    }


def aggregate(members: list[dict], metrics: tuple[str, ...], weight_by_size: bool) -> dict[str, float]:
    """A group's score from its members' (harness aggregate_subtask_metrics + pooled_sample_stderr)."""
    sizes = [int(r["n"]) for r in members]
    weights = sizes if weight_by_size else [1] * len(sizes)
    out: dict[str, float] = {}
    for metric in metrics:
        m = sum(r[metric] * w for r, w in zip(members, weights)) / sum(weights)
        se = pooled_sample_stderr([r[f"{metric}_stderr"] for r in members], sizes)
        out.update(_with_ci(metric, m, se))
    out["n"] = sum(sizes)
    return out


# --------------------------------------------------------------------------- per-item scoring


SUBSETS = ("random", "first")


def sample_ids(n: int, limit: int | None, seed: int, task: str, subset: str = "random") -> list[int]:
    """The documents a run scores: all, the first `limit` (subset="first", the harness's --limit), or a
    seeded random subset of `limit`, in document order."""
    if limit is None or limit >= n:
        return list(range(n))
    if subset == "first":
        return list(range(limit))
    rng = random.Random(f"{seed}/{task}")
    return sorted(rng.sample(range(n), limit))


def _argmax(xs) -> int:
    with np.errstate(divide="ignore", invalid="ignore"):
        return int(np.argmax(np.asarray(xs, dtype=np.float64)))


def score_item(item: Item, results: list[tuple[float, bool | None]]) -> dict:
    lls = [r[0] for r in results]
    chars = np.array([float(len(c)) for c in item.choices])
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in item.choices])
    with np.errstate(divide="ignore", invalid="ignore"):
        pred, pred_norm, pred_bytes = _argmax(lls), _argmax(np.array(lls) / chars), _argmax(np.array(lls) / nbytes)
    return {
        "task": item.task,
        "doc_id": item.doc_id,
        "gold": item.gold,
        "pred": pred,
        "pred_norm": pred_norm,
        "pred_bytes": pred_bytes,
        "acc": float(pred == item.gold),
        "acc_norm": float(pred_norm == item.gold),
        "acc_bytes": float(pred_bytes == item.gold),
        "loglikelihoods": lls,
        "is_greedy": [r[1] for r in results],
        **({"context": item.contexts[0]} if len(set(item.contexts)) == 1 else {"contexts": item.contexts}),
        "continuations": item.continuations,
        **item.extra,
    }


def score_items(lm: LM, items: list[Item]) -> list[dict]:
    """Encode every (context, continuation), score them all in one batched call, then per item."""
    requests, owners = [], []
    cache: dict[tuple[str, str], tuple] = {}
    for k, item in enumerate(items):
        for ctx, cont in zip(item.contexts, item.continuations):
            key = (ctx, cont)
            if key not in cache:
                cache[key] = lm.encode_pair(ctx, cont)
            requests.append(cache[key])
            owners.append(k)
    flat = lm.loglikelihood(requests)
    per_item: list[list] = [[] for _ in items]
    for k, res in zip(owners, flat):
        per_item[k].append(res)
    return [score_item(item, res) for item, res in zip(items, per_item)]


# --------------------------------------------------------------------------- the entry point


def parse_tasks(tasks) -> list[str]:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    names = [t.strip() for t in tasks]
    for t in names:
        if t not in ALL_TASKS:
            raise StlmError(f"Unknown eval task {t!r}; choose from {', '.join(ALL_TASKS)} (eval.tasks / --tasks).")
    return list(dict.fromkeys(names))


def evaluate(
    model,
    tokenizer=None,
    tasks=("blimp",),
    *,
    limit: int | None = None,
    seed: int = 1234,
    subset: str = "random",
    data_dir: str | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    items_path: str | Path | None = None,
    config=None,
    context_cache: bool = True,
    verbose: bool = False,
) -> dict[str, dict]:
    """Score `model` on `tasks`; returns {task: {metric: value, metric_stderr, metric_ci95_low/high, n}}.

    `model` is an stlm model (with `tokenizer`) or any `stlm.eval.scorer.LM` (e.g. stlm.eval.hf.HFLM).
    `config` (the run's Config) is needed only by the `bpb` task. `context_cache`: run a context shared by
    several continuations once through the KV cache (stlm token models; see stlm.eval.scorer.StlmLM). Group tasks
    also report their members (blimp_<uid>, mmlu_<subject>, mmlu_<category>). Per-item predictions go to
    `items_path` (JSONL).
    """
    names = parse_tasks(tasks)
    if limit is not None and limit <= 0:
        raise StlmError(f"eval.limit must be positive, got {limit}.")
    if subset not in SUBSETS:
        raise StlmError(f"The --limit subset must be one of {', '.join(SUBSETS)}, got {subset!r}.")
    torch_model = None if isinstance(model, LM) else model
    if torch_model is not None:
        if tokenizer is None:
            raise StlmError("stlm.eval.evaluate needs the model's tokenizer (or pass an stlm.eval.scorer.LM).")
        torch_model.to(device)
        was_training = torch_model.training
        torch_model.eval()
        lm: LM = StlmLM(torch_model, tokenizer, batch_size=batch_size, device=device, context_cache=context_cache)
    else:
        lm = model
    results: dict[str, dict] = {}
    all_rows: list[dict] = []
    try:
        for name in names:
            t0 = time.perf_counter()
            if name == "bpb":
                results["bpb"] = run_bpb(
                    torch_model if torch_model is not None else model, config, device, limit, batch_size
                )
                continue
            task = TASKS[name]()
            items: list[Item] = []
            for sub in task.subtasks():
                docs = task.docs(sub, data_dir)
                items += [task.item(docs[i], i, sub) for i in sample_ids(len(docs), limit, seed, sub, subset)]
            rows = score_items(lm, items)
            all_rows += rows
            results.update(_task_results(task, rows))
            if verbose:
                dt = time.perf_counter() - t0
                print(f"{name}: {len(items)} items in {dt:.1f}s ({len(items) / dt:.1f} items/s)", flush=True)
    finally:
        if torch_model is not None and was_training:
            torch_model.train()
    if items_path is not None:
        write_items(items_path, all_rows)
    return results


def _task_results(task, rows: list[dict]) -> dict[str, dict]:
    by_leaf: dict[str, list[dict]] = {}
    for r in rows:
        by_leaf.setdefault(r["task"], []).append(r)
    leaves = {leaf: summarize({m: [r[m] for r in rs] for m in task.metrics}) for leaf, rs in by_leaf.items()}
    if task.group_weighting is None:
        return leaves
    out = dict(leaves)
    if task.name == "mmlu":  # harness nesting: categories weighted over their subjects; mmlu over all subjects
        cats = {}
        for cat in CATEGORIES:
            members = [leaves[f"mmlu_{s}"] for s, c in SUBJECTS.items() if c == cat and f"mmlu_{s}" in leaves]
            if members:
                cats[f"mmlu_{cat}"] = aggregate(members, task.metrics, weight_by_size=True)
        out.update(cats)
        # the size-weighted mean is the same over categories or subjects; the harness pools the stderr over
        # the 57 subjects (pooling the 4 category stderrs instead gives 0.0057153765 vs 0.0057153609)
        subjects = [leaves[f"mmlu_{s}"] for s in SUBJECTS if f"mmlu_{s}" in leaves]
        out["mmlu"] = aggregate(subjects, task.metrics, weight_by_size=True)
    else:
        out[task.name] = aggregate(list(leaves.values()), task.metrics, task.group_weighting == "weighted")
    return out


def write_items(path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def flat_metrics(results: dict[str, dict], prefix: str = "eval") -> dict[str, float]:
    """{task: {metric: v}} -> {"eval/<task>/<metric>": v} for MLflow (finite numbers only)."""
    out = {}
    for task, ms in results.items():
        for k, v in ms.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[f"{prefix}/{task}/{k}"] = float(v)
    return out


def format_table(results: dict[str, dict], show_members: bool = False) -> str:
    """A small text table: task, metric, value +- stderr, n (members of groups hidden unless asked)."""
    groups = {"blimp", "mmlu"}
    lines = [f"{'task':<28} {'metric':<10} {'value':>8}   {'stderr':>7}   {'n':>6}"]
    for task, ms in results.items():
        member = (task.startswith("blimp_") or task.startswith("mmlu_")) and task not in groups
        if member and not show_members and not any(task == f"mmlu_{c}" for c in CATEGORIES):
            continue
        for metric in ("acc", "acc_norm", "acc_bytes", "val_bpb", "val_loss"):
            if metric in ms:
                se = ms.get(f"{metric}_stderr", float("nan"))
                lines.append(f"{task:<28} {metric:<10} {ms[metric]:>8.4f} ± {se:>7.4f}   {int(ms.get('n', 0)):>6}")
    return "\n".join(lines)
