"""`key=value` on the command line: config keys of every arm, or the sweep file's own keys
(seeds=..., search.samples=...)."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any

from stlm.config import (
    parse_override,
)
from stlm.errors import StlmError
from stlm.sweep.plan.schema import (
    CONFIG_KEYS,
    ArchitectureSpec,
    BudgetSpec,
    ParamSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    SweepSpec,
)
from stlm.sweep.plan.validate import check_config_key

# Top-level sweep keys a `key=value` on the command line sets in the sweep file itself; any other
# key is a config key (eval.* and tracking.* are both: as config keys they win over the sweep's).
SWEEP_OVERRIDE_KEYS = (
    "name",
    "base",
    "budget",
    "grid",
    "control",
    "seeds",
    "search",
    "scheduler",
    "resources",
    "metric",
    "mode",
    "max_failures",
    "log_checkpoint",
)

ARCH_SEARCHED = ("model.n_layers", "model.n_heads", "model.n_kv_heads", "model.ffn_multiple", "model.d_model")


def _leaves(cls, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        sub = next(
            (
                t
                for t in (BudgetSpec, SearchSpec, SchedulerSpec, ResourcesSpec, ArchitectureSpec)
                if t.__name__ in str(f.type)
            ),
            None,
        )
        out += _leaves(sub, key + ".") if sub is not None else [key]
    return out


SWEEP_KEYS: tuple[str, ...] = tuple(k for k in _leaves(SweepSpec) if k.split(".")[0] in SWEEP_OVERRIDE_KEYS)


def _no_such_key(key: str, text: str) -> StlmError:
    """An override naming neither a sweep key nor a config key: suggest the closest of both."""
    keys = SWEEP_KEYS + CONFIG_KEYS
    close = [k for k in keys if k.endswith("." + key)][:1]  # 'cpus_per_worker' -> 'resources.cpus_per_worker'
    close = close or difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # 'seed' -> 'seeds', 'cpus_per_worker' -> 'resources.cpus_per_worker'
        last = key.rsplit(".", 1)[-1]
        by_last = difflib.get_close_matches(last, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.7)
        close = [k for k in keys if by_last and k.rsplit(".", 1)[-1] == by_last[0]][:1]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return StlmError(
        f"override {text!r}: {key!r} is neither a sweep key nor a config key.{hint} Sweep keys "
        f"({', '.join(SWEEP_OVERRIDE_KEYS)}, e.g. search.samples=1 or resources.cpus_per_worker=1) "
        "set the sweep file; any other dotted key (train.lr=3e-4) sets the base config."
    )


def _set_search_param(raw: dict, rest: str, value: Any, text: str) -> None:
    """search.params.<config key>[.<field>]=value: the param names are dotted config keys themselves."""
    params = raw.setdefault("search", {}).setdefault("params", {}) or {}
    raw["search"]["params"] = params
    name = next((p for p in params if rest == p or rest.startswith(p + ".")), None)
    if name is None or rest == name:
        if value is None:  # search.params.train.lr=null: stop searching it
            params.pop(rest, None)
            return
        check_config_key(rest, f"override {text!r}")
        params[rest] = value  # a whole {type: ..., low: ..., high: ...} mapping, validated with the file
        return
    field_name = rest[len(name) + 1 :]
    fields = [f.name for f in dataclasses.fields(ParamSpec)]
    if field_name not in fields:
        close = difflib.get_close_matches(field_name, fields, n=1)
        hint = f" Did you mean 'search.params.{name}.{close[0]}'?" if close else ""
        raise StlmError(
            f"override {text!r}: {field_name!r} is not a field of a searched knob.{hint} Fields: {', '.join(fields)}."
        )
    if not isinstance(params[name], dict):
        raise StlmError(f"override {text!r}: search.params.{name} is not a mapping in the sweep file.")
    params[name][field_name] = value


def apply_sweep_overrides(raw: dict, overrides: Iterable[str]) -> tuple[list[str], list[str]]:
    """Apply the sweep-level `key=value` overrides to the raw sweep file `raw` (in place).

    Returns (the config overrides, notes). A config override of a knob the sweep searches pins it:
    the knob leaves search.params (said in the notes, which --dry-run prints); one of a key an arm
    or the grid sets, or that search.architecture searches, is refused (it would be overwritten).
    """
    config_overrides, notes = [], []
    for text in overrides:
        key, value = parse_override(text)
        head = key.split(".", 1)[0]
        if head == "config" and "." in key:
            key, text = key[len("config.") :], text[len("config.") :]
            head = key.split(".", 1)[0]
        elif head in SWEEP_OVERRIDE_KEYS:
            rest = key[len(head) + 1 :]
            if key.startswith("search.params."):
                _set_search_param(raw, key[len("search.params.") :], value, text)
            elif head == "grid" and rest:
                check_config_key(rest, f"override {text!r}")
                raw.setdefault("grid", {})[rest] = value
            elif key in SWEEP_KEYS or (head in ("search", "budget") and rest in ("", "architecture")):
                parent = raw
                for part in key.split(".")[:-1]:  # budget: null / architecture: true become sections
                    if not isinstance(parent.get(part), dict):
                        parent[part] = {}
                    parent = parent[part]
                parent[key.rsplit(".", 1)[-1]] = value
            else:
                raise _no_such_key(key, text)
            continue
        if key not in CONFIG_KEYS:
            if key in {k.rsplit(".", 1)[0] for k in CONFIG_KEYS}:
                check_config_key(key, f"override {text!r}")  # a section: its own message
            raise _no_such_key(key, text)
        searched = (raw.get("search") or {}).get("params") or {}
        if key in searched:
            del searched[key]
            note = (
                f"{text} pins a knob the sweep searches: search.params.{key} is not searched in this run; "
                "every trial uses the given value"
            )
            search = raw["search"]
            if not searched and not search.get("architecture") and int(search.get("samples", 1) or 1) > 1:
                note += f"; with nothing left to search each cell runs once (search.samples {search['samples']} -> 1)"
                search["samples"] = 1
            notes.append(note + ".")
        arch = (raw.get("search") or {}).get("architecture")
        if arch not in (None, False) and key in ARCH_SEARCHED:
            raise StlmError(
                f"override {text!r}: search.architecture searches (or solves) {key} in this sweep, "
                "so a fixed value would be overwritten; set search.architecture=false to fix the shape."
            )
        setters = [f"grid.{key}"] if key in (raw.get("grid") or {}) else []
        setters += [f"arms ({a.get('name')})" for a in (raw.get("arms") or []) if key in (a.get("set") or {})]
        if setters:
            raise StlmError(
                f"override {text!r}: {key} is set by {setters[0]} (it is what the arms compare), "
                f"so the override would be overwritten; override grid.{key}=[...] instead, or edit the arms."
            )
        config_overrides.append(text)
    return config_overrides, notes
