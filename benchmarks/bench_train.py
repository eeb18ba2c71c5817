"""Training throughput: stlm's model + training step vs a plain reference transformer (reference.py).

    python benchmarks/bench_train.py [--quick | --smoke] [--variants rope_swiglu,byte_level]
                                     [--device cuda --compile --amp bf16]
    python benchmarks/bench_train.py --profile rope_swiglu        # torch.profiler tables of both steps
    python benchmarks/bench_train.py --gpu-baseline               # configs/baseline-50m.yaml, bf16 + compile, MFU

Both models live in one process, have identical shapes (checked: the sorted lists of parameter
shapes must be equal), compute the same function (same_function: logits at shared random weights,
reported as "same_function"), and train on the same batches (real tokens of the generated corpus).

    stlm step       stlm.train.loop.train_step (micro-batch forward/backward, grad clip, AdamW from
                    stlm.train.optim.build_optimizer) + the LR scheduler step: the loop's own code
    reference step  reference.ref_step: forward, backward, clip 1.0, fused AdamW where available

Timing alternates: warmup (not timed), then rounds of `steps` stlm steps and `steps` reference
steps, the order flipping every round (AB BA AB ...), so load changes on a shared machine hit both
alike. Per round: ratio = stlm tokens/s / reference tokens/s; reported: the median ratio and its
distribution-free 95% confidence interval (run.median_ci), so a claim of >= 1.0x can be read against it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import fused_available, ref_model, ref_optimizer, ref_step
from run import REPO, bench_config, emit, machine, median, median_ci

# The variants the issue names: overrides of the benchmark's base config (run.bench_config).
VARIANTS: dict[str, list[str]] = {
    "rope_swiglu": ["model.positional=rope", "model.ffn=swiglu"],
    "learned_gelu": ["model.positional=learned", "model.ffn=gelu"],
    "ffn_all": ["model.positional=rope", "model.ffn=swiglu", "model.sharing.mode=ffn_all"],
    "byte_level": ["model.embedder=byte_pooled", "model.positional=rope", "model.ffn=swiglu"],
}

# batch x context (byte_level: byte_batch; it costs ~4x the FLOPs per token), warmup, rounds, steps per turn.
# Many short rounds rather than few long ones: on a shared 2-core machine single rounds swing by +-15%
# (bursts of load), so the number of rounds sets the width of the median's confidence interval.
MODES = {
    "full": dict(batch=8, byte_batch=4, ctx=256, warmup=3, rounds=21, steps=2),
    "quick": dict(batch=8, byte_batch=4, ctx=256, warmup=2, rounds=9, steps=1),
    "smoke": dict(batch=2, byte_batch=2, ctx=32, warmup=1, rounds=2, steps=1),
}


def shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    return sorted(tuple(p.shape) for p in model.parameters())


def make_batches(cfg, data, n: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from stlm.data.loader import TokenBatcher

    b = TokenBatcher(data.train, cfg.train.batch_size, cfg.model.context_length, seed=0)
    return [b.next() for _ in range(n)]


# Largest logit difference (relative to the logits' spread) and relative loss difference that still count as
# one function: fp32 kernels differ by ~3e-6 here; a missing positional encoding, norm or causal mask gives ~1.
SAME_TOL = 1e-4


@torch.no_grad()
def distinct_weights(stlm_model, ref, seed: int = 0) -> None:
    """Give stlm's model random weights far from its init (matrices N(0, 1/fan_in), norm weights 1 + N(0, 0.3),
    biases N(0, 0.3)) and copy them into the reference (both list parameters in the same order). At the GPT-2
    init the logits are nearly uniform, and a model without positions differs from one with them by ~5e-4 in
    loss; with these weights every part of the network shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    for p in stlm_model.parameters():
        noise = torch.randn(p.shape, generator=g).to(p.device)
        p.copy_(noise / p.shape[-1] ** 0.5 if p.ndim >= 2 else p + 0.3 * noise)
    for p, q in zip(stlm_model.parameters(), ref.parameters(), strict=True):
        q.copy_(p)


