"""The one training loop: standalone (`stlm train`) and inside Ray Train workers (sweeps).

    metrics = train(cfg, report=report)      # report(metrics, checkpoint_dir) every eval_interval

One optimizer step = grad_accum micro-batches of batch_size x context_length tokens per worker:

    tokens/step = batch_size * context_length * grad_accum * world_size

Distribution stays out of the model: with torch.distributed initialised (Ray Train does it in
its workers) the model is wrapped in DistributedDataParallel here, each rank reads its own
data stream (TokenBatcher(rank, world_size)), validation windows are split across ranks and
the sums all-reduced. Only rank 0 writes checkpoints; `report` is called on every rank
(ray.train.report is a barrier) with checkpoint_dir=None on the others.

The hot loop never waits on the device: losses go into a device buffer that is read (one
sync) at log steps only, where non-finite losses are caught and named by their step.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from stlm import progress as bars
from stlm.config import Config, TrainConfig, to_dict
from stlm.data import prepare
from stlm.data.loader import TokenBatcher, val_windows
from stlm.errors import StlmError
from stlm.eval.bpb import bpb_from_sums, bpb_sums
from stlm.models import build_model, count_params
from stlm.models.layers.dropout import dropout_scale
from stlm.train import checkpoint as ckpt
from stlm.train.device import World, peak_flops, resolve_amp, resolve_device, seed_everything, to_device
from stlm.train.optim import build_optimizer
from stlm.train.schedules import build_scheduler

DROPOUT_STEPS = 20  # with train.compile, scheduled dropout scales are rounded to multiples of 1/20

Report = Callable[[dict, "str | None"], None]


class NonFiniteLossError(StlmError):
    """The training loss became NaN or infinite; the trial stops instead of training on."""


# --------------------------------------------------------------------------- tokens per step


def tokens_per_step(cfg: Config, workers: int = 1) -> int:
    """Training tokens one optimizer step consumes: batch_size is per worker (a DDP rank, a Ray Train worker)."""
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.model.context_length * workers


# --------------------------------------------------------------------------- one optimizer step


def train_step(
    model,
    optimizer,
    batches,
    *,
    grad_clip: float,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    want_grad_norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward/backward over the micro-batches `batches` (an iterable of (x, y)), then one AdamW step.

    Each micro-batch loss is divided by the number of micro-batches, so accumulating k batches
    of size B gives the gradient of one batch of size k*B. Under DDP the gradient all-reduce
    runs only on the last micro-batch. Returns (mean loss, pre-clip grad norm) as device tensors.
    """
    batches = list(batches) if not isinstance(batches, list) else batches
    n = len(batches)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel) or isinstance(
        getattr(model, "_orig_mod", None), torch.nn.parallel.DistributedDataParallel
    )
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(batches):
        x, y = to_device(x, device), to_device(y, device)
        sync = contextlib.nullcontext() if (not ddp or i == n - 1) else _no_sync(model)
        with sync:
            with amp:
                _, loss = model(x, y)
            (loss / n).backward()
        loss_sum += loss.detach()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = None
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    elif want_grad_norm:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / n, grad_norm


def _no_sync(model):
    inner = getattr(model, "_orig_mod", model)  # torch.compile(DDP(...))
    return inner.no_sync()


# --------------------------------------------------------------------------- the loop


