"""What a sweep will run, as `--dry-run` prints it: arms, exact sizes, gaps to the control, FLOPs, trials, resources."""

from __future__ import annotations

from collections.abc import Iterable

from stlm.fmt import si
from stlm.models.params import dim_step, neighbours
from stlm.sweep.plan.sweep import Sweep, size_label, tokens_per_step

MATCH_GOAL = 0.005  # the largest pairwise parameter gap between the arms of one size that we accept silently


def param_gaps(sweep: Sweep) -> dict[str, float]:
    """arm -> (params - control's params) / control's params, against the control at the same size."""
    return {
        a.name: (a.count.total - sweep.control_of(a).count.total) / sweep.control_of(a).count.total for a in sweep.arms
    }


def largest_gap(counts: Iterable[int]) -> float:
    """The largest pairwise relative gap between parameter counts: (max - min) / min."""
    counts = list(counts)
    return (max(counts) - min(counts)) / min(counts) if counts else 0.0


def gap_notes(sweep: Sweep) -> list[str]:
    """One line per size: the largest pairwise gap; and for every arm past MATCH_GOAL, why the
    free dimension could not bring it closer to the control."""
    b = sweep.spec.budget
    lines = []
    for size in sweep.sizes:
        arms = [a for a in sweep.arms if a.size == size and a.solved]
        if len(arms) < 2:
            continue
        gap = largest_gap(a.count.total for a in arms)
        where = f" at {size_label(size)}" if b is not None and b.sized else ""
        ok = "" if gap <= MATCH_GOAL else f" (above {MATCH_GOAL:.1%})"
        lines.append(f"largest pairwise parameter gap{where}: {gap:.2%}{ok}")
        if b is None or b.target is None or gap <= MATCH_GOAL:
            continue
        for a in arms:
            c = sweep.control_of(a).count.total
            n = a.count.total
            if abs(n - c) / c <= MATCH_GOAL / 2:
                continue
            lo, hi = neighbours(a.cfg.model, b.free)
            other = lo if n > c else hi
            side = "below" if n > c else "above"
            why = (
                "outside the tolerance"
                if other is None or abs(other - size) > b.tolerance * size
                else "farther from the control"
            )
            step = dim_step(a.cfg.model, b.free)
            lines.append(
                f"  {a.name}: {b.free} moves in steps of {step}, {abs(n - (other or n)):,} parameters a "
                "step here; "
                f"{n:,} is {(n - c) / c:+.2%} from the control's {c:,}, and the next size {side} "
                + (f"({other:,}, {(other - c) / c:+.2%}) is {why}" if other else "does not exist")
            )
    return lines


def describe_training(sweep: Sweep) -> list[str]:
    """Per arm: tokens per trial and training FLOPs per trial (flops_per_token x tokens)."""
    workers = sweep.spec.resources.workers
    rows = []
    for a in sweep.arms:
        tokens = a.cfg.train.max_steps * tokens_per_step(a.cfg, workers)
        rows.append((a.name, a.cfg.train.max_steps, tokens, a.count.flops_per_token * tokens))
    return rows


def trial_resources(sweep: Sweep) -> dict[str, float]:
    r = sweep.spec.resources
    out = {"CPU": r.workers * r.cpus_per_worker}
    if r.gpus_per_worker:
        out["GPU"] = r.workers * r.gpus_per_worker
    return out


def describe(sweep: Sweep, space) -> str:
    """The dry run's text: the sweep and its budget, one row per arm, the gaps, then how it will run."""
    training = {name: (steps, tokens, flops) for name, steps, tokens, flops in describe_training(sweep)}
    lines = [f"sweep {sweep.name}: {sweep.path}"]
    if sweep.overrides:
        lines.append(f"overrides: {' '.join(sweep.overrides)}")
    lines += budget_lines(sweep)
    lines.append("")
    lines += arm_table(sweep, training)
    notes = gap_notes(sweep) + flops_gap_notes(sweep, training)
    if notes:
        lines.append("")
        lines += notes
    lines.append("")
    lines += run_lines(sweep, space, training)
    return "\n".join(lines)


def budget_lines(sweep: Sweep) -> list[str]:
    """What the budget asks: the parameter targets and tolerance, and the compute every arm gets."""
    b = sweep.spec.budget
    if not b:
        return []
    lines = []
    if b.target is not None:
        sizes = ", ".join(f"{t:,}" for t in b.targets)
        lines.append(
            f"budget: {sizes} parameters (+-{b.tolerance:.1%}), free dimension {b.free}; the control "
            "nearest the target, every other arm nearest the control's count"
        )
    compute = (
        "every arm trains on the control's FLOPs"
        if b.compute == "match"
        else f"{b.flops:.4g} training FLOPs per trial"
        if b.flops is not None
        else None
    )
    if compute or b.tokens is not None:
        tokens = None
        if b.tokens:
            tokens = (
                f"the control trains on {si(b.tokens)} tokens"
                if b.compute == "match"
                else f"{si(b.tokens)} tokens per trial"
            )
        lines.append("compute: " + ", ".join(x for x in (compute, tokens) if x) + " (train.max_steps solved per arm)")
    return lines


