"""Exact parameter accounting, FLOPs per token and budget solving, without building a model.

    count_params(cfg)                      -> ParamCount(total, breakdown, flops_per_token)
    solve_budget(cfg, 50_000_000, free="d_model")   -> a ModelConfig within 1% of 50M
    solve_budget(cfg, 50M, free="ffn_dim", nearest=control_count)  -> the size within 1% nearest the control
    stlm count CONFIG [--budget 50M --free d_model] [--json] [key=value ...]

Counts are of *unique* trainable parameters (a shared FFN counts once, tied embeddings once,
the byte table is a buffer, not a parameter); a property test checks them against
sum(p.numel() for p in build_model(cfg).parameters()).

FLOPs per token of one forward + backward pass (PaLM appendix B, Chowdhery et al. 2022):

    flops = 6 * N_applied + 12 * L_applied * H * hd * T

  N_applied  weights that multiply each token's activations, counted once per USE: a block run
             twice (block_repeat) or a shared FFN in every layer counts every time it is applied;
             includes the d x V output matmul (tied or not) and LoRA adapters; excludes lookups
             (embeddings, positions) and elementwise weights (norms, biases).
  L_applied  applied depth (n_layers * repeats for block_repeat), H * hd = d_model (query heads),
             T = context_length: the QK^T and AV products, 2 * 2 * T * d per token per layer forward,
             x3 for forward + backward (full T x T, as PaLM and torch's FLOP counter count it).
  byte_pooled adds per token the byte encoder and decoder (chunk_len bytes each, their own
             12 * layers * byte_dim * chunk_len attention term per byte), the pooling and conditioning
             projections and the chunk_len x byte_dim x 258 byte output matmul.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field

from stlm.config import ModelConfig, load_config, parse_int
from stlm.errors import StlmError
from stlm.fmt import si
from stlm.models.core import BlockDims
from stlm.models.embedders import EMBEDDERS
from stlm.models.heads import HEADS
from stlm.models.layers.ffn import FFNS
from stlm.models.layers.positional import POSITIONALS
from stlm.models.sharing import SHARING, LoRA, n_unique_ffns


@dataclass
class ParamCount:
    total: int
    breakdown: dict[str, int] = field(default_factory=dict)
    flops_per_token: int = 0
    n_layers_applied: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def count_params(cfg: ModelConfig) -> ParamCount:
    """Exact unique trainable parameters of build_model(cfg), by component, and FLOPs per token."""
    dims = BlockDims.of(cfg)
    sharing, sh, L = SHARING[cfg.sharing.mode], cfg.sharing, cfg.n_layers
    n_blocks = sharing.n_blocks(sh, L)
    n_ffns = n_unique_ffns(sh, L)
    n_applied = len(sharing.schedule(sh, L))
    shapes = FFNS[cfg.ffn].shapes(dims.d_model, dims.ffn_dim)
    lora_per_block = LoRA.n_params(shapes, sh.lora_rank) if sharing.lora else 0  # also its matmul weights

    emb, head = EMBEDDERS[cfg.embedder], HEADS[cfg.embedder]
    breakdown: dict[str, int] = {}
    breakdown.update(emb.count(cfg))
    breakdown["positional"] = POSITIONALS[cfg.positional].n_params(cfg)
    breakdown["attention"] = n_blocks * dims.attn_params()
    breakdown["ffn"] = n_ffns * dims.ffn_params()
    breakdown["lora"] = n_blocks * lora_per_block
    breakdown["norms"] = (2 * n_blocks + 1) * dims.norm_params()  # two per block + the final norm
    breakdown.update(head.count(cfg))

    flops = (
        emb.flops_per_token(cfg)
        + 6 * n_applied * (dims.matmul_params() + lora_per_block)
        + 12 * n_applied * dims.n_heads * (dims.d_model // dims.n_heads) * cfg.context_length
        + head.flops_per_token(cfg)
    )
    return ParamCount(sum(breakdown.values()), breakdown, flops, n_applied)


# ---------------------------------------------------------------------------- budget solving

FREE_DIMS = ("d_model", "ffn_dim", "n_layers")


def dim_step(cfg: ModelConfig, free: str) -> int:
    """Granularity of the free dimension that keeps the config valid."""
    if free == "d_model":  # multiple of n_heads (and 2 * n_heads for rope's even head dim) and of multiple_of
        heads = cfg.n_heads * (2 if cfg.positional == "rope" else 1)
        return math.lcm(heads, cfg.multiple_of)
    if free == "ffn_dim":
        return cfg.multiple_of
    return 1


def _with(cfg: ModelConfig, free: str, value: int) -> ModelConfig:
    if free == "d_model":  # ffn_dim=None scales with d_model; an explicit ffn_dim is kept
        return dataclasses.replace(cfg, d_model=value)
    return dataclasses.replace(cfg, **{free: value})


def _sizes(model_cfg: ModelConfig, free: str, limit: int, max_value: int) -> tuple[list[tuple[int, int]], int]:
    """(value, count) for the valid values of `free`, smallest first, until the count passes `limit`
    (one value past it is kept); and the step. Counts are monotone in every free dim."""
    step = dim_step(model_cfg, free)
    out: list[tuple[int, int]] = []
    v, last = step, None
    while v <= max_value:
        n = count_params(_with(model_cfg, free, v)).total
        out.append((v, n))
        if n > limit:
            break
        if last == n and free == "n_layers" and v > 64:  # the count does not depend on n_layers (block_all)
            break
        last, v = n, v + step
    return out, step


def solve_budget(
    model_cfg: ModelConfig,
    target: int,
    free: str = "d_model",
    tolerance: float = 0.01,
    max_value: int = 1 << 16,
    nearest: int | None = None,
) -> ModelConfig:
    """A copy of model_cfg with `free` set so that count_params(...).total is within
    `tolerance` (relative) of `target`: the size closest to `target`, or, given `nearest` (the
    control arm's actual count), the size within tolerance closest to `nearest`, so that the arms
    of an ablation are matched to each other and not merely to the target."""
    if free not in FREE_DIMS:
        raise StlmError(f"--free must be one of {', '.join(FREE_DIMS)}, got {free!r}.")
    if target <= 0:
        raise StlmError(f"The parameter budget must be positive, got {target}.")
    sizes, step = _sizes(model_cfg, free, int(target * (1 + tolerance)), max_value)
    feasible = [c for c in sizes if abs(c[1] - target) <= tolerance * target]
    if feasible:
        aim = target if nearest is None else nearest
        best = min(feasible, key=lambda c: (abs(c[1] - aim), abs(c[1] - target)))
        return _with(model_cfg, free, best[0])
    below = max((c for c in sizes if c[1] <= target), key=lambda c: c[1], default=None)
    above = min((c for c in sizes if c[1] > target), key=lambda c: c[1], default=None)
    cands = [c for c in (below, above) if c is not None]
    near = ", ".join(f"{free}={val} -> {si(n, fixed=True)}" for val, n in cands)
    why = ""
    if below is None:
        why = f" Even the smallest {free}={step} gives {si(above[1], fixed=True)}: the rest of the model is too big."
    elif above is None:
        why = f" The count stops growing with {free} (or {free} would pass {max_value})."
    grid = f" (multiple of {step})" if step > 1 else ""
    raise StlmError(
        f"No {free}{grid} gives {si(target, fixed=True)} parameters within {tolerance:.1%}; "
        f"nearest feasible: {near}.{why} Loosen the tolerance (budget.tolerance in a sweep file, --tolerance for "
        "stlm count), free another "
        f"dimension (budget.free / --free), or change the fixed ones."
    )


def closest_size(
    model_cfg: ModelConfig, target: int, free: str = "d_model", max_value: int = 1 << 16
) -> tuple[int, int]:
    """(value, count) of the valid `free` whose count is closest to `target`: the largest at or below it or the
    next one above (counts are monotone in every free dim), found by bisection in ~log2(max_value / step) counts.
    solve_budget meets `target` exactly when this count is within its tolerance (the search space asks so)."""
    step = dim_step(model_cfg, free)
    counts: dict[int, int] = {}

    def count_at(k: int) -> int:
        if k not in counts:
            counts[k] = count_params(_with(model_cfg, free, k * step)).total
        return counts[k]

    lo, hi = 1, max(1, max_value // step)
    if count_at(lo) <= target:
        while lo < hi:  # the largest k with count_at(k) <= target
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if count_at(mid) <= target else (lo, mid - 1)
        if lo < max_value // step:
            lo = min((lo, lo + 1), key=lambda k: abs(count_at(k) - target))
    return lo * step, count_at(lo)


def neighbours(model_cfg: ModelConfig, free: str) -> tuple[int | None, int | None]:
    """Parameter counts one step of `free` below and above model_cfg's value (None past the edge):
    how finely this dimension can move the count, for explaining a gap between matched arms."""
    step, v = dim_step(model_cfg, free), getattr(model_cfg, free)
    lo = count_params(_with(model_cfg, free, v - step)).total if v - step >= step else None
    hi = count_params(_with(model_cfg, free, v + step)).total
    return lo, hi


# ---------------------------------------------------------------------------- stlm count


def format_table(pc: ParamCount, cfg: ModelConfig) -> str:
    rows = [(k, v) for k, v in pc.breakdown.items()]
    width = max(len(k) for k, _ in rows + [("component", 0)])
    lines = [f"{'component':<{width}}  {'params':>14}  {'share':>7}"]
    for k, v in rows:
        share = 100.0 * v / pc.total if pc.total else 0.0
        lines.append(f"{k:<{width}}  {v:>14,}  {share:>6.2f}%")
    lines.append(f"{'total':<{width}}  {pc.total:>14,}  {100.0:>6.2f}%")
    lines.append(
        f"FLOPs/token (forward+backward): {pc.flops_per_token:,} ({pc.flops_per_token:.3e}); "
        f"applied layers {pc.n_layers_applied}, context {cfg.context_length}"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="stlm count", description="Exact parameter count and FLOPs/token of a config.")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides (model.d_model=384 ...)")
    p.add_argument("--budget", help="solve for this many parameters (50M, 10_000_000, 1.5B)")
    p.add_argument("--free", default="d_model", choices=FREE_DIMS, help="dimension to solve (default d_model)")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative tolerance of --budget (default 0.01)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after the flags

    cfg = load_config(args.config, args.overrides).model
    solved = None
    if args.budget is not None:
        try:
            target = parse_int(args.budget)
        except ValueError:
            raise StlmError(f"--budget {args.budget!r} is not a number like 50M or 10_000_000.") from None
        cfg = solve_budget(cfg, target, free=args.free, tolerance=args.tolerance)
        solved = {args.free: getattr(cfg, args.free), "ffn_dim": cfg.effective_ffn_dim, "target": target}
    pc = count_params(cfg)
    if args.json:
        out = pc.to_dict()
        out["dims"] = {k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads")} | {
            "n_kv_heads": cfg.kv_heads,
            "ffn_dim": cfg.effective_ffn_dim,
            "vocab_size": cfg.effective_vocab_size,
        }
        if solved is not None:
            out["solved"] = solved
        print(json.dumps(out, indent=2))
    else:
        if solved is not None:
            print(f"solved {args.free}={solved[args.free]} for a budget of {si(solved['target'], fixed=True)}")
        print(format_table(pc, cfg))
    return 0


if __name__ == "__main__":
    import sys

    from stlm.errors import run_main

    sys.exit(run_main(main, sys.argv[1:]))