@torch.no_grad()
def compare_outputs(stlm_model, ref, mc, device, seed: int = 0) -> dict:
    """Both models on one random batch in eval mode: {"logits": max |logit difference| / std(stlm's logits),
    "loss": |loss difference| / stlm's loss, "logit_std": std(stlm's logits)}. The byte-level models' logits
    are [B, T, chunk_len, 258] in stlm and [B * T, chunk_len, 258] in the reference: compared as one shape."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, mc.effective_vocab_size, (2, min(32, mc.context_length) + 1), generator=g).to(device)
    inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    modes = stlm_model.training, ref.training
    stlm_model.eval(), ref.eval()
    la, loss_a = stlm_model(inp, tgt)
    lb, loss_b = ref(inp, tgt)
    stlm_model.train(modes[0]), ref.train(modes[1])
    la, lb = la.float(), lb.float().reshape(la.shape)
    std = float(la.std())
    return {
        "logits": float((la - lb).abs().max()) / std,
        "loss": abs(float(loss_a) - float(loss_b)) / float(loss_a),
        "logit_std": std,
    }


def same_function(stlm_model, ref, mc, device) -> dict:
    """compare_outputs at distinct_weights (see SAME_TOL): the speed comparison is of two implementations
    of one model. Both models get their own init back afterwards, so training starts from independent weights."""
    saved = [[p.detach().clone() for p in m.parameters()] for m in (stlm_model, ref)]
    distinct_weights(stlm_model, ref)
    out = compare_outputs(stlm_model, ref, mc, device)
    with torch.no_grad():
        for m, ps in zip((stlm_model, ref), saved):
            for p, q in zip(m.parameters(), ps):
                p.copy_(q)
    return out


class Pair:
    """An stlm model + optimizer + scheduler and a reference model + optimizer of the same shapes."""

    def __init__(self, cfg, data, device: torch.device, compile_: bool, amp: torch.dtype | None):
        from stlm.models import build_model, count_params
        from stlm.train.optim import build_optimizer
        from stlm.train.schedules import build_scheduler

        mc, tc = cfg.model, cfg.train
        torch.manual_seed(0)
        self.stlm_raw = build_model(mc, data.tokenizer if data else None).to(device)
        torch.manual_seed(0)
        self.ref_raw = ref_model(mc, data.tokenizer if data else None).to(device)
        a, b = shapes(self.stlm_raw), shapes(self.ref_raw)
        if a != b:
            raise SystemExit(f"reference and stlm shapes differ for {mc}:\n stlm {a}\n ref  {b}")
        self.params = sum(p.numel() for p in self.stlm_raw.parameters())
        assert self.params == sum(p.numel() for p in self.ref_raw.parameters()) == count_params(mc).total, (
            "stlm's model, the reference and count_params differ in size"
        )
        self.flops_per_token = count_params(mc).flops_per_token
        self.same = same_function(self.stlm_raw, self.ref_raw, mc, device)
        self.opt = build_optimizer(self.stlm_raw, tc, device)
        self.sched = build_scheduler(self.opt, tc)
        self.ref_opt = ref_optimizer(self.ref_raw, lr=tc.lr, weight_decay=tc.weight_decay, betas=(tc.beta1, tc.beta2))
        self.stlm = torch.compile(self.stlm_raw) if compile_ else self.stlm_raw
        self.ref = torch.compile(self.ref_raw) if compile_ else self.ref_raw
        self.stlm.train()
        self.ref.train()
        self.device, self.amp, self.tc = device, amp, tc

    def stlm_step(self, batch):
        from stlm.train.loop import train_step

        loss, _ = train_step(
            self.stlm,
            self.opt,
            [batch],
            grad_clip=self.tc.grad_clip,
            amp_dtype=self.amp,
            device=self.device,
            want_grad_norm=False,
        )
        self.sched.step()
        return loss

    def ref_step(self, batch):
        x, y = batch
        if self.device.type == "cuda":
            x, y = x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return ref_step(self.ref, self.ref_opt, x, y, self.tc.grad_clip, self.amp)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, batches, n: int, device, start: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        loss = step(batches[(start + i) % len(batches)])
    float(loss)  # the value is real (and the device is done)
    sync(device)
    return time.perf_counter() - t0


def compare(pair: Pair, batches, tokens_per_step: int, warmup: int, rounds: int, steps: int) -> dict:
    dev = pair.device
    timed(pair.stlm_step, batches, warmup, dev, 0)
    timed(pair.ref_step, batches, warmup, dev, 0)
    ratios, s_tps, r_tps = [], [], []
    for r in range(rounds):
        order = ("stlm", "ref") if r % 2 == 0 else ("ref", "stlm")
        dt = {}
        for who in order:
            dt[who] = timed(pair.stlm_step if who == "stlm" else pair.ref_step, batches, steps, dev, r * steps)
        s_tps.append(steps * tokens_per_step / dt["stlm"])
        r_tps.append(steps * tokens_per_step / dt["ref"])
        ratios.append(s_tps[-1] / r_tps[-1])
    ci = median_ci(ratios)
    return {
        "ratio": round(median(ratios), 4),
        "ratio_ci95": [round(x, 4) for x in ci] if ci else None,  # of the median (run.median_ci)
        "ratios": [round(x, 4) for x in ratios],
        "stlm_tokens_per_s": round(median(s_tps), 1),
        "ref_tokens_per_s": round(median(r_tps), 1),
        "params": pair.params,
        "flops_per_token": pair.flops_per_token,
        "same_function": {k: float(f"{v:.2e}") for k, v in pair.same.items()},  # see SAME_TOL
    }


def load(variant: str, mode: dict, device_name: str):
    from stlm.data import prepare

    small = mode["smoke"]
    batch = mode["byte_batch"] if variant == "byte_level" else mode["batch"]
    ov = VARIANTS[variant] + [
        f"train.batch_size={batch}",
        f"model.context_length={mode['ctx']}",
        f"train.device={device_name}",
    ]
    if small:
        ov += [
            "model.d_model=64",
            "model.n_layers=2",
            "model.byte_level.byte_dim=32",
            "model.byte_level.chunk_len=8",
            "model.byte_level.encoder_layers=1",
            "model.byte_level.decoder_layers=1",
        ]
    cfg = bench_config(
        ov,
        vocab=512 if small else 2048,
        bpe_chars=100_000 if small else 500_000,
        max_chars=200_000 if small else 1_000_000,
    )
    return cfg, prepare(cfg)


def ci_text(ci) -> str:
    return f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""


def run_variants(args, mode) -> dict:
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    out = {}
    for v in args.variants:
        cfg, data = load(v, mode, args.device)
        pair = Pair(cfg, data, device, args.compile, amp)
        batches = make_batches(cfg, data, 8, device)
        tps = cfg.train.batch_size * cfg.model.context_length
        t0 = time.time()
        out[v] = compare(pair, batches, tps, mode["warmup"], mode["rounds"], mode["steps"])
        out[v]["seconds"] = round(time.time() - t0, 1)
        print(
            f"{v:<14} stlm {out[v]['stlm_tokens_per_s']:>9,.0f} tok/s   "
            f"reference {out[v]['ref_tokens_per_s']:>9,.0f} tok/s"
            f"   ratio {out[v]['ratio']:.3f}{ci_text(out[v]['ratio_ci95'])}  ({len(out[v]['ratios'])} rounds, "
            f"{out[v]['params']:,} params)",
            flush=True,
        )
        del pair
    return out


# --------------------------------------------------------------------------- optimizer check


def optimizer_check(cfg, data, device, rounds: int = 7, steps: int = 5) -> dict:
    """ms per optimizer.step() of stlm.train.optim.build_optimizer vs the same AdamW with fused=True,
    on the stlm model's parameters with gradients (alternating; the profiling finding in numbers)."""
    from stlm.models import build_model
    from stlm.train.optim import build_optimizer

    model = build_model(cfg.model, data.tokenizer if data else None).to(device)
    x, y = make_batches(cfg, data, 1, device)[0]
    _, loss = model(x.to(device), y.to(device))
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    ours = build_optimizer(model, cfg.train, device)
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in ours.param_groups]  # the same split
    fused = (
        torch.optim.AdamW(
            groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2), eps=cfg.train.eps, fused=True
        )
        if fused_available(device)
        else None
    )
    if fused is None:
        return {"fused_available": False}

    def run(opt):
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        sync(device)
        return (time.perf_counter() - t0) / steps

    run(ours), run(fused)
    a, b = [], []
    for r in range(rounds):
        if r % 2 == 0:
            a.append(run(ours)), b.append(run(fused))
        else:
            b.append(run(fused)), a.append(run(ours))
    # foreach=None picks the multi-tensor kernels on CUDA only: on the CPU that is the per-parameter for-loop
    kind = (
        "fused"
        if ours.defaults.get("fused")
        else "foreach"
        if ours.defaults.get("foreach")
        else "foreach (default on CUDA)"
        if device.type == "cuda"
        else "per-parameter for-loop (default on CPU)"
    )
    return {
        "stlm_optimizer": kind,
        "stlm_step_ms": round(median(a) * 1e3, 2),
        "fused_step_ms": round(median(b) * 1e3, 2),
        "speedup_if_fused": round(median([x / y for x, y in zip(a, b)]), 2),
    }