def train(
    cfg: Config,
    *,
    report: Report | None = None,
    resume_from: str | os.PathLike | None = None,
    data=None,
    world: World | None = None,
    on_log: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> dict:
    """Train `cfg` and return the final metrics (+ params, flops_per_token).

    report(metrics, checkpoint_dir): every train.eval_interval steps and at the end, on all ranks.
    resume_from: a checkpoint directory (or a run directory: its latest checkpoint).
    data: a stlm.data.PreparedData (default: stlm.data.prepare(cfg)).
    on_log(metrics): rank 0, every train.log_interval steps (train metrics; val metrics at eval steps).
    progress: show a tqdm bar over steps (rank 0; off when not a TTY or STLM_QUIET=1).

    One function on purpose, like nanoGPT's train.py: set-up, then the loop top to bottom (step, log, evaluate,
    checkpoint, report), so that the order of every side effect in a step can be read in one place; the pieces
    with a life of their own (train_step, _save, _resume, device.py) are functions beside it.
    """
    tc, mc = cfg.train, cfg.model
    if tc.keep_checkpoints < 1:
        raise StlmError(
            f"train.keep_checkpoints must be >= 1 (the checkpoint to resume from), got {tc.keep_checkpoints}."
        )
    world = world or World.detect()
    device = resolve_device(tc, world)
    amp_dtype = resolve_amp(tc, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for whatever runs outside autocast
        torch.backends.cudnn.allow_tf32 = True

    data = data if data is not None else prepare(cfg)
    tokenizer = data.tokenizer
    seed_everything(tc.seed)  # after prepare: the init must not depend on whether the data was cached
    raw = build_model(mc, tokenizer).to(device)  # same seed on every rank: same init (DDP broadcasts anyway)
    counted = count_params(mc)
    optimizer = build_optimizer(raw, tc, device)
    scheduler = build_scheduler(optimizer, tc)
    batcher = TokenBatcher(
        data.train, tc.batch_size, mc.context_length, seed=tc.seed, rank=world.rank, world_size=world.world_size
    )
    windows = val_windows(data.val, mc.context_length, tc.eval_batches * tc.batch_size)[world.rank :: world.world_size]
    byte_lengths = tokenizer.byte_lengths
    torch.manual_seed(tc.seed + world.rank)  # dropout masks differ across ranks

    step, elapsed_prev, last_metrics = 0, 0.0, {}
    last_good = (None, None)  # (step, loss) of the last finite training loss seen
    if resume_from is not None:
        step, elapsed_prev, last_metrics, last_good = _resume(
            resume_from, cfg, tokenizer, world, raw, optimizer, scheduler, batcher
        )

    if step >= tc.max_steps:  # resumed a finished run (e.g. a restored sweep trial): report it again
        if report is not None:
            report(dict(last_metrics), str(ckpt.resolve_checkpoint(resume_from)) if world.is_main else None)
        return dict(last_metrics, params=counted.total, flops_per_token=counted.flops_per_token)

    model = raw
    if world.distributed:
        model = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        # the dropout probability is a Python float, so each new value is a new graph: quantize
        # scheduled values to 1/DROPOUT_STEPS below and allow that many recompilations
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2 * DROPOUT_STEPS + 2)
        model = torch.compile(model)

    run_dir = Path(tc.out_dir).expanduser().resolve() / (tc.run_name or "run")
    step_tokens = tokens_per_step(cfg, world.world_size)
    peak = peak_flops(device)
    losses = torch.zeros(tc.log_interval, device=device)  # per-step losses since the last log
    in_window, window_t0 = 0, time.perf_counter()
    run_t0 = time.perf_counter()
    cur_scale = None
    bar = _progress_bar(tc.max_steps, step, progress and world.is_main)
    # no TTY (a log file): one line per evaluation instead of a bar
    print_lines = progress and world.is_main and bar is None and os.environ.get("STLM_QUIET") != "1"

    model.train()
    while step < tc.max_steps:
        scale = float(dropout_scale(mc.dropout, step, tc.max_steps))
        if tc.compile:
            scale = round(scale * DROPOUT_STEPS) / DROPOUT_STEPS
        if scale != cur_scale:  # only on change: a compiled model re-specialises on new values
            raw.set_dropout_scale(scale)
            cur_scale = scale
        lr = optimizer.param_groups[0]["lr"]
        is_log = (step + 1) % tc.log_interval == 0
        is_eval = (step + 1) % tc.eval_interval == 0 or step + 1 == tc.max_steps
        loss, grad_norm = train_step(
            model,
            optimizer,
            (batcher.next() for _ in range(tc.grad_accum)),
            grad_clip=tc.grad_clip,
            amp_dtype=amp_dtype,
            device=device,
            want_grad_norm=is_log or is_eval,
        )
        scheduler.step()
        losses[in_window] = loss
        in_window += 1
        step += 1
        if bar is not None:
            bar.update(1)
        if not (is_log or is_eval):
            continue

        # ---- log step: the one host sync of the window
        window = losses[:in_window]
        if world.distributed:
            window = window.clone()
            dist.all_reduce(window, op=dist.ReduceOp.SUM)
            window /= world.world_size
        values = window.tolist()
        dt = time.perf_counter() - window_t0
        first_step = step - in_window + 1
        for i, v in enumerate(values):
            if not math.isfinite(v):
                _raise_nonfinite(v, first_step + i, last_good, tc)
            last_good = (first_step + i, v)
        train_loss = sum(values) / len(values)
        tps = in_window * step_tokens / max(dt, 1e-9)
        metrics = {
            "step": step,
            "tokens": step * step_tokens,
            "train_loss": train_loss,
            "lr": lr,
            "dropout_scale": scale,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "tokens_per_s": tps,
        }
        if peak is not None:
            # flops_per_token counts forward + backward of one token (6N + attention)
            metrics["mfu"] = counted.flops_per_token * tps / (peak * world.world_size)

        if is_eval:
            sums = bpb_sums(raw, windows, byte_lengths, device, batch_size=tc.batch_size, amp_dtype=amp_dtype)
            if world.distributed:
                dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            metrics.update(bpb_from_sums(sums))
            if not math.isfinite(metrics["val_loss"]):
                _raise_nonfinite(metrics["val_loss"], step, last_good, tc, what="validation loss")
        metrics["elapsed_s"] = elapsed_prev + time.perf_counter() - run_t0
        if is_eval:
            last_metrics = metrics

        if world.is_main and on_log is not None:
            on_log(dict(metrics))
        if bar is not None:
            post = {"loss": f"{train_loss:.3f}"}
            if "val_bpb" in last_metrics:
                post["bpb"] = f"{last_metrics['val_bpb']:.3f}"
            bar.set_postfix(post, refresh=False)
        elif print_lines and is_eval:
            print(_line(metrics), flush=True)

        if is_eval:
            path = _save(run_dir, step, cfg, tokenizer, world, raw, optimizer, scheduler, batcher, metrics, last_good)
            if report is not None:
                report(dict(metrics), str(path) if path is not None else None)
        in_window, window_t0 = 0, time.perf_counter()  # eval and checkpoint time is not training time

    if bar is not None:
        bar.close()
    final = dict(last_metrics)
    final["params"] = counted.total
    final["flops_per_token"] = counted.flops_per_token
    return final


def _raise_nonfinite(value: float, step: int, last_good, tc: TrainConfig, what: str = "training loss"):
    good_step, good_loss = last_good
    good = (
        f"last good loss {good_loss:.4f} at step {good_step}" if good_step is not None else "no finite loss logged yet"
    )
    raise NonFiniteLossError(
        f"The {what} became {value} at step {step} ({good}); stopping instead of training on. "
        f"Try a lower train.lr (now {tc.lr:g}), a longer train.warmup_steps (now {tc.warmup_steps}) "
        f"or gradient clipping (train.grad_clip, now {tc.grad_clip:g})."
    )


def _line(m: dict) -> str:
    parts = [f"step {m['step']}", f"loss {m['train_loss']:.4f}"]
    if "val_bpb" in m:
        parts.append(f"val_loss {m['val_loss']:.4f} bpb {m['val_bpb']:.4f}")
    parts.append(f"{m['tokens_per_s']:.0f} tok/s")
    return "  ".join(parts)


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled or bars.quiet():
        return None
    return bars.bar(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


# --------------------------------------------------------------------------- checkpoints


def _rank_state(batcher) -> dict:
    return {"rng": ckpt.rng_state(), "batcher": batcher.state_dict()}


def _save(run_dir, step, cfg, tokenizer, world, raw, optimizer, scheduler, batcher, metrics, last_good) -> Path | None:
    mine = _rank_state(batcher)
    if world.distributed:  # every rank's RNG and data position go into rank 0's checkpoint
        states: list = [None] * world.world_size
        dist.all_gather_object(states, mine)
    else:
        states = [mine]
    if not world.is_main:
        return None
    trainer_state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "elapsed_s": metrics["elapsed_s"],
        "metrics": metrics,
        "last_good": last_good,
        "rank_states": states,
    }
    meta = {
        "step": step,
        "tokens": metrics["tokens"],
        "world_size": world.world_size,
        "tokenizer": {"name": tokenizer.name, "identity": tokenizer.identity},
    }
    path = ckpt.save_checkpoint(
        run_dir / ckpt.step_dir_name(step),
        model_state=raw.state_dict(),
        trainer_state=trainer_state,
        cfg=cfg,
        meta=meta,
    )
    # newer leftovers (a run rolled back to an older checkpoint) go first: never pruned into this one
    ckpt.prune_checkpoints(run_dir, cfg.train.keep_checkpoints, current=step)
    return path


def _resume(resume_from, cfg, tokenizer, world, raw, optimizer, scheduler, batcher):
    path = ckpt.resolve_checkpoint(resume_from)
    meta = ckpt.read_meta(path)
    saved = ckpt.read_config(path)
    for section in ("model", "data"):
        a, b = to_dict(getattr(saved, section)), to_dict(getattr(cfg, section))
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise StlmError(
                f"Cannot resume from {str(path)!r}: {section}.{', {section}.'.join(diff)} "
                f"differ from the checkpoint's config.".replace("{section}", section)
            )
    if meta["tokenizer"]["identity"] != tokenizer.identity:
        raise StlmError(
            f"Cannot resume from {str(path)!r}: it was trained with another tokenizer "
            f"(identity {meta['tokenizer']['identity']}, now {tokenizer.identity})."
        )
    state = ckpt.load_trainer_state(path)
    if len(state["rank_states"]) != world.world_size:
        raise StlmError(
            f"Cannot resume from {str(path)!r}: it was written by {len(state['rank_states'])} workers "
            f"and this run has {world.world_size}; the data positions would not line up."
        )
    raw.load_state_dict(ckpt.load_model_state(path))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    mine = state["rank_states"][world.rank]
    batcher.load_state_dict(mine["batcher"])
    ckpt.set_rng_state(mine["rng"])
    return state["step"], state["elapsed_s"], dict(state["metrics"]), tuple(state["last_good"])
