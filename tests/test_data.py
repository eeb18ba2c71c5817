"""The data layer: the generated corpus, sources and their splits, the token cache (atomic, locked,
verified) and the batcher (seeded, resumable, rank-disjoint)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stlm.config import Config, DataConfig
from stlm.data import PreparedData, prepare
from stlm.data.generated import generate_stories, story
from stlm.data.sources import HUB_SOURCES, HubSource, LocalSource, get_source
from stlm.errors import StlmError

prep_mod = importlib.import_module("stlm.data.prepare")  # (stlm.data.prepare is the function)
# spawn, not fork: this process holds threads (torch, rayon from an earlier BPE training) a fork would inherit.
CTX = multiprocessing.get_context("spawn")


def _cfg(tmp_path, **data) -> Config:
    cfg = Config()
    cfg.model.tokenizer = data.pop("tokenizer", "bytes")
    cfg.model.vocab_size = data.pop("vocab_size", None)
    defaults = dict(cache_dir=str(tmp_path / "cache"), max_chars=200_000, num_proc=1, bpe_train_chars=200_000)
    cfg.data = dataclasses.replace(cfg.data, **{**defaults, **data})
    return cfg


# --------------------------------------------------------------------------- generated corpus


def test_generated_stories_are_deterministic_fast_and_distinct():
    a = list(generate_stories("train", 300_000, seed=0))
    assert a == list(generate_stories("train", 300_000, seed=0))
    assert a[7] == story("train", 7)  # random access: story i needs no other story
    assert sum(map(len, a)) >= 300_000 and sum(map(len, a[:-1])) < 300_000  # stops right after n_chars
    assert list(generate_stories("train", 50_000, seed=1))[:3] != a[:3]

    t0 = time.process_time()  # CPU time: robust to a loaded machine
    big = list(generate_stories("train", 4_000_000))
    rate = sum(map(len, big)) / (time.process_time() - t0)
    assert rate > 2e6, f"generator made {rate / 1e6:.2f} MB/s"
    # 20M characters are ~40k stories; whole-story repeats must not dominate: the first 4M are all distinct,
    # and so are stories far down the stream.
    assert len(set(big)) == len(big)
    far = [story("train", i) for i in range(40_000, 40_200)]
    assert len(set(far) | set(big)) == len(far) + len(big)


def test_generated_val_split_is_fixed_and_disjoint_from_train():
    train = set(generate_stories("train", 2_000_000))
    val = list(generate_stories("val", 300_000))
    assert not train & set(val)
    assert list(generate_stories("val", 100_000)) == val[: len(list(generate_stories("val", 100_000)))]


def test_generated_stories_look_like_stories():
    stories = list(generate_stories("train", 200_000))
    n_dialogue = 0
    for s in stories:
        assert s.count('"') % 2 == 0, s  # quotes are balanced
        assert s[-1] in '.!?"', s
        assert "{" not in s and "}" not in s  # every template slot was filled
        paragraphs = s.split("\n\n")
        assert 2 <= len(paragraphs) <= 5 and all(p.strip() for p in paragraphs)
        n_dialogue += '"' in s
    assert n_dialogue > 0.8 * len(stories)
    text = " ".join(stories)
    # past-tense narration and pronoun agreement: "named <girl>" stories use she/her for her
    assert len(re.findall(r"\b(was|went|saw|said|felt|had)\b", text)) > len(stories) * 5
    lily = [
        s
        for s in stories
        if s.startswith(("Once upon a time, there was a", "One day, there was a"))
        and " girl named " in s.split("\n")[0]
    ]
    assert lily and all(" she " in s or " She " in s for s in lily)
    assert len(set(re.findall(r"[A-Za-z]+", text))) > 900  # a vocabulary rich enough for a 2048 BPE


# --------------------------------------------------------------------------- sources


def test_local_text_file_hash_split_is_deterministic_disjoint_and_capped(shared_data):
    path = shared_data / "corpora" / "tinystories" / "tinystories_valid_sample.txt"
    src = get_source(DataConfig(source=str(path), val_fraction=0.1, split_seed=3))
    assert isinstance(src, LocalSource)
    train, val = list(src.documents("train")), list(src.documents("val"))
    assert train[0].startswith("Spot. Spot saw the shiny car")  # paragraphs are documents
    assert not set(train) & set(val)
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert val == list(get_source(DataConfig(source=str(path), val_fraction=0.1, split_seed=3)).documents("val"))
    other = list(get_source(DataConfig(source=str(path), val_fraction=0.1, split_seed=4)).documents("val"))
    assert other != val  # the seed picks another held-out set
    capped = list(src.documents("train", max_chars=50_000))
    assert capped == train[: len(capped)]
    assert sum(map(len, capped)) >= 50_000 > sum(map(len, capped[:-1]))


@pytest.mark.parametrize("caps", [(None, None), (60_000, 30_000), (60_000, None), (2_000_000, 10_000)])
def test_hashed_split_is_read_once_with_the_same_documents(shared_data, tmp_path, caps):
    # prepare() reads a hashed split in one pass (a streamed hub corpus is not downloaded twice),
    # and must give exactly what documents() gives for each split, caps included
    src = get_source(DataConfig(source=str(shared_data / "corpora" / "tinystories"), val_fraction=0.1))
    want = list(src.documents("train", caps[0])), list(src.documents("val", caps[1]))
    streams = {"n": 0}
    real = src._stream

    def counted(split):
        streams["n"] += 1
        return real(split)

    src._stream = counted
    train, val = src.splits(*caps, spill=tmp_path / "val.jsonl")
    assert list(train) == want[0]
    assert list(val) == want[1] and len(want[1]) > 10
    assert streams["n"] == 1


def test_contiguous_split_holds_out_the_last_paragraphs_of_tiny_shakespeare(shared_data, tmp_path):
    # data.split=contiguous is nanoGPT's split: the last val_fraction of the text is val
    path = shared_data / "corpora" / "tinyshakespeare.txt"
    paragraphs = [d for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    total = sum(map(len, paragraphs))
    cfg = DataConfig(source=str(path), val_fraction=0.1, split="contiguous")
    src = get_source(cfg)
    train, val = list(src.documents("train")), list(src.documents("val"))
    assert train + val == paragraphs  # val is the suffix, starting at the document after the last train one
    assert val[0].startswith("BAPTISTA:\nWhat, in my sight?")
    assert 0.095 < sum(map(len, val)) / total <= 0.1  # cut at the first document boundary after 90%
    # prepare() reads it through Source.splits: train capped from the start, val from the cut
    capped_train, capped_val = src.splits(100_000, 30_000, spill=tmp_path / "val.jsonl")
    capped_train, capped_val = list(capped_train), list(capped_val)
    assert capped_train == train[: len(capped_train)] and 100_000 <= sum(map(len, capped_train)) < 101_000
    assert capped_val == val[: len(capped_val)] and 30_000 <= sum(map(len, capped_val)) < 31_000
    data = prepare(_cfg(tmp_path, source=str(path), val_fraction=0.1, split="contiguous", max_chars=100_000))
    assert data.tokenizer.decode(data.val[: int(np.argmax(data.val == data.tokenizer.eot_id))]) == val[0]

    hashed = get_source(dataclasses.replace(cfg, split="hashed"))
    assert set(hashed.documents("val")) != set(val)
    keys = {
        split: prep_mod.cache_location(_cfg(tmp_path, source=str(path), split=split))[0]
        for split in ("hashed", "contiguous")
    }
    assert (
        keys["hashed"] != keys["contiguous"]
        and data.cache_path
        == prep_mod.cache_location(
            _cfg(tmp_path, source=str(path), val_fraction=0.1, split="contiguous", max_chars=100_000)
        )[0]
    )


def test_contiguous_split_is_refused_where_it_cannot_apply():
    from stlm.config import build_config

    with pytest.raises(StlmError, match="data.split: 'contigous' is not one of hashed, contiguous"):
        build_config({"data": {"split": "contigous"}})
    with pytest.raises(StlmError, match="data.split=contiguous does not apply to data.source='tinystories'"):
        get_source(DataConfig(source="tinystories", split="contiguous"))  # its own validation split
    with pytest.raises(
        StlmError,
        match="data.split=contiguous cannot be used with data.source='someone/corpus'"
        ".*length of a streamed corpus is not known",
    ):
        get_source(DataConfig(source="someone/corpus", split="contiguous"))


def test_local_jsonl_parquet_and_directories(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"Document number {i}. " * (i % 5 + 1) for i in range(200)]
    d = tmp_path / "corpus"
    d.mkdir()
    with open(d / "a.jsonl", "w") as f:
        for t in docs[:100]:
            f.write(json.dumps({"body": t, "id": 1}) + "\n")
    pq.write_table(pa.table({"body": docs[100:]}), d / "b.parquet")
    cfg = DataConfig(source=str(d), text_column="body", val_fraction=0.2)
    src = get_source(cfg)
    got = list(src.documents("train")) + list(src.documents("val"))
    assert sorted(got) == sorted(docs)
    with pytest.raises(StlmError, match="text_column"):
        list(get_source(DataConfig(source=str(d / "a.jsonl"))).documents("train"))


def test_source_names_resolve_without_network(tmp_path):
    assert set(HUB_SOURCES) >= {"tinystories", "openwebtext", "simple_en_wiki", "en_wiki", "babylm_100m", "fineweb_edu"}
    s = get_source(DataConfig(source="tinystories"))
    assert isinstance(s, HubSource) and s.spec.path == "roneneldan/TinyStories" and s.native_val
    s = get_source(DataConfig(source="simple_en_wiki"))
    assert s.identity()["subset"] == "20231101.simple" and not s.native_val
    s = get_source(DataConfig(source="someone/their-corpus", revision="abc123", text_column="content"))
    assert s.identity() == {
        "kind": "hub",
        "path": "someone/their-corpus",
        "subset": None,
        "revision": "abc123",
        "text_column": "content",
        "train_split": "train",
        "val_split": None,
    }
    with pytest.raises(StlmError, match="tinystories") as e:  # a typo of a built-in name lists the built-ins
        get_source(DataConfig(source="tinystorys"))
    assert "tinystorys" in str(e.value)
    for bad in ("./missing.txt", str(tmp_path / "nope.jsonl")):  # a path says which absolute path is missing
        with pytest.raises(StlmError, match="does not exist") as e:
            get_source(DataConfig(source=bad))
        assert bad in str(e.value) and str(Path(bad).absolute()) in str(e.value)


# --------------------------------------------------------------------------- prepare


@pytest.mark.parametrize("tokenizer,vocab", [("bytes", None), ("bpe", 512), ("gpt2", None)])
def test_prepare_writes_exact_shards_and_manifest(tmp_path, shared_data, tokenizer, vocab):
    cfg = _cfg(
        tmp_path,
        tokenizer=tokenizer,
        vocab_size=vocab,
        gpt2_vocab_file=str(shared_data / "tokenizers" / "gpt2" / "gpt2.tiktoken"),
    )
    data = prepare(cfg)
    tok, m = data.tokenizer, data.manifest
    assert isinstance(data, PreparedData) and data.train.dtype == np.uint16
    assert m["tokenizer"] == {
        "name": tokenizer,
        "identity": tok.identity,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
    }
    assert m["max_chars"] == 200_000 and m["val_chars"] == 250_000 and m["format_version"] == 1
    for split, arr in (("train", data.train), ("val", data.val)):
        s = m["splits"][split]
        assert s["tokens"] == len(arr)
        assert s["bytes"] == int(tok.byte_lengths[arr].sum())  # the bpb denominator is exact
        assert s["documents"] == int((arr == tok.eot_id).sum()) and arr[-1] == tok.eot_id
    assert m["splits"]["train"]["chars"] >= 200_000 and m["splits"]["val"]["chars"] >= 250_000
    # the shards hold the documents in order, separated by end-of-text
    first_eot = int(np.argmax(data.train == tok.eot_id))
    assert tok.decode(data.train[:first_eot]) == story("train", 0)
    assert tok.decode(data.val[: int(np.argmax(data.val == tok.eot_id))]) == story("val", 0)
    assert json.loads((data.cache_path / "manifest.json").read_text()) == m


def test_prepare_parallel_equals_serial_and_is_reused(tmp_path):
    serial = prepare(_cfg(tmp_path / "a", max_chars=3_000_000))
    cfg = _cfg(tmp_path / "b", max_chars=3_000_000, num_proc=2)
    parallel = prepare(cfg)
    assert np.array_equal(serial.train, parallel.train) and np.array_equal(serial.val, parallel.val)
    again = prepare(cfg)
    assert again.manifest["build_id"] == parallel.manifest["build_id"]  # reused, not rebuilt
    # a different cap is a different cache
    other = prepare(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_chars=1_000_000)))
    assert other.cache_path != parallel.cache_path and len(other.train) < len(parallel.train)


def test_unguarded_script_with_parallel_gpt2_preparation_fails_instead_of_hanging(tmp_path, shared_data):
    # spawn re-imports the main script in each worker, which calls prepare() again. With the ~1 MB
    # GPT-2 tokenizer in the pool's start-up data, the parent used to block for ever writing it to the
    # dead child; now the worker loads it from a file and the parent raises the clear error.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from stlm.config import Config\nfrom stlm.data import prepare\n"
        "cfg = Config()\ncfg.model.tokenizer = 'gpt2'\n"
        f"cfg.data.source = {str(shared_data / 'corpora' / 'tinystories')!r}\n"
        f"cfg.data.gpt2_vocab_file = {str(shared_data / 'tokenizers' / 'gpt2' / 'gpt2.tiktoken')!r}\n"
        f"cfg.data.cache_dir = {str(tmp_path / 'cache')!r}\ncfg.data.num_proc = 2\n"
        "prepare(cfg)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert r.returncode != 0
    assert "data.num_proc=2 tokenization processes could not run" in r.stderr and "__main__" in r.stderr
    left = [p.name for p in (tmp_path / "cache" / "data").iterdir() if not p.name.endswith(".lock")]
    assert left == []  # no cache, complete or partial


def test_tampered_manifest_or_truncated_shard_is_rebuilt(tmp_path):
    cfg = _cfg(tmp_path)
    first = prepare(cfg)
    train = np.array(first.train)
    path = first.cache_path / "manifest.json"
    m = json.loads(path.read_text())
    m["tokenizer"]["identity"] = "0" * 16
    path.write_text(json.dumps(m))
    second = prepare(cfg)
    assert second.manifest["build_id"] != first.manifest["build_id"]
    assert np.array_equal(second.train, train)
    with open(second.cache_path / "val.bin", "r+b") as f:  # a shard cut short
        f.truncate(100)
    third = prepare(cfg)
    assert third.manifest["build_id"] != second.manifest["build_id"]
    assert third.manifest["splits"] == second.manifest["splits"]


def test_error_mid_preparation_leaves_no_trusted_cache(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, max_chars=3_000_000)
    calls = {"n": 0}
    real = prep_mod._encode_batch

    def failing(docs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(docs)

    monkeypatch.setattr(prep_mod, "_encode_batch", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(cfg)
    root = tmp_path / "cache" / "data"
    assert not list(root.glob("*/manifest.json")) and not list(root.glob(".tmp-*"))
    monkeypatch.setattr(prep_mod, "_encode_batch", real)
    assert prepare(cfg).manifest["splits"]["train"]["chars"] >= 3_000_000


def _slow_prepare(cfg):
    """Child process: a preparation that takes a while, to be killed half-way."""
    real = prep_mod._encode_batch

    def slow(docs):
        time.sleep(0.3)
        return real(docs)

    prep_mod._encode_batch = slow
    prepare(cfg)


def test_killed_preparation_leaves_no_trusted_cache(tmp_path):
    cfg = _cfg(tmp_path, max_chars=5_000_000)
    p = CTX.Process(target=_slow_prepare, args=(cfg,))
    p.start()
    root = tmp_path / "cache" / "data"
    deadline = time.time() + 60
    while not list(root.glob(".tmp-*/train.bin")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert list(root.glob(".tmp-*"))  # the half-written directory is there...
    assert not list(root.glob("*/manifest.json"))  # ...but nothing a run would trust
    data = prepare(cfg)  # the lock died with the process; the next run builds and cleans up
    assert data.manifest["splits"]["train"]["chars"] >= 5_000_000
    assert not list(root.glob(".tmp-*"))


def _racer(cfg, barrier, queue, counter):
    real = prep_mod._build

    def counted(*a, **k):
        with open(counter, "a") as f:
            f.write("build\n")
        return real(*a, **k)

    prep_mod._build = counted
    barrier.wait()
    data = prepare(cfg)
    queue.put(
        (
            data.manifest["build_id"],
            hashlib.sha256(data.train.tobytes() + data.val.tobytes()).hexdigest(),
            data.tokenizer.identity,
        )
    )


def test_concurrent_processes_prepare_once_and_agree(tmp_path):
    cfg = _cfg(tmp_path, tokenizer="bpe", vocab_size=400, max_chars=1_000_000)
    barrier, queue, counter = CTX.Barrier(2), CTX.Queue(), tmp_path / "builds.txt"
    procs = [CTX.Process(target=_racer, args=(cfg, barrier, queue, counter)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert results[0] == results[1]  # same build, same bytes, same tokenizer
    assert counter.read_text().count("build") == 1
    assert len(list((tmp_path / "cache" / "tokenizers").glob("*.json"))) == 1
    assert len(list((tmp_path / "cache" / "data").glob("*/manifest.json"))) == 1


def test_generated_source_needs_a_cap(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.data.max_chars = None
    with pytest.raises(StlmError, match="data.max_chars"):
        prepare(cfg)


def test_prepare_local_file_with_too_few_val_documents_is_an_error(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("one story\n\nanother story\n")
    with pytest.raises(StlmError, match="val_fraction"):
        prepare(_cfg(tmp_path, source=str(f), val_fraction=0.01))
    assert not list((tmp_path / "cache" / "data").glob("*/manifest.json"))


# --------------------------------------------------------------------------- loader
# (torch is imported here, not at the top: the spawned processes above import this module.)


def test_batcher_windows_are_shifted_seeded_and_in_bounds():
    import torch

    from stlm.data.loader import TokenBatcher

    tokens = np.arange(10_000, dtype=np.uint32)  # token value == position: windows are easy to check
    b = TokenBatcher(tokens, batch_size=8, context_length=32, seed=1)
    x, y = b.next()
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one token, taken from the same window
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 31, dtype=torch.int64))
    again = TokenBatcher(tokens, batch_size=8, context_length=32, seed=1).next()
    assert torch.equal(again[0], x)
    assert not torch.equal(TokenBatcher(tokens, batch_size=8, context_length=32, seed=2).next()[0], x)
    for _ in range(500):
        x, y = b.next()
        assert int(y.max()) <= 9_999 and int(x.min()) >= 0


def test_batcher_resume_continues_the_identical_sequence():
    import torch

    from stlm.data.loader import TokenBatcher

    tokens = np.arange(50_000, dtype=np.uint16) % 50_000
    a = TokenBatcher(tokens, 4, 16, seed=7, rank=1, world_size=2)
    for _ in range(5):
        a.next()
    state = torch.load(_roundtrip(a.state_dict()), weights_only=False)  # as a checkpoint stores it
    expected = [a.next() for _ in range(5)]
    b = TokenBatcher(tokens, 4, 16, seed=7, rank=1, world_size=2)
    b.load_state_dict(state)
    assert b.step == 5
    for (x1, y1), (x2, y2) in zip(expected, (b.next() for _ in range(5))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(StlmError, match="batch_size"):
        TokenBatcher(tokens, 8, 16, seed=7, rank=1, world_size=2).load_state_dict(state)


def _roundtrip(obj):
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_ranks_read_disjoint_windows():
    from stlm.data.loader import TokenBatcher

    tokens = np.arange(20_000, dtype=np.uint32)
    seen = []
    for rank in range(2):
        b = TokenBatcher(tokens, 8, 64, seed=0, rank=rank, world_size=2)
        positions = set()
        for _ in range(200):
            x, y = b.next()
            positions.update(x.flatten().tolist())
            positions.update(y.flatten().tolist())
        seen.append(positions)
    assert not seen[0] & seen[1]  # not one token position in common, let alone a window
    assert len(seen[0]) > 5_000 and len(seen[1]) > 5_000  # both cover their half


def test_val_windows_are_fixed_even_and_non_overlapping():
    import torch

    from stlm.data.loader import val_windows

    tokens = np.arange(1_000, dtype=np.uint16)
    w = val_windows(tokens, 10, 20)
    assert len(w) == 20
    starts = [int(x[0]) for x, _ in w]
    assert starts == sorted(starts) and starts[0] == 0 and starts[-1] >= 900  # spread over the whole split
    targets = torch.cat([y for _, y in w]).tolist()
    assert len(targets) == len(set(targets))  # every target scored once
    for x, y in w:
        assert x.shape == (10,) and x.dtype == torch.int64 and torch.equal(y, x + 1)
    assert [int(x[0]) for x, _ in val_windows(tokens, 10, 20)] == starts
    assert len(val_windows(tokens, 10, 10_000)) == 99  # capped at what the split holds
    with pytest.raises(StlmError, match="validation split"):
        val_windows(tokens[:5], 10, 1)
