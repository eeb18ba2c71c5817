"""Tokenizers behind one interface: a BPE trained on the run's corpus, GPT-2, raw bytes.

    tok = load_tokenizer(cfg.model, cfg.data)
    ids = tok.encode("Once upon a time")          # no special tokens
    tok.decode(ids) == "Once upon a time"
    tok.byte_lengths[ids].sum() == len("Once upon a time".encode())

`byte_lengths[i]` is the number of UTF-8 bytes token i stands for (0 for end-of-text), so
bits-per-byte = sum(-log2 p(token)) / sum(byte_lengths[targets]) over the text targets
(byte length > 0; end-of-text is left out, see stlm.eval.bpb) is exact and comparable
across tokenizers: every tokenizer here is byte-level, so the bytes of the tokens of a text
are exactly the bytes of the text.

    name    vocab                         end-of-text id
    bpe     model.vocab_size (def. 2048)  vocab_size - 1   (trained with rustbpe, cached on disk)
    gpt2    50257                         50256            (tiktoken; offline from a gpt2.tiktoken file)
    bytes   257                           256
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock

from stlm.errors import StlmError
from stlm.offline import unreachable

if TYPE_CHECKING:
    from stlm.config import DataConfig, ModelConfig

EOT_TEXT = "<|endoftext|>"
# The GPT-2 pre-tokenizer (tiktoken's faster equivalent of the original GPT-2 regex).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # r50k_base == gpt2
BPE_FORMAT = 1  # bump when the cached-BPE file layout or the training recipe changes


class Tokenizer:
    """Common interface. Subclasses set name, vocab_size, eot_id and implement the byte mapping."""

    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def encode_documents(self, texts: list[str], dtype=np.uint16) -> np.ndarray:
        """Flat token array: each document followed by end-of-text (what the data cache stores)."""
        out: list[int] = []
        for ids in self.encode_batch(texts):
            out.extend(ids)
            out.append(self.eot_id)
        return np.asarray(out, dtype=dtype)

    @cached_property
    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes per token id (int32[vocab_size]); 0 for end-of-text, which bpb leaves out."""
        return np.array([len(self.token_bytes(i)) for i in range(self.vocab_size)], dtype=np.int32)

    @cached_property
    def identity(self) -> str:
        """A hash of the whole id -> bytes mapping and the pre-tokenizer: equal identity, equal tokenization."""
        h = hashlib.sha256(f"{self.name}|{self.vocab_size}|{self.eot_id}|{self._pattern()}".encode())
        for i in range(self.vocab_size):
            b = self.token_bytes(i)
            h.update(len(b).to_bytes(4, "little") + b)
        return h.hexdigest()[:16]

    def _pattern(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, identity={self.identity})"


class ByteTokenizer(Tokenizer):
    """Raw UTF-8 bytes: ids 0..255 are the byte values, 256 is end-of-text."""

    name = "bytes"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([token_id]) if token_id < 256 else b""

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def encode_documents(self, texts: list[str], dtype=np.uint16) -> np.ndarray:
        # Fast path: bytes -> uint8 array -> widen; one EOT after each document.
        parts = []
        eot = np.array([self.eot_id], dtype=dtype)
        for t in texts:
            parts.append(np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(dtype))
            parts.append(eot)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


