"""Typed configuration: one commented dataclass per concern, loaded from YAML.

    cfg = load_config("configs/baseline-10m.yaml", overrides=["train.lr=1e-3"])

Every key is validated before anything runs: an unknown key names the closest valid
key, a wrong type names the expected type, and a value outside its allowed set lists
the allowed values. Errors always carry the dotted key path (``model.ffn``).

A swappable part (``model.ffn``, ``model.positional``, ...) is a string whose allowed
values are the keys of the registry that implements it; those registries live beside
the code (stlm.models.layers.*) and are checked against CHOICES in a test.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stlm.errors import StlmError

# Allowed values of every string-valued option. The registries in the code must match.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.tokenizer": ("bpe", "gpt2", "bytes"),
    "model.embedder": ("token", "byte_pooled"),
    "model.positional": ("rope", "sincos", "learned", "none", "alibi"),
    "model.ffn": ("swiglu", "gelu", "relu2"),
    "model.norm": ("rmsnorm", "layernorm", "none"),
    "model.sharing.mode": ("none", "ffn_all", "ffn_group", "ffn_lora", "block_all", "block_repeat"),
    "model.dropout.schedule": ("constant", "linear", "triangle", "early", "late"),
    "train.schedule": ("cosine", "wsd", "constant"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "data.split": ("hashed", "contiguous"),
}


# --------------------------------------------------------------------------- model


@dataclass
class SharingConfig:
    """Weight sharing across layers (the parameter count is of *unique* weights)."""

    mode: str = (
        "none"  # none | ffn_all (MobiLlama) | ffn_group | ffn_lora | block_all (ALBERT) | block_repeat (MobileLLM)
    )
    group_size: int = 2  # ffn_group: one FFN per group of this many consecutive layers
    lora_rank: int = 8  # ffn_lora: rank of the per-layer adapter on the shared FFN
    repeats: int = 2  # block_repeat: each block is run this many times in a row


@dataclass
class DropoutConfig:
    """Dropout probabilities and their schedule over training.

    The schedule gives a multiplier m(t) in [0, 1] applied to all three probabilities,
    with t = step / max_steps:
      constant  m = 1
      linear    m goes from `start` to `end`
      triangle  m goes from `start` up to 1 at t = 0.5, then back down to `start`
      early     m = 1 for t < `switch`, then 0
      late      m = 0 for t < `switch`, then 1
    """

    embedding: float = 0.0
    attention: float = 0.0
    residual: float = 0.0
    schedule: str = "constant"
    start: float = 1.0  # linear / triangle
    end: float = 0.0  # linear
    switch: float = 0.5  # early / late: fraction of training where dropout flips


@dataclass
class ByteLevelConfig:
    """Byte-level embedder/head pooled on BPE token boundaries (model.embedder = byte_pooled)."""

    byte_dim: int = 128  # width of the byte embeddings and of the small chunk transformers
    chunk_len: int = 16  # bytes per BPE token chunk; longer tokens are truncated, EOT never is
    encoder_layers: int = 2
    decoder_layers: int = 2
    n_heads: int = 4


@dataclass
class ModelConfig:
    """The shell: embedder -> core (n_layers blocks) -> head."""

    tokenizer: str = "bpe"  # bpe (trained on the run's corpus) | gpt2 (tiktoken) | bytes
    vocab_size: int | None = None  # bpe: size to train (default 2048); gpt2 and bytes: fixed, leave unset
    embedder: str = "token"  # token | byte_pooled
    context_length: int = 256
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (MHA); 1 = MQA; in between = GQA
    qk_norm: bool = False
    positional: str = "rope"
    rope_theta: float = 10000.0
    ffn: str = "swiglu"
    ffn_dim: int | None = None  # hidden width; None = ffn_multiple * d_model rounded up to `multiple_of`
    ffn_multiple: float = 4.0
    multiple_of: int = 64  # ffn_dim (and solved widths) are multiples of this
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    bias: bool = False  # biases in linear layers
    tie_embeddings: bool = True
    init_std: float = 0.02  # GPT-2 init; residual projections get init_std / sqrt(2 * n_layers)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    byte_level: ByteLevelConfig = field(default_factory=ByteLevelConfig)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def effective_vocab_size(self) -> int:
        """Rows of the embedding table: fixed for gpt2 and bytes, configurable for bpe."""
        if self.tokenizer == "gpt2":
            return 50257
        if self.tokenizer == "bytes":
            return 256 + 1  # 256 byte values + end-of-text
        return self.vocab_size or 2048

    @property
    def effective_ffn_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        raw = self.ffn_multiple * self.d_model
        if self.ffn == "swiglu":  # three matrices instead of two: keep the parameter count of a 2-matrix FFN
            raw = raw * 2 / 3
        m = self.multiple_of
        return int(-(-raw // m) * m)


# --------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    """Where text comes from and where its tokenized cache lives."""

    source: str = "generated"  # generated | a short name (tinystories, ...) | a hub id | a local file or dir
    subset: str | None = None  # hub config name (e.g. 20231101.simple)
    revision: str | None = None  # hub revision, recorded in the cache manifest
    text_column: str = "text"
    max_chars: int | None = 4_000_000  # cap on training text read (None = all); the generated corpus is infinite
    val_fraction: float = 0.01  # share of documents held out (the generated corpus has its own fixed split)
    split_seed: int = 0
    # How val is taken out of a source without its own val split: hashed = each document by the hash of
    # (split_seed, text); contiguous = the last val_fraction of the text, as nanoGPT (local files only)
    split: str = "hashed"
    cache_dir: str | None = None  # default: $STLM_CACHE or ~/.cache/stlm
    num_proc: int = 2  # tokenization processes
    gpt2_vocab_file: str | None = None  # local gpt2.tiktoken for offline GPT-2 (or $STLM_GPT2_VOCAB)
    bpe_train_chars: int = 2_000_000  # text used to train the BPE tokenizer


# --------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto = cuda if available else cpu
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    batch_size: int = 16  # sequences per micro-batch per worker
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine, wsd)
    schedule: str = "cosine"  # cosine (with warmup) | wsd (warmup-stable-decay) | constant (after warmup)
    warmup_steps: int = 50
    decay_fraction: float = 0.2  # wsd: last fraction of steps spent decaying
    weight_decay: float = 0.1
    decay_norms_and_embeddings: bool = False  # apply weight decay to norms, biases and embeddings too
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables
    log_interval: int = 10  # steps between train-loss reports
    eval_interval: int = 100  # steps between validation (loss, bpb) and checkpoints
    eval_batches: int = 8  # validation batches per evaluation
    keep_checkpoints: int = 2  # newest intact checkpoints kept (>= 1): a damaged newest one has one to fall back to
    out_dir: str = "runs"  # standalone `stlm train` writes checkpoints under out_dir/run_name
    run_name: str | None = None


# --------------------------------------------------------------------------- evaluation / tracking


@dataclass
class EvalConfig:
    """Benchmarks run at the end of training (and by `stlm eval`)."""

    tasks: list[str] = field(default_factory=list)  # e.g. [blimp, hellaswag, arc_easy]; bpb is always measured
    limit: int | None = None  # items per task, drawn with `seed`; None = all
    seed: int = 1234
    data_dir: str | None = None  # local benchmark files (else $STLM_BENCHMARKS, else the hub)
    batch_size: int = 32
    write_items: bool = True  # per-item predictions as JSONL (and an MLflow artifact)


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "stlm"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# --------------------------------------------------------------------------- loading and validation


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
        raise StlmError(f"Config file {str(p)!r} does not exist (working directory: {os.getcwd()}).")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StlmError(f"Config file {str(p)!r} is not valid YAML{where}: {getattr(e, 'problem', e)}.") from None
    if data is None or data == {}:  # an empty file would silently train (or sweep) the defaults
        raise StlmError(f"Config file {str(p)!r} is empty. {EMPTY_FILE_HINT}")
    if not isinstance(data, dict):
        raise StlmError(f"Config file {str(p)!r} must hold a mapping of sections (model, data, train, ...).")
    return data


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


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
