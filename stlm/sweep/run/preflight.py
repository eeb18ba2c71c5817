"""Pre-flight: everything a sweep needs, checked before anything is written or started.

    problems = preflight.problems(sweep, attached=False)   # [] when the sweep can run
    preflight.check(sweep, attached=False)                 # StlmError listing every problem

`stlm sweep --dry-run` and the real run call the same check, before the experiment directory,
the MLflow parent run or Ray exist, so a sweep that cannot run leaves nothing behind. It looks at
every arm:

- data: the data source exists (local files) or is a hub dataset that can be reached now, or
  that a token cache prepared earlier already holds;
- tokenizer: model.tokenizer=gpt2 has its vocabulary (data.gpt2_vocab_file, $STLM_GPT2_VOCAB,
  tiktoken's cache, or a reachable download);
- eval: every eval task is known and its data is found (eval.data_dir / $STLM_BENCHMARKS, else
  the hub);
- resources: one trial's request (workers x CPUs, GPUs, an estimate of its memory) fits this
  machine, which is the whole cluster of a local Ray. An attached cluster is checked node by node
  once connected (runner.check_cluster), since an autoscaler may add what is missing.

Each problem is one sentence naming the key, file or address, and what to do instead.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from pathlib import Path

import torch

from stlm.data.prepare import cache_label
from stlm.data.sources import HubSource, cache_root, get_source
from stlm.errors import StlmError
from stlm.eval.harness import parse_tasks
from stlm.eval.tasks import TASKS
from stlm.eval.tasks.base import resolve_data_dir
from stlm.fmt import gib
from stlm.offline import OFFLINE_HINT, hub_down, hub_unreachable
from stlm.preflight import check as report_problems
from stlm.preflight import data_problems, tracking_problems
from stlm.sweep.resilience.storage import endpoint, probe
from stlm.sweep.run.memory import trial_memory


def check(sweep, *, attached: bool = False, tracking_uri: str | None = None) -> None:
    report_problems(problems(sweep, attached=attached, tracking_uri=tracking_uri), f"sweep {sweep.name!r}")


def problems(sweep, *, attached: bool = False, tracking_uri: str | None = None) -> list[str]:
    """Every problem found, in order: tracking server, data, tokenizer, eval (each distinct setting once),
    resources."""
    found: list[str] = tracking_problems(tracking_uri)
    checks = (
        ("data", lambda c: repr(c.data), _data),
        ("tokenizer", lambda c: (c.model.tokenizer, c.data.gpt2_vocab_file), _tokenizer),
        ("eval", lambda c: repr(c.eval), _eval),
    )
    for _, key_of, check_one in checks:
        keys = {}
        for arm in sweep.arms:
            keys.setdefault(key_of(arm.cfg), []).append(arm)
        for arms in keys.values():
            prefix = f"arm{'s' if len(arms) > 1 else ''} {', '.join(a.name for a in arms)}: " if len(keys) > 1 else ""
            found += [prefix + p for p in check_one(arms[0].cfg)]
    found += _metrics(sweep)
    if not attached:
        found += _local_resources(sweep)
    return found


# what a trial reports to Tune: the training loop's log (stlm/train/loop.py; val_* at evaluations, mfu on a
# GPU with a known peak), the worker's extras (run/worker.py), and eval/<task>/<metric> of the eval tasks
REPORTED = (
    *("step", "tokens", "train_loss", "lr", "dropout_scale", "grad_norm", "tokens_per_s", "mfu", "elapsed_s"),
    *("val_loss", "val_bpb"),
    *("params", "flops_per_token", "startup_s", "max_steps", "report_s", "resumed_from_step"),
)


def _metrics(sweep) -> list[str]:
    """Every `metric` is one a trial reports: Tune would train a whole trial, then fail on the first result."""
    tasks = set()
    for arm in sweep.arms:
        with contextlib.suppress(StlmError):  # an unknown task is _eval's to name
            tasks.update(parse_tasks(arm.cfg.eval.tasks) if arm.cfg.eval.tasks else ())
    evals = sorted(f"eval/{t}/<metric>" for t in tasks)
    out = []
    for m in sweep.spec.metrics:
        task = m.split("/")[1] if m.startswith("eval/") and m.count("/") == 2 else None
        if m in REPORTED or task in tasks:
            continue
        close = difflib.get_close_matches(m, REPORTED, n=1)
        out.append(
            f"metric: {m!r} is never reported by a trial"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f". A trial reports {', '.join(REPORTED)}"
            + (f", and {', '.join(evals)} for the eval tasks" if evals else "; eval/<task>/<metric> with eval.tasks")
            + "."
        )
    return out


# --------------------------------------------------------------------------- tracking server


def check_storage(store, timeout: float = 10.0) -> None:
    """An object-store experiment directory (s3://bucket/prefix) can be listed and written within
    `timeout` seconds, else one paragraph naming the URI (exit 2). Checked before anything is read."""
    why = probe(store.uri, timeout=timeout)
    if why:
        raise StlmError(
            f"pre-flight: the experiment directory {store.uri} (--experiment-dir) cannot be used: {why} "
            f"(endpoint: {endpoint()}). Check the bucket name, the endpoint (AWS_ENDPOINT_URL for an S3-compatible "
            "server), the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance "
            "profile) and that this machine can reach it; or use a local or NFS path. Nothing was started or written."
        )


# --------------------------------------------------------------------------- data and tokenizer


def _data(cfg) -> list[str]:

    found = data_problems(cfg)  # exists; a local source's first records parse, with the text column
    if found:
        return found
    source = get_source(cfg.data)
    if isinstance(source, HubSource):
        why = hub_unreachable()
        if why and not _prepared_cache(cfg, source):
            return [
                f"data.source={cfg.data.source!r} is the Hugging Face hub dataset {source.spec.path!r}, and the "
                f"hub cannot be used now ({why}); no token cache of it prepared earlier was found either. "
                + OFFLINE_HINT
            ]
    return []


def _prepared_cache(cfg, source) -> bool:
    """A complete token cache of this source exists (prepare() would reuse it without the hub)."""
    d = cfg.data
    for manifest in (cache_root(d) / "data").glob(f"{cache_label(source)}-*/manifest.json"):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if (m.get("source"), m.get("subset"), m.get("revision"), m.get("max_chars")) == (
            d.source,
            d.subset,
            d.revision,
            d.max_chars,
        ):
            return True
    return False


def _tokenizer(cfg) -> list[str]:
    if cfg.model.tokenizer != "gpt2":
        return []  # bpe is trained on the run's own data; bytes needs nothing
    vocab = cfg.data.gpt2_vocab_file or os.environ.get("STLM_GPT2_VOCAB")
    if vocab:
        if not Path(vocab).expanduser().is_file():
            return [
                f"model.tokenizer=gpt2: the GPT-2 vocabulary file {vocab!r} (data.gpt2_vocab_file / "
                "$STLM_GPT2_VOCAB) does not exist."
            ]
        return []
    # lazy: tiktoken, only for a gpt2 tokenizer
    from stlm.tokenizers import gpt2_unavailable

    why = gpt2_unavailable()
    if why:
        return [
            f"model.tokenizer=gpt2 needs the GPT-2 vocabulary: it is not in tiktoken's cache and its download "
            f"address cannot be used now ({why}). Point data.gpt2_vocab_file (or $STLM_GPT2_VOCAB) at a local "
            "gpt2.tiktoken file, e.g. shared/data/tokenizers/gpt2/gpt2.tiktoken."
        ]
    return []


# --------------------------------------------------------------------------- eval


def _eval(cfg) -> list[str]:

    if not cfg.eval.tasks:
        return []
    try:
        names = [t for t in parse_tasks(cfg.eval.tasks) if t in TASKS]  # bpb needs nothing but the run
        if not names:
            return []
        data_dir = resolve_data_dir(cfg.eval.data_dir)
    except StlmError as e:
        return [str(e)]
    if data_dir is None:
        why = hub_down()
        if why:
            return [
                f"eval.tasks ({', '.join(names)}) are read from the Hugging Face hub, since no benchmark "
                f"directory is set, and the hub cannot be reached now ({why}). Point eval.data_dir (or "
                "$STLM_BENCHMARKS) at a benchmark directory laid out like shared/data/benchmarks, or set "
                "HF_DATASETS_OFFLINE=1 to read the datasets cache of an earlier download."
            ]
        if not why:
            return []
    out = []
    for name in names:  # local files (or the datasets cache when offline): read every subtask
        task = TASKS[name]()
        try:
            for sub in task.subtasks():
                task.docs(sub, str(data_dir) if data_dir else None)
        except StlmError as e:
            out.append(f"eval.tasks: {e}")
    return out


# --------------------------------------------------------------------------- resources


def _local_resources(sweep) -> list[str]:
    """A local Ray is this machine: a trial that does not fit it would wait for ever."""
    r = sweep.spec.resources
    have = local_resources()
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    out = []
    if need_cpu > have["CPU"]:
        out.append(
            f"resources: each trial asks for {r.workers} worker(s) x {r.cpus_per_worker:g} CPU = {need_cpu:g} "
            f"CPUs, and this machine (a local Ray) has {have['CPU']:g}. Lower resources.cpus_per_worker or "
            "resources.workers (e.g. resources.cpus_per_worker=1 on the command line), or attach to a "
            "cluster with --address."
        )
    if need_gpu > have["GPU"]:
        out.append(
            f"resources: each trial asks for {r.workers} worker(s) x {r.gpus_per_worker:g} GPU = {need_gpu:g} "
            f"GPUs, and this machine (a local Ray) has {have['GPU']:g}. Run on CPUs with "
            "resources.gpus_per_worker=0 on the command line, or attach to a GPU cluster with --address."
        )
    need_mem = trial_memory(sweep)
    if need_mem > have["memory"]:
        out.append(
            f"resources: one trial needs about {gib(need_mem)} of memory (weights, gradients, AdamW state, "
            f"activations and the processes of {r.workers} worker(s)), and this machine has {gib(have['memory'])}. "
            "Lower train.batch_size (train.grad_accum keeps the batch), or attach to a bigger cluster with --address."
        )
    return out


def local_resources() -> dict[str, float]:
    """What a local Ray started by stlm gets: every core, every visible GPU, the machine's memory."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not a POSIX system: do not guess
        memory = float("inf")
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus), "memory": memory}