# --------------------------------------------------------------------------- profiling


def profile(args, mode) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    device = torch.device(args.device)
    for v in args.variants:
        cfg, data = load(v, mode, args.device)
        pair = Pair(cfg, data, device, args.compile, None)
        batches = make_batches(cfg, data, 4, device)
        for name, step in (("stlm", pair.stlm_step), ("reference", pair.ref_step)):
            timed(step, batches, 2, device, 0)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with tprofile(activities=acts, record_shapes=False) as prof:
                timed(step, batches, 3, device, 0)
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(f"\n##### {v} / {name}: top ops by self time (3 steps)")
            print(prof.key_averages().table(sort_by=key, row_limit=args.profile_rows))


# --------------------------------------------------------------------------- GPU: the 50M baseline


def gpu_baseline(args) -> dict:
    """configs/baseline-50m.yaml on CUDA: bf16 autocast + torch.compile, tokens/s and MFU, vs the reference."""
    from stlm.config import load_config
    from stlm.train.device import peak_flops

    on_cpu = args.device == "cpu" and args.baseline_on_cpu  # only to exercise this code path without a GPU
    if not torch.cuda.is_available() and not on_cpu:
        msg = "no CUDA device on this machine: --gpu-baseline not run"
        print(msg)
        return {"gpu_baseline": {"skipped": msg}}
    torch.set_float32_matmul_precision("high")
    dev_name = "cpu" if on_cpu else "cuda"
    cfg = load_config(REPO / "configs" / "baseline-50m.yaml", [f"train.device={dev_name}", *args.overrides])
    device = torch.device("cpu") if on_cpu else torch.device("cuda", torch.cuda.current_device())
    mc, tc = cfg.model, cfg.train
    pair = Pair(cfg, None, device, compile_=True, amp=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    V, B, T = mc.effective_vocab_size, tc.batch_size, mc.context_length
    batches = []
    for _ in range(8):
        buf = torch.randint(0, V - 1, (B, T + 1), generator=g)
        batches.append((buf[:, :-1].contiguous(), buf[:, 1:].contiguous()))
    # one optimizer step = grad_accum micro-batches, as in the loop
    k = tc.grad_accum

    def stlm_step(i_batch):
        from stlm.train.loop import train_step

        loss, _ = train_step(
            pair.stlm,
            pair.opt,
            [batches[(i_batch + j) % 8] for j in range(k)],
            grad_clip=tc.grad_clip,
            amp_dtype=torch.bfloat16,
            device=device,
            want_grad_norm=False,
        )
        pair.sched.step()
        return loss

    def ref_steps(i_batch):
        loss = None
        for j in range(k):
            x, y = batches[(i_batch + j) % 8]
            if device.type == "cuda":
                x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                _, loss = pair.ref(x, y)
            (loss / k).backward()
        torch.nn.utils.clip_grad_norm_(pair.ref_raw.parameters(), tc.grad_clip)
        pair.ref_opt.step()
        pair.ref_opt.zero_grad(set_to_none=True)
        return loss.detach()

    idx = list(range(8))
    tokens = B * T * k
    res = compare(
        _Steps(pair, stlm_step, ref_steps),
        idx,
        tokens,
        warmup=args.gpu_warmup,
        rounds=args.gpu_rounds,
        steps=args.gpu_steps,
    )
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    res["device"] = name
    res["peak_bf16_flops"] = peak
    if peak:
        res["mfu"] = round(res["flops_per_token"] * res["stlm_tokens_per_s"] / peak, 4)
        res["ref_mfu"] = round(res["flops_per_token"] * res["ref_tokens_per_s"] / peak, 4)
    res["tokens_per_step"] = tokens
    if device.type == "cuda":
        res["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(
        f"baseline-50m on {name}: stlm {res['stlm_tokens_per_s']:,.0f} tok/s (MFU {res.get('mfu', float('nan')):.1%}), "
        f"reference {res['ref_tokens_per_s']:,.0f} tok/s (MFU {res.get('ref_mfu', float('nan')):.1%}), "
        f"ratio {res['ratio']:.3f}"
    )
    return {"gpu_baseline": res}


class _Steps:
    """Adapts compare() to step functions that take a batch index (grad_accum micro-batches each)."""

    def __init__(self, pair, stlm_step, ref_step):
        self.device, self.params, self.flops_per_token = pair.device, pair.params, pair.flops_per_token
        self.same = pair.same
        self.stlm_step, self.ref_step = stlm_step, ref_step


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="stlm training throughput vs a plain reference transformer")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--smoke", action="store_true")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--amp", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--rounds", type=int, default=None, help="override the mode's alternating rounds")
    p.add_argument("--steps", type=int, default=None, help="override the mode's steps per turn")
    p.add_argument("--profile", default=None, metavar="VARIANTS", help="profile these variants instead of timing")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--gpu-baseline", action="store_true", help="the 50M baseline on CUDA, bf16 + compile, MFU")
    p.add_argument("--gpu-warmup", type=int, default=15, help="untimed steps (compilation) for --gpu-baseline")
    p.add_argument("--gpu-rounds", type=int, default=6)
    p.add_argument(
        "--baseline-on-cpu",
        action="store_true",
        help="with --device cpu: run the --gpu-baseline code path on the CPU (to test it; slow, no MFU)",
    )
    p.add_argument("--gpu-steps", type=int, default=10)
    p.add_argument("overrides", nargs="*", help="config overrides for --gpu-baseline (e.g. train.grad_accum=1)")
    args = p.parse_args(argv)
    mode = dict(MODES["smoke" if args.smoke else "quick" if args.quick else "full"], smoke=args.smoke)
    mode.update({k: v for k, v in (("rounds", args.rounds), ("steps", args.steps)) if v})

    if args.gpu_baseline:
        emit({**gpu_baseline(args), "machine": machine()})
        return 0
    if args.profile:
        args.variants = args.profile.split(",")
        profile(args, mode)
        return 0
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    info = machine()
    print(f"machine: {info}; reference AdamW fused: {fused_available(torch.device(args.device))}", flush=True)
    res = run_variants(args, mode)
    ratios = {v: r["ratio"] for v, r in res.items()}
    cfg, data = load(args.variants[0], mode, args.device)
    opt = optimizer_check(cfg, data, torch.device(args.device), rounds=3 if args.smoke else 7)
    if "stlm_step_ms" in opt:
        step_ms = 1e3 * cfg.train.batch_size * cfg.model.context_length / res[args.variants[0]]["stlm_tokens_per_s"]
        opt["share_of_stlm_step"] = round(opt["stlm_step_ms"] / step_ms, 4)
        print(
            f"optimizer.step(): stlm ({opt['stlm_optimizer']}) {opt['stlm_step_ms']:.1f} ms vs fused AdamW "
            f"{opt['fused_step_ms']:.1f} ms ({opt['share_of_stlm_step']:.1%} of a {args.variants[0]} step)",
            flush=True,
        )
    emit(
        {
            "train_vs_reference": ratios,
            "train_vs_reference_min": min(ratios.values()),
            "train_vs_reference_ci95": {v: r["ratio_ci95"] for v, r in res.items()},
            "train": res,
            "optimizer": opt,
            "settings": {"device": args.device, "compile": args.compile, "amp": args.amp, **mode},
            "machine": info,
            "load_avg_1m_end": round(__import__("os").getloadavg()[0], 2),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
