"""YAML to a validated Config: strict coercion, dotted overrides, cross-field checks, and back to YAML."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from stlm.config.schema import CHOICES, Config
from stlm.errors import StlmError


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting only the lossless cases (int -> float, '1e-3' -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except StlmError as e:
                errors.append(e)
        raise errors[0] if errors else StlmError(f"{path}: null is not allowed")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):  # `eval.tasks=blimp,arc_easy` on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise StlmError(f"{path}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise StlmError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise StlmError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise StlmError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return parse_int(value)
            except ValueError:
                pass
        raise StlmError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise StlmError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise StlmError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise StlmError(f"{path}: expected a string, got {value!r}")
        value = str(value)
        if path_key(path) in CHOICES and value not in CHOICES[path_key(path)]:
            allowed = CHOICES[path_key(path)]
            close = difflib.get_close_matches(value, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise StlmError(f"{path}: {value!r} is not one of {', '.join(allowed)}.{hint}")
        return value
    raise StlmError(f"{path}: unsupported type {_type_name(tp)}")


def parse_int(text: str) -> int:
    """Integers may be written 50M, 10k, 1.5B or 1_000."""
    t = text.strip().replace("_", "")
    mult = {"k": 10**3, "K": 10**3, "m": 10**6, "M": 10**6, "b": 10**9, "B": 10**9}
    if t and t[-1] in mult:
        return int(round(float(t[:-1]) * mult[t[-1]]))
    return int(t)


def path_key(path: str) -> str:
    """Strip the root prefix and list indices: 'config.model.ffn' -> 'model.ffn'."""
    parts = [p for p in path.split(".") if p]
    return ".".join(p.split("[")[0] for p in parts)


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        where = path or "the config"
        raise StlmError(f"{where}: expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {(path + '.' if path else '') + close[0]!r}?" if close else ""
            raise StlmError(f"Unknown config key {full!r}.{hint} Valid keys here: {', '.join(names)}.")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'ffn': 'gelu'}} -> {'model.ffn': 'gelu'} (what MLflow gets as params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise StlmError(f"Override {dotted!r}: {k!r} is a value, not a section.")
        cur = nxt
    cur[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); values are parsed as YAML scalars."""
    if "=" not in text:
        raise StlmError(f"Override {text!r} must look like key.sub=value (for example train.lr=3e-4).")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


EMPTY_FILE_HINT = (
    "A config needs at least one section (model, data, train, eval, tracking), for example "
    "`train: {max_steps: 200}`; configs/quickstart.yaml is a small complete one."
)


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise StlmError(f"Config file {str(p)!r} {what} (working directory: {os.getcwd()}).")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise StlmError(f"Config file {str(p)!r} is not valid YAML{yaml_error_at(e)}.") from None
    if data is None or data == {}:  # an empty file would silently train (or sweep) the defaults
        raise StlmError(f"Config file {str(p)!r} is empty. {EMPTY_FILE_HINT}")
    if not isinstance(data, dict):
        raise StlmError(f"Config file {str(p)!r} must hold a mapping of sections (model, data, train, ...).")
    return data


def yaml_error_at(e: yaml.YAMLError) -> str:
    """' at line L, column C: what', at the line to look at: where an unclosed {...} or [...] opened (PyYAML
    notices the problem only lines later), else where it was noticed."""
    mark, context, ctx = getattr(e, "problem_mark", None), getattr(e, "context", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is None:
        return f": {problem}"
    noticed = f"line {mark.line + 1}, column {mark.column + 1}"
    if ctx is not None and context and ctx.line < mark.line:
        return f" at line {ctx.line + 1}, column {ctx.column + 1}: {context} opened there ({problem}, at {noticed})"
    return f" at {noticed}: {problem}"


def build_config(data: dict, overrides: typing.Iterable[str] = ()) -> Config:
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike, overrides: typing.Iterable[str] = ()) -> Config:
    """Load a YAML config, apply `key.sub=value` overrides, validate, return a Config."""
    data = read_yaml(path)
    try:
        return build_config(data, overrides)
    except StlmError as e:
        raise StlmError(f"In {path}: {e}") from None


def validate(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    m, t = cfg.model, cfg.train

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise StlmError(msg)

    for key in ("n_layers", "d_model", "n_heads", "context_length", "multiple_of"):
        need(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}.")
    need(m.d_model % m.n_heads == 0, f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads}).")
    need(
        m.n_kv_heads is None or (0 < m.n_kv_heads <= m.n_heads and m.n_heads % m.n_kv_heads == 0),
        f"model.n_kv_heads ({m.n_kv_heads}) must divide model.n_heads ({m.n_heads}).",
    )
    need(
        m.positional != "rope" or m.head_dim % 2 == 0,
        f"model.positional=rope needs an even head dim, got {m.head_dim}.",
    )
    need(m.ffn_dim is None or m.ffn_dim > 0, f"model.ffn_dim must be positive, got {m.ffn_dim}.")
    if m.tokenizer in ("gpt2", "bytes"):
        need(
            m.vocab_size in (None, m.effective_vocab_size),
            f"model.vocab_size is fixed at {m.effective_vocab_size} for model.tokenizer={m.tokenizer}; remove it.",
        )
    else:
        need(
            m.vocab_size is None or 260 <= m.vocab_size <= 65535,
            f"model.vocab_size must be in [260, 65535], got {m.vocab_size}.",
        )
    need(
        m.embedder != "byte_pooled" or m.tokenizer != "bytes",
        "model.embedder=byte_pooled pools bytes on BPE token boundaries: use model.tokenizer=bpe or gpt2.",
    )
    for key in ("embedding", "attention", "residual", "start", "end", "switch"):
        v = getattr(m.dropout, key)
        need(0.0 <= v <= 1.0, f"model.dropout.{key} must be in [0, 1], got {v}.")
    need(m.sharing.group_size >= 1, "model.sharing.group_size must be >= 1.")
    need(m.sharing.lora_rank >= 1, "model.sharing.lora_rank must be >= 1.")
    need(m.sharing.repeats >= 1, "model.sharing.repeats must be >= 1.")
    bl = m.byte_level
    need(bl.chunk_len >= 2, "model.byte_level.chunk_len must be >= 2.")
    need(
        bl.byte_dim % bl.n_heads == 0,
        f"model.byte_level.byte_dim ({bl.byte_dim}) must be divisible by model.byte_level.n_heads ({bl.n_heads}).",
    )
    need(t.max_steps > 0, "train.max_steps must be positive.")
    need(t.batch_size > 0 and t.grad_accum > 0, "train.batch_size and train.grad_accum must be positive.")
    need(t.lr > 0, "train.lr must be positive.")
    need(0 <= t.warmup_steps, "train.warmup_steps must be >= 0.")
    need(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio must be in [0, 1].")
    need(0.0 < t.decay_fraction <= 1.0, "train.decay_fraction must be in (0, 1].")
    need(t.eval_interval > 0 and t.log_interval > 0, "train.eval_interval and train.log_interval must be positive.")
    need(cfg.data.val_fraction > 0 and cfg.data.val_fraction < 0.5, "data.val_fraction must be in (0, 0.5).")
    need(cfg.eval.limit is None or cfg.eval.limit > 0, "eval.limit must be positive or null.")
    need(
        cfg.data.max_chars is None or cfg.data.max_chars > 0,
        f"data.max_chars must be positive, or null for the whole source; got {cfg.data.max_chars}.",
    )


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
