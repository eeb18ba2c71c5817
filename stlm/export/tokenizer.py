"""stlm's tokenizers as Hugging Face tokenizers that give the same ids for every string.

    hf_tok = to_hf_tokenizer(tokenizer, context_length)     # a transformers tokenizer
    save_tokenizer(tokenizer, context_length, out_dir)      # tokenizer.json (+ vocab.json, merges.txt for GPT-2)

    stlm     exported as
    gpt2     GPT2Tokenizer with the standard GPT-2 files (vocab.json; merges.txt: GPT-2's 50,000 merges,
             recovered from the tiktoken ranks: each token is the merge BPE reaches with lower ranks only)
    bpe      a byte-level BPE tokenizer.json: Split(the rustbpe pattern) + ByteLevel, every split of a token
             into two tokens is a merge ranked by that token (tiktoken's rule), ignore_merges (tiktoken
             takes a piece that is itself a token whole); transformers' TikTokenConverter builds it
    bytes    a byte-level tokenizer.json with no merges: each UTF-8 byte b is id b

In all three <|endoftext|> is the last id, and it is BOS, EOS and PAD (GPT-2's convention; HFLM and the
harness condition an empty context on it, as stlm does). stlm encodes "<|endoftext|>" inside text as
plain text; the exported tokenizers do the same (split_special_tokens=True).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from stlm.errors import StlmError
from stlm.tokenizers import EOT_TEXT, ByteTokenizer, TiktokenTokenizer, Tokenizer

ALL_TEXT = r"[\s\S]+"  # the bytes tokenizer needs no pre-tokenization: one piece, then one token per byte


def _converter(ranks: dict[bytes, int], pattern: str):
    # lazy: transformers (an optional extra), only when exporting
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class RanksConverter(TikTokenConverter):
        """TikTokenConverter reading ranks already in memory instead of a .tiktoken file."""

        def load_tiktoken_bpe(self, _url):
            return ranks

    return RanksConverter(vocab_file=None, pattern=pattern, extra_special_tokens=[EOT_TEXT])


def gpt2_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that made each token of rank >= 256: BPE on its bytes with only lower ranks ends in two parts."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(ranks.get(parts[i] + parts[i + 1], 1 << 62), i) for i in range(len(parts) - 1)]
            r, i = min(pairs)
            if r >= rank:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise StlmError(f"GPT-2 token {rank} ({token!r}) is not the merge of two lower-ranked tokens.")
        merges.append((parts[0], parts[1]))
    return merges


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    # lazy: transformers (an optional extra), only when exporting
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def _byte_string(b: bytes) -> str:
    """GPT-2's printable stand-in for a byte string (the alphabet of vocab.json and merges.txt)."""
    enc = _byte_alphabet()
    return "".join(enc[x] for x in b)


_GPT2_FILES: dict[str, tuple] = {}  # by tokenizer identity: the merges take a few seconds to recover


def _gpt2_files(tok: TiktokenTokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's vocab.json mapping and merges.txt pairs, from the tiktoken ranks."""
    if tok.identity not in _GPT2_FILES:
        _GPT2_FILES[tok.identity] = _gpt2_files_uncached(tok)
    return _GPT2_FILES[tok.identity]


def _gpt2_files_uncached(tok: TiktokenTokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = {_byte_string(b): r for b, r in tok._ranks.items()} | {EOT_TEXT: tok.eot_id}
    return vocab, [(_byte_string(a), _byte_string(b)) for a, b in gpt2_merges(tok._ranks)]


SPECIALS = dict(bos_token=EOT_TEXT, eos_token=EOT_TEXT, unk_token=EOT_TEXT, pad_token=EOT_TEXT)


def to_hf_tokenizer(tok: Tokenizer, context_length: int):
    """A transformers tokenizer that encodes every string to the ids `tok.encode` gives."""
    # lazy: transformers (an optional extra), only when exporting
    import transformers

    if isinstance(tok, TiktokenTokenizer) and tok.name == "gpt2":
        vocab, merges = _gpt2_files(tok)
        return transformers.GPT2Tokenizer(
            vocab=vocab, merges=merges, model_max_length=context_length, split_special_tokens=True, **SPECIALS
        )
    if isinstance(tok, TiktokenTokenizer):
        backend = _converter(tok._ranks, tok._pattern()).converted()
    elif isinstance(tok, ByteTokenizer):
        backend = _converter({bytes([b]): b for b in range(256)}, ALL_TEXT).converted()
    else:
        raise StlmError(
            f"stlm export: tokenizer {tok.name!r} has no Hugging Face equivalent "
            "(model.tokenizer must be gpt2, bpe or bytes)."
        )
    if backend.get_vocab_size() != tok.vocab_size or backend.token_to_id(EOT_TEXT) != tok.eot_id:
        raise StlmError(
            f"stlm export: the converted {tok.name} tokenizer has {backend.get_vocab_size()} ids and "
            f"<|endoftext|> = {backend.token_to_id(EOT_TEXT)}; stlm's has {tok.vocab_size} and {tok.eot_id}."
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=context_length, split_special_tokens=True, **SPECIALS
    )


def save_tokenizer(tok: Tokenizer, context_length: int, out_dir) -> list[str]:
    """Write the tokenizer files into out_dir (GPT-2: also the standard vocab.json and merges.txt); their names."""
    out = Path(out_dir)
    names = list(to_hf_tokenizer(tok, context_length).save_pretrained(str(out)))
    if tok.name == "gpt2":
        vocab, merges = _gpt2_files(tok)
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        names += [str(out / "vocab.json"), str(out / "merges.txt")]
    return sorted({Path(n).name for n in names})


def describe(tok: Tokenizer) -> str:
    """One line for the model card."""
    if tok.name == "gpt2":
        return "GPT-2's byte-level BPE (50,257 ids; `<|endoftext|>` = 50256)"
    if tok.name == "bytes":
        return "raw UTF-8 bytes (ids 0-255 are the byte values, `<|endoftext|>` = 256)"
    return (
        f"a byte-level BPE of {tok.vocab_size:,} ids trained by stlm (rustbpe) on the training corpus; "
        f"`<|endoftext|>` = {tok.eot_id}; pre-tokenizer regex `{tok._pattern()}`"
    )
