"""The search space: every (arm, seed) cell x Optuna-sampled knobs, always inside the budget.

Ablation fairness first: every (arm, seed) cell must run, `samples` times. Optuna gets a
define-by-run function (SearchSpace.__call__) that suggests `arm` and `seed` as categoricals
and then the searched knobs; the sweep enqueues one *partial* point {arm, seed} per trial
(OptunaSearch(points_to_evaluate=...) -> optuna Study.enqueue_trial). Optuna fixes only the
enqueued names (optuna.trial.Trial._suggest: `_is_fixed_param` for names in the
trial's `fixed_params` system attribute, the sampler for the rest) and Ray's OptunaSearch
skips the point-length check for a callable space (validate_point_name_lengths=False), so
the cells are pinned while the sampler (TPE, NSGA-II, random) really samples the knobs and
learns from every finished trial. num_samples equals the number of enqueued points, so
no trial is ever sampled outside the cells.

Architecture search inside a budget (search.architecture): the function suggests n_layers,
n_heads, n_kv_heads (a divisor of n_heads, by index) and ffn_multiple; d_model is solved.
d_model moves in steps of lcm(2 * n_heads, multiple_of), so for a given shape only some
ffn_multiple values land within the tolerance. Two things make every launched point feasible:
  1. the ranges (n_layers, the head counts) are checked exhaustively before the sweep starts:
     every (n_layers, n_heads, n_kv_heads) left in the space has at least one feasible
     ffn_multiple in [low, high];
  2. the sampled ffn_multiple is moved to the nearest feasible value on a 1/32 grid
     (the value the trial uses is returned in its config as model.ffn_multiple).
`feasible` counts the points that solved on the first try vs after the move; `infeasible` must stay 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from stlm.config import Config, build_config
from stlm.errors import StlmError
from stlm.models.params import closest_size
from stlm.sweep.plan.schema import ArchitectureSpec, ParamSpec
from stlm.sweep.plan.sweep import Sweep, apply_settings, solve

ARM, SEED = "arm", "seed"
FM_GRID = 32  # ffn_multiple is searched on a grid of 1/32
MIN_HEAD_DIM = 16


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclasses.dataclass
class ArchBounds:
    n_layers: tuple[int, int]
    n_heads: list[int]
    kv_heads: bool
    ffn_multiple: tuple[float, float]
    lr: tuple[float, float] | None


class SearchSpace:
    """Callable define-by-run space for OptunaSearch, plus trial config -> Config resolution."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.spec = sweep.spec
        self.params: dict[str, ParamSpec] = dict(self.spec.search.params)
        self.arm_names = [a.name for a in sweep.arms]
        self.seeds = list(self.spec.seeds)
        self.stats = {"points": 0, "first_try": 0, "moved": 0, "infeasible": 0}
        self._fm_cache: dict[tuple, bool] = {}
        arch = self.spec.search.architecture
        self.arch: ArchBounds | None = self._arch_bounds(arch) if isinstance(arch, ArchitectureSpec) else None

    # ------------------------------------------------------------------ the Optuna side

    def points(self) -> list[dict]:
        """One partial point per trial: {arm, seed}, seed-major, repeated `samples` times."""
        cells = [{ARM: a, SEED: s} for a, s in self.sweep.cells]
        return [dict(c) for _ in range(self.spec.search.samples) for c in cells]

    def __call__(self, trial) -> dict | None:
        """Define-by-run: pin the cell (enqueued), sample the knobs, keep the shape in the budget."""
        arm = trial.suggest_categorical(ARM, self.arm_names)
        trial.suggest_categorical(SEED, self.seeds)
        for key, p in self.params.items():
            _suggest(trial, key, p)
        if self.arch is None:
            return None
        return self._suggest_arch(trial, arm)

    def distributions(self) -> dict:
        """knob -> the Optuna distribution it is searched over, named as the trials' configs (and their
        MLflow params search.<knob>) name it: what the report's importances are computed over. Arm and
        seed are the cells, not knobs; the architecture's kv index is reported as model.n_kv_heads."""
        # lazy: optuna, off the import path of a plan without a search
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out = {key: distribution(p) for key, p in self.params.items()}
        b = self.arch
        if b is not None:
            out["model.n_layers"] = IntDistribution(*b.n_layers)
            out["model.n_heads"] = CategoricalDistribution(b.n_heads)
            if b.kv_heads:
                out["model.n_kv_heads"] = CategoricalDistribution(
                    sorted({kv for h in b.n_heads for kv in self._kv_options(h, True)})
                )
            out["model.ffn_multiple"] = FloatDistribution(*b.ffn_multiple)
            if b.lr is not None:
                out["train.lr"] = FloatDistribution(*b.lr, log=True)
        return out

    def sampler(self):
        # lazy: optuna, off the import path of a plan without a search
        import optuna

        s = self.spec.search
        seed = s.sampler_seed
        if s.algorithm == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.algorithm == "nsga2":
            # population of ~ a tenth of the trials, at least 4, so several generations fit
            pop = max(4, min(50, self.sweep.num_trials // 10 or 4))
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
        # TPE: random for the first ~third of the trials (at most 10) then model-based
        startup = max(2, min(10, self.sweep.num_trials // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)

    # ------------------------------------------------------------------ trial config -> Config

    def settings(self, config: dict) -> dict[str, Any]:
        """The dotted config keys a trial sets beyond its arm: the seed and the sampled knobs."""
        out = {"train.seed": int(config[SEED])}
        for k, v in config.items():
            if k in (ARM, SEED) or k.startswith("arch."):
                continue
            out[k] = v
        return out

    def resolve(self, config: dict) -> Config:
        """The validated, budget-solved Config a trial trains."""
        arm = self.sweep.arm(config[ARM])
        data = apply_settings(arm.data, self.settings(config))
        try:
            return solve(
                build_config(data),
                self.spec.budget,
                target=arm.size,
                nearest=arm.match,
                flops=arm.train_flops,
                workers=self.spec.resources.workers,
            )
        except StlmError as e:
            raise StlmError(f"trial {config}: {e}") from None

    # ------------------------------------------------------------------ architecture

    def _arch_cfg(self, arm_name: str, L: int, h: int, kv: int | None, fm: float):
        arm = self.sweep.arm(arm_name)
        m = dataclasses.replace(arm.cfg.model, n_layers=L, n_heads=h, n_kv_heads=kv, ffn_multiple=fm, ffn_dim=None)
        return dataclasses.replace(arm.cfg, model=m)

    def _feasible(self, arm_name: str, L: int, h: int, kv: int | None, fm: float) -> bool:
        """Does solve_budget find a d_model for this shape (with head_dim >= MIN_HEAD_DIM)? Its rule, by
        bisection (closest_size): ~8 counts, not ~50."""
        budget = self.spec.budget
        d_model, n = closest_size(self._arch_cfg(arm_name, L, h, kv, fm).model, budget.target)
        return abs(n - budget.target) <= budget.tolerance * budget.target and d_model // h >= MIN_HEAD_DIM

    def _fm_values(self, lo: float, hi: float) -> list[float]:
        a, b = math.ceil(lo * FM_GRID - 1e-9), math.floor(hi * FM_GRID + 1e-9)
        return [i / FM_GRID for i in range(a, b + 1)]

    def nearest_fm(self, arm_name: str, L: int, h: int, kv: int | None, fm: float) -> float | None:
        """The feasible grid ffn_multiple closest to `fm` (searching outwards), None if there is none."""
        lo, hi = self.arch.ffn_multiple
        vals = sorted(self._fm_values(lo, hi), key=lambda v: (abs(v - fm), v))
        for v in vals:
            key = (arm_name, L, h, kv, v)
            if key not in self._fm_cache:
                self._fm_cache[key] = self._feasible(arm_name, L, h, kv, v)
            if self._fm_cache[key]:
                return v
        return None

    def _any_fm(self, arm_name: str, L: int, h: int, kv: int | None, lo: float, hi: float) -> bool:
        # cheap existence check: coarse values first, then the fine grid
        vals = self._fm_values(lo, hi)
        coarse = vals[:: max(1, FM_GRID // 4)]
        return any(self._feasible(arm_name, L, h, kv, fm) for fm in coarse + [v for v in vals if v not in coarse])

    def _kv_options(self, h: int, kv_search: bool) -> list[int | None]:
        return [h // d for d in _divisors(h)][::-1] if kv_search else [None]

    def _arch_bounds(self, a: ArchitectureSpec) -> ArchBounds:
        budget = self.spec.budget
        fm = tuple(a.ffn_multiple or (2.0, 4.0))
        if len(fm) != 2 or not 0 < fm[0] < fm[1]:
            raise StlmError(
                f"search.architecture.ffn_multiple: expected [low, high] with 0 < low < high, got {list(fm)}."
            )
        heads = sorted(set(a.n_heads or [2, 4, 8, 16]))
        if any(h < 1 for h in heads):
            raise StlmError(f"search.architecture.n_heads: head counts must be positive, got {heads}.")
        given_L = a.n_layers is not None
        L_lo, L_hi = a.n_layers if given_L else (2, 24)
        if not 1 <= L_lo <= L_hi:
            raise StlmError(
                f"search.architecture.n_layers: expected [low, high] with 1 <= low <= high, got {a.n_layers}."
            )
        if a.lr is not None and (len(a.lr) != 2 or not 0 < a.lr[0] < a.lr[1]):
            raise StlmError(f"search.architecture.lr: expected [low, high] with 0 < low < high, got {a.lr}.")
        Ls = list(range(L_lo, L_hi + 1))
        # feasibility of every shape, on every arm (each arm is searched in the same space)
        ok = {
            (L, h): all(
                self._any_fm(arm, L, h, kv, *fm) for arm in self.arm_names for kv in self._kv_options(h, a.kv_heads)
            )
            for L in Ls
            for h in heads
        }
        if given_L:
            bad = [(L, h) for (L, h), good in ok.items() if not good]
            if bad:
                L, h = bad[0]
                raise StlmError(
                    f"search.architecture: n_layers={L}, n_heads={h} cannot meet the budget of {budget.target:,} "
                    f"(tolerance {budget.tolerance:g}) for any ffn_multiple in [{fm[0]}, {fm[1]}] with d_model solved "
                    f"and head_dim >= {MIN_HEAD_DIM}. Infeasible (n_layers, n_heads): {bad[:8]}"
                    f"{' ...' if len(bad) > 8 else ''}. Narrow n_layers / n_heads, widen ffn_multiple or the "
                    "tolerance, or lower model.multiple_of."
                )
            return ArchBounds((L_lo, L_hi), heads, a.kv_heads, fm, tuple(a.lr) if a.lr else None)
        # derived bounds: keep the head counts feasible at the middle depth, then the longest run of
        # depths where all of them are feasible
        mid = Ls[len(Ls) // 2]
        heads = [h for h in heads if ok[(mid, h)]] or [h for h in heads if any(ok[(L, h)] for L in Ls)][:1]
        if not heads:
            raise StlmError(
                f"search.architecture: no shape with {Ls[0]}..{Ls[-1]} layers meets the budget of "
                f"{budget.target:,} within {budget.tolerance:g}; widen budget.tolerance or lower model.multiple_of."
            )
        good = [all(ok[(L, h)] for h in heads) for L in Ls]
        best, run_start = (0, 0), None
        for i, g in enumerate(good + [False]):
            if g and run_start is None:
                run_start = i
            if not g and run_start is not None:
                if i - run_start > best[1] - best[0]:
                    best = (run_start, i)
                run_start = None
        if best[1] == best[0]:
            raise StlmError(f"search.architecture: no depth works for all of n_heads={heads} within the budget.")
        return ArchBounds((Ls[best[0]], Ls[best[1] - 1]), heads, a.kv_heads, fm, tuple(a.lr) if a.lr else None)

    def _suggest_arch(self, trial, arm: str) -> dict:
        b = self.arch
        L = trial.suggest_int("model.n_layers", *b.n_layers)
        h = trial.suggest_categorical("model.n_heads", b.n_heads)
        kv = None
        if b.kv_heads:
            opts = self._kv_options(h, True)  # h, h/2, ..., 1 (MHA -> MQA)
            kv = opts[trial.suggest_int("arch.kv_index", 0, len(opts) - 1)]
        fm = trial.suggest_float("model.ffn_multiple", *b.ffn_multiple)
        if b.lr is not None:
            trial.suggest_float("train.lr", *b.lr, log=True)
        self.stats["points"] += 1
        near = self.nearest_fm(arm, L, h, kv, fm)
        if near is None:  # cannot happen: the bounds were checked shape by shape
            self.stats["infeasible"] += 1
            return {"model.n_kv_heads": kv, "arch.infeasible": True}
        self.stats["first_try" if abs(near - fm) <= 0.5 / FM_GRID else "moved"] += 1
        return {"model.n_kv_heads": kv, "model.ffn_multiple": near}

    def describe_arch(self) -> str:
        b = self.arch
        if b is None:
            return ""
        return (
            f"architecture search: n_layers {b.n_layers[0]}..{b.n_layers[1]}, n_heads {b.n_heads}, "
            f"n_kv_heads {'divisors of n_heads' if b.kv_heads else '= n_heads'}, ffn_multiple "
            f"{b.ffn_multiple[0]}..{b.ffn_multiple[1]} (grid 1/{FM_GRID}), d_model solved"
            + (f", lr {b.lr[0]:g}..{b.lr[1]:g} (log)" if b.lr else "")
        )

    def sample_feasibility(self, n: int = 50, seed: int = 0) -> tuple[int, int]:
        """Sample n points exactly as the sweep does (this define-by-run function under an Optuna
        random sampler) and resolve each with stlm.models.solve_budget; return (feasible, n)."""
        # lazy: optuna, off the import path of a plan without a search
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        good, saved = 0, dict(self.stats)  # the sweep's own counts stay the sweep's
        for _ in range(n):
            trial = study.ask()
            extra = self(trial) or {}
            config = {**trial.params, **extra}
            if config.get("arch.infeasible"):
                continue
            try:
                self.resolve(config)
                good += 1
            except StlmError:
                pass
            study.tell(trial, 0.0)
        self.stats = saved
        return good, n


def distribution(p: ParamSpec):
    """A searched knob as the Optuna distribution the sweep samples it from."""
    # lazy: optuna, off the import path of a plan without a search
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.type == "loguniform":
        return FloatDistribution(p.low, p.high, log=True)
    if p.type == "uniform":
        return FloatDistribution(p.low, p.high, step=p.step)
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), step=int(p.step or 1))
    return CategoricalDistribution(p.choices)


def _suggest(trial, key: str, p: ParamSpec):
    d = distribution(p)
    if p.type in ("loguniform", "uniform"):
        return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
    if p.type == "int":
        return trial.suggest_int(key, d.low, d.high, step=d.step)
    return trial.suggest_categorical(key, d.choices)


# --------------------------------------------------------------------------- the space as recorded on the parent run


SPACE_PARAM = "sweep.search"  # parent-run param: {knob: optuna distribution JSON}


def parent_params(space) -> dict[str, str]:
    """{'sweep.search': JSON} for the sweep's parent run: the searched knobs as Optuna distributions
    (SearchSpace.distributions). Nothing when nothing is searched or the JSON would not fit a param."""
    # lazy: optuna, and stlm.tracking (mlflow's home) below the plan layer's light path
    from optuna.distributions import distribution_to_json

    from stlm.tracking import MAX_PARAM_CHARS

    dists = space.distributions()
    if not dists:
        return {}
    try:
        text = json.dumps({k: json.loads(distribution_to_json(d)) for k, d in dists.items()}, sort_keys=True)
    except (TypeError, ValueError):  # categorical choices JSON cannot hold: the report infers the space instead
        return {}
    return {SPACE_PARAM: text} if len(text) <= MAX_PARAM_CHARS else {}


def decode_space(text: str | None) -> dict | None:
    """The parent run's `sweep.search` back as {knob: distribution}; None when absent or unreadable."""
    if not text:
        return None
    # lazy: optuna, off the import path of a plan without a search
    from optuna.distributions import json_to_distribution

    try:
        return {k: json_to_distribution(json.dumps(v)) for k, v in json.loads(text).items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # an old or truncated record: the knobs are inferred from the trials instead
