"""The configuration dataclasses, one per concern, with every option commented (stlm.config loads them)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
