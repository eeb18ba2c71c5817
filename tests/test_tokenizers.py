"""Tokenizers: exact round trips and exact byte counts (what bits-per-byte rests on), offline GPT-2,
and a BPE trained once per corpus and reused from the cache."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest

import stlm.tokenizers as tokenizers
from stlm.config import DataConfig, ModelConfig
from stlm.errors import StlmError
from stlm.tokenizers import ByteTokenizer, load_gpt2, load_tokenizer

TRICKY = "Héllo wörld! 你好 🙂 <|endoftext|> tabs\tand\nnewlines  double  spaces, 'quotes' \"x\" 12345."


@pytest.fixture(scope="module")
def valid_text(shared_data) -> str:
    return (shared_data / "corpora" / "tinystories" / "tinystories_valid_sample.txt").read_text()


@pytest.fixture(scope="module")
def gpt2_file(shared_data) -> str:
    return str(shared_data / "tokenizers" / "gpt2" / "gpt2.tiktoken")


@pytest.fixture(scope="module")
def bpe_data_cfg(shared_data, tmp_path_factory) -> DataConfig:
    # A small BPE on a real corpus: the first 200k characters of the TinyStories validation sample.
    return DataConfig(
        source=str(shared_data / "corpora" / "tinystories" / "tinystories_valid_sample.txt"),
        cache_dir=str(tmp_path_factory.mktemp("tokcache")),
        bpe_train_chars=200_000,
        val_fraction=0.1,
    )


@pytest.fixture(scope="module")
def all_tokenizers(gpt2_file, bpe_data_cfg):
    d = bpe_data_cfg
    d_gpt2 = DataConfig(gpt2_vocab_file=gpt2_file)
    return {
        "bytes": load_tokenizer(ModelConfig(tokenizer="bytes"), d),
        "bpe": load_tokenizer(ModelConfig(tokenizer="bpe", vocab_size=512), d),
        "gpt2": load_tokenizer(ModelConfig(tokenizer="gpt2"), d_gpt2),
    }


@pytest.mark.parametrize("name", ["bytes", "bpe", "gpt2"])
def test_round_trip_and_exact_byte_counts_on_real_text(all_tokenizers, valid_text, name):
    tok = all_tokenizers[name]
    for text in (valid_text, TRICKY, ""):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        # bpb denominator: the bytes of the tokens are exactly the bytes of the text
        assert int(tok.byte_lengths[np.asarray(ids, dtype=np.int64)].sum()) == len(text.encode("utf-8"))
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


@pytest.mark.parametrize("name,vocab", [("bytes", 257), ("bpe", 512), ("gpt2", 50257)])
def test_vocab_eot_and_byte_lengths_table(all_tokenizers, name, vocab):
    tok = all_tokenizers[name]
    assert (
        tok.vocab_size
        == vocab
        == ModelConfig(tokenizer=name, vocab_size=512 if name == "bpe" else None).effective_vocab_size
    )
    assert tok.eot_id == vocab - 1
    assert tok.token_bytes(tok.eot_id) == b"" and tok.byte_lengths[tok.eot_id] == 0
    assert tok.byte_lengths.shape == (vocab,) and tok.byte_lengths.dtype == np.int32
    assert (tok.byte_lengths[: tok.eot_id] >= 1).all()  # every real token stands for at least one byte
    # The text "<|endoftext|>" is ordinary text, never the end-of-text token.
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")
    docs = tok.encode_documents(["ab", "c"])
    assert list(docs) == tok.encode("ab") + [tok.eot_id] + tok.encode("c") + [tok.eot_id]
    assert tok.encode_batch(["ab", "c"]) == [tok.encode("ab"), tok.encode("c")]


def test_gpt2_offline_from_file_matches_known_ids(gpt2_file, monkeypatch):
    tok = load_gpt2(gpt2_file)
    assert tok.encode("Hello world") == [15496, 995]  # the GPT-2 ids everyone knows
    assert tok.encode(" the") == [262]
    monkeypatch.setenv("STLM_GPT2_VOCAB", gpt2_file)  # the same file through the environment
    assert load_tokenizer(ModelConfig(tokenizer="gpt2"), DataConfig()).identity == tok.identity


def test_gpt2_missing_file_and_offline_errors_say_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(StlmError, match="does not exist"):
        load_gpt2(str(tmp_path / "nope.tiktoken"))
    monkeypatch.delenv("STLM_GPT2_VOCAB", raising=False)
    import tiktoken

    def offline(name):  # what tiktoken does without network and without its cache
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(StlmError, match="gpt2_vocab_file.*STLM_GPT2_VOCAB"):
        load_tokenizer(ModelConfig(tokenizer="gpt2"), DataConfig())


def test_bpe_is_trained_once_then_read_from_the_cache(bpe_data_cfg, monkeypatch, all_tokenizers):
    first = all_tokenizers["bpe"]  # trained by the fixture
    cached = list((Path(bpe_data_cfg.cache_dir) / "tokenizers").glob("*.json"))
    assert len(cached) == 1

    def no_training(*a, **k):
        raise AssertionError("the cached BPE should have been reused")

    monkeypatch.setattr(tokenizers, "train_bpe", no_training)
    again = load_tokenizer(ModelConfig(tokenizer="bpe", vocab_size=512), bpe_data_cfg)
    assert again.identity == first.identity
    assert again.encode("Once upon a time") == first.encode("Once upon a time")


def test_bpe_cache_corrupt_file_is_retrained_and_keys_differ(bpe_data_cfg, tmp_path):
    d = dataclasses.replace(bpe_data_cfg, cache_dir=str(tmp_path))
    a = load_tokenizer(ModelConfig(tokenizer="bpe", vocab_size=300), d)
    (path,) = (tmp_path / "tokenizers").glob("*.json")
    path.write_text(path.read_text()[:100])  # a truncated write from a crash
    b = load_tokenizer(ModelConfig(tokenizer="bpe", vocab_size=300), d)
    assert b.identity == a.identity and b.vocab_size == 300
    c = load_tokenizer(ModelConfig(tokenizer="bpe", vocab_size=320), d)
    assert c.identity != a.identity and c.vocab_size == 320
    # more training text -> another cache entry, not a silently reused tokenizer
    d2 = dataclasses.replace(d, bpe_train_chars=100_000)
    e = load_tokenizer(ModelConfig(tokenizer="bpe", vocab_size=300), d2)
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 3
    assert e.vocab_size == 300


def test_bpe_on_the_default_generated_corpus_reaches_2048(tmp_path):
    tok = load_tokenizer(ModelConfig(tokenizer="bpe"), DataConfig(cache_dir=str(tmp_path), bpe_train_chars=1_000_000))
    assert tok.vocab_size == 2048 and tok.eot_id == 2047
    text = "Once upon a time, a little girl named Lily found a shiny red ball."
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < 25  # it learned whole words


def test_bpe_vocab_too_large_for_the_corpus_is_a_clear_error(tmp_path, shared_data):
    d = DataConfig(
        source=str(shared_data / "corpora" / "tinystories" / "tinystories_valid_sample.txt"),
        cache_dir=str(tmp_path),
        bpe_train_chars=2_000,
    )
    with pytest.raises(StlmError, match="bpe_train_chars"):
        load_tokenizer(ModelConfig(tokenizer="bpe", vocab_size=4096), d)


def test_identity_and_pickling(all_tokenizers):
    ids = {name: tok.identity for name, tok in all_tokenizers.items()}
    assert len(set(ids.values())) == 3
    for tok in all_tokenizers.values():
        back = pickle.loads(pickle.dumps(tok))  # what the tokenization workers receive
        assert back.identity == tok.identity and back.encode(TRICKY) == tok.encode(TRICKY)
    assert ByteTokenizer().identity == all_tokenizers["bytes"].identity  # stable across instances