class TiktokenTokenizer(Tokenizer):
    """A byte-level BPE run by tiktoken (GPT-2, or the BPE rustbpe trained). EOT is the last id."""

    def __init__(self, name: str, pattern: str, mergeable_ranks: dict[bytes, int]):
        # lazy: tiktoken, only for the gpt2 tokenizer
        import tiktoken

        self.name = name
        self.eot_id = len(mergeable_ranks)  # ranks are 0..n-1, so EOT = n and vocab = n + 1
        self.vocab_size = self.eot_id + 1
        if sorted(mergeable_ranks.values()) != list(range(self.eot_id)):
            raise StlmError(f"Tokenizer {name!r}: token ranks are not contiguous 0..{self.eot_id - 1}.")
        self._pattern_str = pattern
        self._ranks = mergeable_ranks
        self.enc = tiktoken.Encoding(
            name=f"stlm-{name}",
            pat_str=pattern,
            mergeable_ranks=mergeable_ranks,
            special_tokens={EOT_TEXT: self.eot_id},
        )

    # Pickled by value (the Pool workers of stlm.data.prepare rebuild the tiktoken object).
    def __getstate__(self):
        return {"name": self.name, "pattern": self._pattern_str, "ranks": self._ranks}

    def __setstate__(self, state):
        self.__init__(state["name"], state["pattern"], state["ranks"])

    def _pattern(self) -> str:
        return self._pattern_str

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: "<|endoftext|>" inside text is just text, never the special token.
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([int(i) for i in ids if i != self.eot_id])

    def token_bytes(self, token_id: int) -> bytes:
        if token_id == self.eot_id:
            return b""
        return self.enc.decode_single_token_bytes(token_id)

    def encode_documents(self, texts: list[str], dtype=np.uint16) -> np.ndarray:
        out: list[int] = []
        for t in texts:
            out.extend(self.enc.encode_ordinary(t))
            out.append(self.eot_id)
        return np.asarray(out, dtype=dtype)


# --------------------------------------------------------------------------- gpt2


def load_gpt2(vocab_file: str | None = None) -> TiktokenTokenizer:
    """GPT-2 from a local gpt2.tiktoken (data.gpt2_vocab_file or $STLM_GPT2_VOCAB), else tiktoken's download."""
    vocab_file = vocab_file or os.environ.get("STLM_GPT2_VOCAB")
    if vocab_file:
        # lazy: tiktoken, only for the gpt2 tokenizer
        from tiktoken.load import load_tiktoken_bpe

        path = Path(vocab_file).expanduser()
        if not path.is_file():
            raise StlmError(f"data.gpt2_vocab_file / $STLM_GPT2_VOCAB: {str(path)!r} does not exist.")
        try:
            ranks = load_tiktoken_bpe(str(path), expected_hash=None)
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise StlmError(f"data.gpt2_vocab_file {str(path)!r} is not a tiktoken BPE file ({e}).") from None
        if len(ranks) != 50256:
            raise StlmError(f"data.gpt2_vocab_file {str(path)!r} has {len(ranks)} tokens; GPT-2 has 50256 (+ EOT).")
        return TiktokenTokenizer("gpt2", GPT2_PATTERN, ranks)
    why = gpt2_unavailable()  # offline, or no route: at once, not after tiktoken's retries
    if why is None:
        try:
            # lazy: tiktoken, only for the gpt2 tokenizer
            import tiktoken

            enc = tiktoken.get_encoding("gpt2")  # downloads the vocabulary once, then uses tiktoken's cache
            return TiktokenTokenizer("gpt2", GPT2_PATTERN, dict(enc._mergeable_ranks))
        except Exception as e:  # noqa: BLE001 - offline: requests/urllib errors of many kinds
            why = f"{type(e).__name__}: {e}"
    raise StlmError(
        "model.tokenizer=gpt2 needs the GPT-2 vocabulary, and tiktoken could not download it "
        f"({why}). Offline, point data.gpt2_vocab_file (or the STLM_GPT2_VOCAB "
        "environment variable) at a local gpt2.tiktoken file (the r50k_base.tiktoken file of "
        "openaipublic, sha256 306cd27f...)."
    )


# The two files tiktoken's "gpt2" encoding downloads, and keeps in its cache (tiktoken_ext.openai_public).
GPT2_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)


def gpt2_cached() -> bool:
    """Both files tiktoken's "gpt2" encoding reads are in its cache (tiktoken.load.read_file_cached)."""
    cache = (
        os.environ.get("TIKTOKEN_CACHE_DIR")
        or os.environ.get("DATA_GYM_CACHE_DIR")
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    )
    return all(Path(cache, hashlib.sha1(u.encode()).hexdigest()).is_file() for u in GPT2_URLS)


def gpt2_unavailable() -> str | None:
    """None when tiktoken can build GPT-2 now (its cache, or a download host that answers), else why
    not; offline (stlm.offline) the download host is not tried."""
    return None if gpt2_cached() else unreachable(GPT2_URLS[0], download=True)