def arm_table(sweep: Sweep, training: dict[str, tuple]) -> list[str]:
    """One row per arm: its solved shape, exact parameters, gap to the control, FLOPs, steps and settings."""
    gaps = param_gaps(sweep)
    head = (
        f"{'arm':<22} {'d_model':>7} {'layers':>6} {'heads':>5} {'kv':>3} {'ffn_dim':>7} {'params':>12} "
        f"{'vs ctrl':>8} {'FLOPs/token':>13} {'steps':>6} {'tokens':>8} {'train FLOPs':>11}  settings"
    )
    lines = [head, "-" * len(head)]
    for a in sweep.arms:
        m = a.cfg.model
        mark = " (control)" if a.name == sweep.control_of(a).name else ""
        mark += "" if a.solved else " (base shape; each trial's shape is searched and solved)"
        sets = ", ".join(f"{k}={v}" for k, v in a.settings.items()) or "-"
        steps, tokens, flops = training[a.name]
        lines.append(
            f"{a.name:<22} {m.d_model:>7} {m.n_layers:>6} {m.n_heads:>5} {m.kv_heads:>3} "
            f"{m.effective_ffn_dim:>7} {a.count.total:>12,} {gaps[a.name]:>+8.2%} "
            f"{a.count.flops_per_token:>13,} {steps:>6} {si(tokens):>8} {flops:>11.4g}  {sets}{mark}"
        )
    return lines


def flops_gap_notes(sweep: Sweep, training: dict[str, tuple]) -> list[str]:
    """A compute-matched budget: per size, the largest pairwise gap in training FLOPs (whole steps)."""
    b = sweep.spec.budget
    if b is None or not (b.compute == "match" or b.flops is not None):
        return []
    notes = []
    for size in sweep.sizes:
        fl = [training[a.name][2] for a in sweep.arms if a.size == size]
        at = f" at {size:,}" if b.sized else ""
        notes.append(f"largest pairwise training-FLOPs gap{at}: {(max(fl) - min(fl)) / min(fl):.2%} (steps are whole)")
    return notes


def run_lines(sweep: Sweep, space, training: dict[str, tuple]) -> list[str]:
    """How the sweep runs: trials, search, scheduler, resources, training, metric, evaluation."""
    spec, s, r = sweep.spec, sweep.spec.search, sweep.spec.resources
    lines = [
        f"trials: {len(sweep.arms)} arms x {len(spec.seeds)} seeds {spec.seeds} x {s.samples} sample(s) "
        f"per cell = {sweep.num_trials}"
    ]
    knobs = [
        f"{k} ({p.type}{'' if p.type == 'categorical' else f' {p.low:g}..{p.high:g}'})" for k, p in s.params.items()
    ]
    if knobs or space.arch:
        lines.append(
            f"search: Optuna {s.algorithm} over " + ", ".join(knobs + ([space.describe_arch()] if space.arch else []))
        )
    else:
        lines.append("search: none (each cell runs once with its configured values)")
    if space.arch:
        good, n = space.sample_feasibility(50)
        lines.append(
            f"architecture feasibility: {good}/{n} points sampled as the sweep samples them meet the budget "
            f"({100.0 * good / n:.0f}%)"
        )
    sched = spec.scheduler
    lines.append(
        "scheduler: "
        + (
            "none"
            if sched.type == "none"
            else f"ASHA on step (grace {sched.grace_period}, reduction {sched.reduction_factor:g})"
        )
    )
    lines.append(
        f"resources per trial: {r.workers} Ray Train worker(s) x {{CPU: {r.cpus_per_worker:g}"
        + (f", GPU: {r.gpus_per_worker:g}" if r.gpus_per_worker else "")
        + "} = "
        + ", ".join(f"{v:g} {k}" for k, v in trial_resources(sweep).items())
        + f"; max concurrent: {r.max_concurrent or 'as many as the cluster fits'}"
        + "; stall limit: "
        + (f"{r.stall_timeout:g} s" if r.stall_timeout else "derived from each trial's report intervals")
    )
    cfg = sweep.arms[0].cfg
    t = cfg.train
    total_flops = sum(flops for _, _, flops in training.values()) * len(spec.seeds) * s.samples
    lines.append(
        f"training: {t.batch_size * t.grad_accum * r.workers} sequences per step; "
        f"{total_flops:.3g} training FLOPs in all"
    )
    control = (
        sweep.control_of(sweep.arms[0]).base + " (at every size)"
        if spec.budget and spec.budget.sized
        else sweep.control_arm
    )
    lines.append(f"metric: {', '.join(f'{m} ({o})' for m, o in zip(spec.metrics, spec.modes))}; control arm: {control}")
    if cfg.eval.tasks:
        lines.append(f"eval after each trial: {', '.join(cfg.eval.tasks)} (limit {cfg.eval.limit})")
    return lines
