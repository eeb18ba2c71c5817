"""Where text comes from: data.source names one of

    generated                the built-in story generator (stlm.data.generated), the default
    tinystories, ...         a short name from HUB_SOURCES below
    owner/name               any Hugging Face hub dataset with a text column (data.text_column)
    path/to/file_or_dir      local .txt / .jsonl / .json / .parquet files (a directory: all of them)

A Source yields documents (str) for the "train" and "val" splits:

- Sources with their own validation split (generated, tinystories) use it; data.split does
  not apply to them and `contiguous` is refused.
- The others are split by document, as data.split says:
  hashed (default)  a document is held out for val when the hash of (data.split_seed, its
                    text) falls below data.val_fraction. The split is therefore fixed per
                    document, independent of reading order, of max_chars and of the machine.
  contiguous        nanoGPT's split: the documents that start in the last data.val_fraction of
                    the corpus's characters are val, everything before them is train (the cut
                    falls on a document boundary). Needs the corpus's length first, so only
                    local files (one extra reading pass); a streamed hub corpus is refused.
  prepare() reads such a corpus once for both splits (Source.splits); data.split is part of
  the cache key (source_key).

Caps: train reads documents until data.max_chars characters; val until
val_chars(data) = max(VAL_MIN_CHARS, max_chars * val_fraction), at least 250k characters so
that a validation pass has enough tokens to be stable. Sources with a hashed split can only
give the held-out documents that exist in the corpus (a 1 MB file with val_fraction 0.01
has ~10k val characters). The last document read may overshoot a cap (documents are never
cut); max_chars=None reads everything (refused for the infinite generated corpus).

Hub datasets are streamed (datasets.load_dataset(..., streaming=True)), so only what is read
is downloaded. Pin data.revision for reproducibility: it is part of the cache key.
Local .txt files are split into documents at blank lines (paragraphs), or at newlines when
the file has no blank line at all. The separators are dropped: they are not part of any
document, not counted in max_chars or val_fraction and not tokenized; prepare() puts an
end-of-text token after each document instead, which val_bpb does not score (stlm.eval.bpb).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stlm.config import CHOICES
from stlm.data import generated
from stlm.data.generated import generate_stories
from stlm.errors import StlmError
from stlm.offline import OFFLINE_HINT, hub_down

if TYPE_CHECKING:
    from stlm.config import DataConfig

VAL_MIN_CHARS = 250_000
LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class HubSpec:
    path: str
    subset: str | None = None
    train_split: str = "train"
    val_split: str | None = None  # None: val is split out of train (data.split)


# Short names. babylm_100m is nilq/babylm-100M: a parquet export of the BabyLM 100M-word (strict track)
# corpus, one line per row in a "text" column, with train / validation / test splits (the official
# cambridge-climb/BabyLM repo needs a loading script, which datasets >= 4 no longer runs).
HUB_SOURCES: dict[str, HubSpec] = {
    "tinystories": HubSpec("roneneldan/TinyStories", val_split="validation"),
    "openwebtext": HubSpec("Skylion007/openwebtext"),
    "simple_en_wiki": HubSpec("wikimedia/wikipedia", "20231101.simple"),
    "en_wiki": HubSpec("wikimedia/wikipedia", "20231101.en"),
    "babylm_100m": HubSpec("nilq/babylm-100M", val_split="validation"),
    "fineweb_edu": HubSpec("HuggingFaceFW/fineweb-edu", "sample-10BT"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_root(data_cfg: DataConfig) -> Path:
    """data.cache_dir, else $STLM_CACHE, else ~/.cache/stlm; made absolute (Ray changes trial cwd)."""
    root = data_cfg.cache_dir or os.environ.get("STLM_CACHE") or "~/.cache/stlm"
    return Path(root).expanduser().absolute()


def val_chars(data_cfg: DataConfig) -> int | None:
    if data_cfg.max_chars is None:
        return None
    return max(VAL_MIN_CHARS, int(data_cfg.max_chars * data_cfg.val_fraction))


def _blank(d: str) -> bool:
    return not d or d.isspace()


class _Budget:
    """The cap of one split: it takes documents until it holds >= max_chars characters (None: no cap);
    blank documents are skipped and do not count."""

    def __init__(self, max_chars: int | None):
        self.left = max_chars

    @property
    def full(self) -> bool:
        return self.left is not None and self.left <= 0

    def take(self, d: str) -> bool:
        if _blank(d):
            return False
        if self.left is not None:
            self.left -= len(d)
        return True


def _capped(docs: Iterator[str], max_chars: int | None) -> Iterator[str]:
    budget = _Budget(max_chars)
    for d in docs:
        if budget.full:
            return
        if budget.take(d):
            yield d


class Source:
    """Base: subclasses give identity() and _stream(split); documents() applies the split and caps."""

    name: str
    native_val = False  # True: _stream("val") exists; False: val is hashed out of _stream("train")

    def __init__(self, name: str, data_cfg: DataConfig):
        self.name = name
        self.split_seed = data_cfg.split_seed
        self.val_fraction = data_cfg.val_fraction
        self.split = data_cfg.split

    def identity(self) -> dict:
        raise NotImplementedError

    def _stream(self, split: str) -> Iterator[str]:
        raise NotImplementedError

    def is_val(self, text: str) -> bool:
        """Hashed split: 8 bytes of blake2b(seed, text) as a uniform number in [0, 1)."""
        h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(self.split_seed).encode())
        return int.from_bytes(h.digest(), "little") / 2**64 < self.val_fraction

    def _labelled(self) -> Iterator[tuple[bool, str]]:
        """(is_val, document) over the one stream of a source without its own val split."""
        if self.split == "hashed":
            for d in self._stream("train"):
                yield self.is_val(d), d
            return
        # contiguous: val = the documents starting at or after the cut. Blank documents are skipped by
        # the caps (_Budget), so they do not count here either.
        cut = (1 - self.val_fraction) * sum(len(d) for d in self._stream("train") if not _blank(d))
        seen = 0
        for d in self._stream("train"):
            yield seen >= cut, d
            if not _blank(d):
                seen += len(d)

    def documents(self, split: str, max_chars: int | None = None) -> Iterator[str]:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if self.native_val:
            docs = self._stream(split)
        else:
            want_val = split == "val"
            docs = (d for is_val, d in self._labelled() if is_val == want_val)
        return _capped(docs, max_chars)

    def splits(
        self, train_chars: int | None, val_chars: int | None, spill: Path
    ) -> tuple[Iterator[str], Iterator[str]]:
        """(train, val) documents, the same as documents("train", train_chars) and documents("val",
        val_chars), to be read in that order. A hashed split reads its stream once, not twice (a
        streamed hub corpus is not downloaded again for its 1% of val): train documents are yielded,
        val documents are written to `spill` (JSON lines) on the way and read back afterwards. A
        contiguous split (local files only) reads it once more before, to count its characters."""
        if self.native_val:
            return self.documents("train", train_chars), self.documents("val", val_chars)

        def train() -> Iterator[str]:
            budgets = {"train": _Budget(train_chars), "val": _Budget(val_chars)}
            with open(spill, "w", encoding="utf-8") as out:
                for is_val, d in self._labelled():
                    split = "val" if is_val else "train"
                    if budgets[split].full:
                        if all(b.full for b in budgets.values()):
                            return
                        continue
                    if not budgets[split].take(d):
                        continue
                    if split == "train":
                        yield d
                    else:
                        out.write(json.dumps(d) + "\n")

        def val() -> Iterator[str]:
            with open(spill, encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)

        return train(), val()


class GeneratedSource(Source):
    native_val = True

    def identity(self) -> dict:

        # The generator's own source text is its version: any edit to the grammar invalidates caches.
        code = hashlib.sha256(inspect.getsource(generated).encode()).hexdigest()[:16]
        return {"kind": "generated", "generator": code, "seed": self.split_seed}

    def _stream(self, split: str) -> Iterator[str]:

        return generate_stories(split, None, seed=self.split_seed)


class HubSource(Source):
    def __init__(self, name: str, spec: HubSpec, data_cfg: DataConfig):
        super().__init__(name, data_cfg)
        self.spec = spec
        self.subset = data_cfg.subset or spec.subset
        self.revision = data_cfg.revision
        self.text_column = data_cfg.text_column
        self.native_val = spec.val_split is not None

    def identity(self) -> dict:
        return {
            "kind": "hub",
            "path": self.spec.path,
            "subset": self.subset,
            "revision": self.revision,
            "text_column": self.text_column,
            "train_split": self.spec.train_split,
            "val_split": self.spec.val_split,
        }

    def _stream(self, split: str) -> Iterator[str]:
        # lazy: datasets (pyarrow, fsspec), only for a hub or parquet/json source
        import datasets

        hub_split = self.spec.val_split if split == "val" else self.spec.train_split
        why = hub_down()  # at once, not after datasets' 30 s of retries
        if why:
            raise StlmError(
                f"data.source={self.name!r}: hub dataset {self.spec.path!r} cannot be streamed: {why}. " + OFFLINE_HINT
            )
        try:
            ds = datasets.load_dataset(
                self.spec.path, self.subset, revision=self.revision, split=hub_split, streaming=True
            )
        except Exception as e:  # noqa: BLE001 - network, auth, missing config: all need a human
            raise StlmError(
                f"data.source={self.name!r}: could not open hub dataset {self.spec.path!r} "
                f"(subset {self.subset!r}, revision {self.revision!r}, split {hub_split!r}): "
                f"{type(e).__name__}: {e}"
            ) from None
        for ex in ds:
            if self.text_column not in ex:
                raise StlmError(
                    f"data.text_column={self.text_column!r} is not a column of {self.spec.path!r}; "
                    f"columns: {', '.join(ex)}."
                )
            yield ex[self.text_column]


class LocalSource(Source):
    def __init__(self, name: str, files: list[Path], data_cfg: DataConfig):
        super().__init__(name, data_cfg)
        self.files = files
        self.text_column = data_cfg.text_column

    def identity(self) -> dict:
        # Path, size and modification time: cheap, and any edit of a file changes the key.
        files = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]
        needs_column = any(LOCAL_FORMATS[f.suffix] != "text" for f in self.files)
        return {"kind": "local", "files": files, "text_column": self.text_column if needs_column else None}

    def _stream(self, split: str) -> Iterator[str]:
        # lazy: datasets (pyarrow, fsspec), only for a hub or parquet/json source
        import datasets

        for f in self.files:  # one file at a time keeps the documented order (sorted paths)
            builder = LOCAL_FORMATS[f.suffix]
            kwargs = {}
            column = self.text_column
            if builder == "text":
                with open(f, encoding="utf-8", errors="replace") as fh:
                    head = fh.read(1 << 20)
                kwargs["sample_by"] = "paragraph" if "\n\n" in head else "line"
                column = "text"
            ds = datasets.load_dataset(builder, data_files=[str(f)], split="train", streaming=True, **kwargs)
            quiet = logging.getLogger("datasets.packaged_modules.json.json")  # it logs what unreadable() says
            level, quiet.level = quiet.level, logging.CRITICAL
            try:
                for ex in ds:
                    if column not in ex:
                        raise StlmError(
                            f"data.text_column={column!r} is not a column of {str(f)!r}; columns: {', '.join(ex)}."
                        )
                    yield ex[column]
            except StlmError:
                raise
            except Exception as e:  # noqa: BLE001 - pyarrow's / datasets' parse errors: the file is at fault
                raise StlmError(unreadable(f, builder, e)) from None
            finally:
                quiet.setLevel(level)

    def head(self, n: int = 8) -> list[str]:
        """The first `n` records of the first file, read and parsed as training reads them (pre-flight)."""
        return list(itertools.islice(self._stream("train"), n))


def unreadable(f: Path, builder: str, e: Exception) -> str:
    """data.source names a file its reader fails on: which file, and for JSON lines which line."""
    if builder == "json":
        with open(f, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    line.strip() and json.loads(line)
                except ValueError as bad:
                    return f"data.source: {str(f)!r} line {number} is not valid JSON ({bad}); fix or remove that line."
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"data.source: {str(f)!r} cannot be read as {builder} ({first})."


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix not in LOCAL_FORMATS:
            raise StlmError(
                f"data.source {str(path)!r}: unsupported file type {path.suffix!r}; "
                f"use one of {', '.join(LOCAL_FORMATS)}."
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_FORMATS)
    if not files:
        raise StlmError(f"data.source {str(path)!r} is a directory without {', '.join(LOCAL_FORMATS)} files.")
    return files


def get_source(data_cfg: DataConfig) -> Source:
    """The Source data.source names (see the module docstring for the lookup order), checked against
    data.split."""
    splits = CHOICES["data.split"]  # checked here too: a DataConfig built in code skips build_config's check
    if data_cfg.split not in splits:
        raise StlmError(f"data.split: {data_cfg.split!r} is not one of {', '.join(splits)}.")
    source = _resolve(data_cfg)
    if data_cfg.split == "contiguous":
        name = data_cfg.source
        if source.native_val:
            raise StlmError(
                f"data.split=contiguous does not apply to data.source={name!r}: it has its own validation "
                "split, which is used as it is. Remove data.split (or set it to hashed), or use a source "
                "without a validation split, such as a local file."
            )
        if not isinstance(source, LocalSource):
            raise StlmError(
                f"data.split=contiguous cannot be used with data.source={name!r}, a hub dataset streamed "
                "without a validation split: the length of a streamed corpus is not known until all of it "
                "is read, so its last data.val_fraction cannot be found without downloading it whole. Use "
                "data.split=hashed, or save the corpus as local files and point data.source at them."
            )
    return source


def _resolve(data_cfg: DataConfig) -> Source:
    name = data_cfg.source
    if name == "generated":
        return GeneratedSource(name, data_cfg)
    if name in HUB_SOURCES:
        return HubSource(name, HUB_SOURCES[name], data_cfg)
    path = Path(name).expanduser()
    if path.exists():
        return LocalSource(name, _local_files(path.absolute()), data_cfg)
    looks_like_path = name.startswith((".", "/", "~")) or Path(name).suffix in LOCAL_FORMATS
    if HUB_ID.match(name) and not looks_like_path:
        return HubSource(name, HubSpec(name), data_cfg)
    if looks_like_path:
        raise StlmError(
            f"data.source={name!r}: the local file or directory {str(path.absolute())!r} does not exist "
            f"(relative paths are relative to the working directory, {os.getcwd()})."
        )
    raise StlmError(
        f"data.source={name!r} is neither a built-in source, an existing file or directory, nor a "
        f"hub dataset id (owner/name). Built-in: generated, {', '.join(HUB_SOURCES)}; local files: "
        f"{', '.join(LOCAL_FORMATS)} or a directory of them."
    )


def source_key(source: Source, data_cfg: DataConfig) -> dict:
    """What, besides the caps, determines the documents of each split."""
    key = {"identity": source.identity()}
    if not source.native_val:
        key.update(split_seed=data_cfg.split_seed, val_fraction=data_cfg.val_fraction)
        if data_cfg.split != "hashed":  # absent for hashed: caches made before data.split existed stay valid
            key["split"] = data_cfg.split
    return key