# --------------------------------------------------------------------------- bpe (rustbpe)


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str | None = None) -> TiktokenTokenizer:
    """Train a byte-level BPE with rustbpe: vocab_size includes the 256 bytes and the end-of-text token.

    rustbpe's vocab_size counts the 256 byte tokens plus the merges, so we ask it for
    vocab_size - 1 and put end-of-text at id vocab_size - 1.
    """
    # lazy: rustbpe, only when a BPE is trained
    import rustbpe

    bpe = rustbpe.Tokenizer()
    kwargs = {"pattern": pattern} if pattern else {}
    bpe.train_from_iterator(iter(texts), vocab_size - 1, **kwargs)
    ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
    if len(ranks) != vocab_size - 1:
        raise StlmError(
            f"BPE training produced only {len(ranks)} tokens for model.vocab_size={vocab_size}: the training "
            "text has too few distinct pairs. Lower model.vocab_size or raise data.bpe_train_chars."
        )
    return TiktokenTokenizer("bpe", bpe.get_pattern(), ranks)


def _save_bpe(tok: TiktokenTokenizer, path: Path, meta: dict) -> None:
    """Atomic write: a temp file in the same directory, fsync, then os.replace."""
    ranks = [None] * len(tok._ranks)
    for b, r in tok._ranks.items():
        ranks[r] = base64.b64encode(b).decode()
    data = {"format": BPE_FORMAT, "pattern": tok._pattern_str, "ranks": ranks, "identity": tok.identity, **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_bpe(path: Path) -> TiktokenTokenizer | None:
    """The cached BPE, or None if the file is missing, truncated or from another format."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != BPE_FORMAT:
            return None
        ranks = {base64.b64decode(s): i for i, s in enumerate(data["ranks"])}
        tok = TiktokenTokenizer("bpe", data["pattern"], ranks)
    except (OSError, ValueError, KeyError, TypeError, StlmError):
        return None
    return tok if tok.identity == data.get("identity") else None


def load_bpe(vocab_size: int, data_cfg: DataConfig) -> TiktokenTokenizer:
    """The BPE for (corpus, vocab_size, bpe_train_chars): trained once, then read from the cache.

    Trained on the first data.bpe_train_chars characters of the *training* split (never val),
    independent of data.max_chars, so runs that differ only in how much data they read share
    one tokenizer.
    """
    # inside: stlm.data imports this module (a BPE is trained on a data source's corpus)
    from stlm.data.sources import cache_root, get_source, source_key

    source = get_source(data_cfg)
    key_fields = {
        "format": BPE_FORMAT,
        "source": source_key(source, data_cfg),
        "vocab_size": vocab_size,
        "train_chars": data_cfg.bpe_train_chars,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(data_cfg) / "tokenizers" / f"bpe-{vocab_size}-{key}.json"
    tok = _load_bpe(path)
    if tok is not None:
        return tok
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        tok = _load_bpe(path)  # another process may have trained it while we waited
        if tok is not None:
            return tok
        t0 = time.time()
        texts = source.documents("train", max_chars=data_cfg.bpe_train_chars)
        tok = train_bpe(texts, vocab_size)
        _save_bpe(tok, path, {"key": key_fields, "train_seconds": round(time.time() - t0, 2)})
    return tok


# --------------------------------------------------------------------------- registry

TOKENIZERS: dict[str, Callable[[ModelConfig, DataConfig], Tokenizer]] = {
    "bpe": lambda m, d: load_bpe(m.effective_vocab_size, d),
    "gpt2": lambda m, d: load_gpt2(d.gpt2_vocab_file),
    "bytes": lambda m, d: ByteTokenizer(),
}


def load_tokenizer(model_cfg: ModelConfig, data_cfg: DataConfig) -> Tokenizer:
    """The tokenizer model.tokenizer names; its vocab_size equals model_cfg.effective_vocab_size."""
    if model_cfg.tokenizer not in TOKENIZERS:
        raise StlmError(f"model.tokenizer: {model_cfg.tokenizer!r} is not one of {', '.join(TOKENIZERS)}.")
    tok = TOKENIZERS[model_cfg.tokenizer](model_cfg, data_cfg)
    assert tok.vocab_size == model_cfg.effective_vocab_size, (tok.vocab_size, model_cfg.effective_vocab_size)
    return tok
