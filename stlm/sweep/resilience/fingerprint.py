"""What a sweep's plan is, as a flat {key: value} to compare: `--resume` continues only the plan it started with.

    fp = fingerprint(sweep)                      # written as plan.json beside plan.pkl when the sweep starts
    check_unchanged(old_fp, sweep, store)        # StlmError naming every difference (exit 2), nothing written

The plan is what Tune's saved experiment and Optuna's searcher were built from: the arms with their resolved
(budget-solved) configs, the seeds, the samples per cell, the search space, the scheduler, the budget and the
metric. Left out: how and where it runs (resources, tracking, max_failures, log_checkpoint) and the config keys
that are locations on this machine (caches, vocabulary file, benchmark directory, tracking URI), which
legitimately differ when a sweep is resumed from another machine.
"""

from __future__ import annotations

import dataclasses
import json

from stlm.config import flatten, to_dict
from stlm.errors import StlmError

PLAN_KEYS = ("name", "budget", "grid", "arms", "control", "seeds", "search", "scheduler", "metric", "mode")
LOCATIONS = ("data.cache_dir", "data.gpt2_vocab_file", "eval.data_dir", "tracking.uri", "train.out_dir")
ARM_NAMES = "the arms"
SHOWN = 8  # differences listed; the rest are counted


def fingerprint(sweep) -> dict[str, str]:
    """{key: JSON text}: the sweep's own keys (seeds, search, ...), the resolved arm names, and every config
    key of every arm as "<arm>: <dotted key>"."""
    spec = dataclasses.asdict(sweep.spec)
    knobs = spec["search"].pop("params")
    fp = {key: _text(spec[key]) for key in PLAN_KEYS}
    fp.update({f"search.params.{knob}": _text(v) for knob, v in knobs.items()})  # a changed knob named alone
    fp[ARM_NAMES] = _text([a.name for a in sweep.arms])
    for arm in sweep.arms:
        for key, value in flatten(to_dict(arm.cfg)).items():
            if key not in LOCATIONS:
                fp[f"{arm.name}: {key}"] = _text(value)
    return fp


def _text(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def differences(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """'key: old -> new' for every key whose value changed. A config key only one plan has (one added to
    stlm since) is not a change; an added or removed arm shows in ARM_NAMES."""
    changed = [k for k in {**old, **new} if old.get(k) != new.get(k) and (": " not in k or k in old and k in new)]
    arms = json.loads(new.get(ARM_NAMES, "[]"))
    out, seen = [], set()
    for key in changed:
        arm, sep, sub = key.partition(": ")
        if sep and len(arms) > 1 and arm in arms and sub not in seen:
            same = [f"{a}: {sub}" for a in arms]  # the same change in every arm is said once
            if all(k in old and k in new and (old[k], new[k]) == (old[key], new[key]) for k in same):
                seen.add(sub)
                out.append(f"{sub} (every arm): {old[key]} -> {new[key]}")
                continue
        if sub not in seen:
            out.append(f"{key}: {old.get(key, '(absent)')} -> {new.get(key, '(absent)')}")
    return out


def check_unchanged(old: dict[str, str], sweep, store) -> None:
    """Refuse (StlmError, one paragraph) a --resume whose sweep file or overrides give another plan."""
    found = differences(old, fingerprint(sweep))
    if not found:
        return
    shown = "; ".join(found[:SHOWN]) + (f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else "")
    raise StlmError(
        f"--resume: the sweep file {sweep.path} (with the overrides given) no longer gives the plan {store} "
        f"started with ({len(found)} difference{'s' if len(found) > 1 else ''}: {shown}). --resume continues "
        "only the plan a sweep started with: its trials, seeds and samples were fixed then, so more seeds or "
        "samples are a new sweep too. Resume with the file as it was, start this plan afresh with --overwrite, "
        "or run it in another --experiment-dir. Nothing was written."
    )
