"""The Hugging Face wrapper: a transformers causal LM is scored by the same evaluator as an stlm model,
and its log-likelihoods are the harness's (context tokens, then the continuation's log-probs).

The model is a randomly initialised 2-layer GPT-2 built from a config (nothing is downloaded); the
tokenizer is GPT-2's, read from the shared vocabulary files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from stlm.eval import evaluate
from stlm.eval.hf import HFLM


@pytest.fixture(scope="module")
def gpt2_tokenizer(shared_data, tmp_path_factory):
    """GPT-2's tokenizer from a local directory, as a user without network would load it."""
    src, d = shared_data / "tokenizers" / "gpt2", tmp_path_factory.mktemp("gpt2_tokenizer")
    shutil.copyfile(src / "gpt2_vocab.json", d / "vocab.json")
    shutil.copyfile(src / "gpt2_merges.txt", d / "merges.txt")
    tok = transformers.GPT2TokenizerFast.from_pretrained(str(d))
    assert tok.encode("Hello world", add_special_tokens=False) == [15496, 995]  # the real vocabulary
    return tok


def _direct_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """By hand, one request per forward pass: sum of log p(continuation token | everything before it)."""
    ctx = tok.encode(context, add_special_tokens=False)
    whole = tok.encode(context + continuation, add_special_tokens=False)
    cont = whole[len(ctx) :]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), dim=-1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


@pytest.fixture(scope="module")
def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=512)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_hf_model_goes_through_the_same_evaluator(shared_data, gpt2_tokenizer, tiny_gpt2, tmp_path):
    tok = gpt2_tokenizer
    items = tmp_path / "items.jsonl"
    res = evaluate(
        HFLM(tiny_gpt2, tok, batch_size=3),
        None,
        ["arc_easy"],
        limit=8,
        data_dir=str(shared_data / "benchmarks"),
        items_path=items,
    )["arc_easy"]
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    assert len(rows) == res["n"] == 8
    for r in rows:  # batched, padded scoring gives each request's own log-likelihood
        assert r["context"].startswith("Question: ") and r["context"].endswith("\nAnswer:")
        for cont, ll in zip(r["continuations"], r["loglikelihoods"]):
            assert ll == pytest.approx(_direct_loglikelihood(tiny_gpt2, tok, r["context"], cont), abs=1e-3)
    assert res["acc"] == pytest.approx(sum(r["acc"] for r in rows) / 8)
    assert res["acc_norm"] == pytest.approx(sum(r["acc_norm"] for r in rows) / 8)


def test_hf_empty_context_is_conditioned_on_the_prefix_token(gpt2_tokenizer, tiny_gpt2):
    """BLiMP scores whole sentences: the harness conditions them on BOS (GPT-2: <|endoftext|>)."""
    tok = gpt2_tokenizer
    lm = HFLM(tiny_gpt2, tok)
    sentence = "The cats sleep on the mat."
    [(ll, _)] = lm.loglikelihood([lm.encode_pair("", sentence)])
    ids = [tok.eos_token_id] + tok.encode(sentence, add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(tiny_gpt2(torch.tensor([ids])).logits[0], dim=-1)
    assert ll == pytest.approx(sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)), abs=1e-3)
    assert lm.max_length == 512  # from the model config's n_positions


def test_stlm_eval_cli_loads_a_local_hf_model_directory(shared_data, gpt2_tokenizer, tiny_gpt2, tmp_path):
    """`stlm eval DIR --hf`: from_pretrained on a saved model + tokenizer (offline), same scores as in process."""
    from stlm.cli import main

    model_dir = tmp_path / "tiny-gpt2"
    tiny_gpt2.save_pretrained(model_dir)
    gpt2_tokenizer.save_pretrained(model_dir)
    bench = str(shared_data / "benchmarks")
    out, items = tmp_path / "results.json", tmp_path / "cli_items.jsonl"
    assert (
        main(
            [
                "eval",
                str(model_dir),
                "--hf",
                "--tasks",
                "arc_easy",
                "--limit",
                "6",
                "--data-dir",
                bench,
                "--device",
                "cpu",
                "--json",
                str(out),
                "--items",
                str(items),
            ]
        )
        == 0
    )
    cli = json.loads(out.read_text())["arc_easy"]
    direct_items = tmp_path / "direct_items.jsonl"
    direct = evaluate(
        HFLM(tiny_gpt2, gpt2_tokenizer), None, ["arc_easy"], limit=6, data_dir=bench, items_path=direct_items
    )["arc_easy"]
    assert cli["n"] == direct["n"] == 6
    assert cli["acc"] == direct["acc"] and cli["acc_norm"] == direct["acc_norm"]
    for a, b in zip(items.read_text().splitlines(), direct_items.read_text().splitlines(), strict=True):
        assert json.loads(a)["loglikelihoods"] == pytest.approx(json.loads(b)["loglikelihoods"], abs=1e-4)
