"""stlm.eval: benchmark prompts, scoring and statistics as lm-evaluation-harness has them.

Prompt formats are checked against hand-written strings for real items of ../shared/data/benchmarks,
the metric math against a stub LM whose log-likelihoods the test chooses, batching against
one-at-a-time scoring of a tiny real stlm model, and `stlm eval` end to end on a real checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stlm.config import DataConfig, ModelConfig
from stlm.errors import StlmError
from stlm.eval import evaluate
from stlm.eval.harness import aggregate, mean_stderr, pooled_sample_stderr, sample_ids, score_item, summarize
from stlm.eval.scorer import LM, StlmLM
from stlm.eval.tasks import TASKS, Item
from stlm.eval.tasks.hellaswag import preprocess


def first_item(task: str, data_dir, subtask: str | None = None) -> Item:
    t = TASKS[task]()
    sub = subtask or t.subtasks()[0]
    return t.item(t.docs(sub, str(data_dir))[0], 0, sub)


@pytest.fixture(scope="module")
def bench(shared_data):
    return shared_data / "benchmarks"


# --------------------------------------------------------------------------- prompt formats (real items)


def test_hellaswag_first_item_matches_harness_format(bench):
    it = first_item("hellaswag", bench)
    # harness: preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()); ctx_b = "he"
    assert it.contexts == ["Roof shingle removal: A man is sitting on a roof. He"] * 4
    assert it.continuations == [
        " is using wrap to wrap a pair of skis.",
        " is ripping level tiles off.",
        " is holding a rubik's cube.",
        " starts pulling up roofing on a roof.",
    ]
    assert it.choices[3] == "starts pulling up roofing on a roof." and it.gold == 3


def test_hellaswag_bz2_export_reads_like_the_jsonl(bench, tmp_path):
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "hellaswag_val_full.txt.bz2").symlink_to(
        bench / "hellaswag" / "hellaswag_val_full.txt.bz2"
    )
    t = TASKS["hellaswag"]()
    a = t.docs("hellaswag", str(bench))
    b = t.docs("hellaswag", str(tmp_path))
    assert len(a) == len(b) == 10042
    for i in (0, 1, 5000, 10041):
        assert t.item(a[i], i, "hellaswag") == t.item(b[i], i, "hellaswag")


def test_hellaswag_original_fields_use_the_harness_preprocess(tmp_path):
    # original rowanz / HF row: WikiHow tags, an empty ctx_b, and an ActivityNet row with ctx_b to capitalise
    rows = [
        {
            "ind": 4,
            "activity_label": "Home and Garden",
            "ctx_a": "[header] How to clean a roof. [title] Get a ladder.",
            "ctx_b": "",
            "endings": ["[step] Climb up  carefully.", "Jump [substeps] now.", "a", "b"],
            "label": "0",
        },
        {
            "ind": 5,
            "activity_label": "Clean and jerk",
            "ctx_a": "A lady walks to a barbell.",
            "ctx_b": "the lady",
            "endings": ["lifts it.", "drops it.", "c", "d"],
            "label": 1,
        },
    ]
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "hellaswag_val.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = TASKS["hellaswag"]()
    docs = t.docs("hellaswag", str(tmp_path))
    a, b = t.item(docs[0], 0, "hellaswag"), t.item(docs[1], 1, "hellaswag")
    # strip; " [title]" -> ". "; tags removed; one pass of "  " -> " " (the harness really yields "roof..")
    assert a.contexts[0] == "Home and Garden: How to clean a roof.. Get a ladder."
    assert a.choices[:2] == [" Climb up carefully.", "Jump now."]  # a leading tag leaves its space (harness quirk)
    assert a.continuations[0] == "  Climb up carefully."
    assert b.contexts[0] == "Clean and jerk: A lady walks to a barbell. The lady" and b.gold == 1
    assert preprocess("a    b") == "a  b"  # replace, not a full whitespace collapse


def test_arc_easy_first_item(bench):
    it = first_item("arc_easy", bench)
    assert (
        it.contexts[0]
        == "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    )
    assert it.continuations == [
        " Sunlight is the source of energy for nearly all ecosystems.",
        " Most ecosystems are found on land instead of in water.",
        " Carbon dioxide is more available than other gases.",
        " The producers in all ecosystems are plants.",
    ]
    assert it.gold == 0
    assert first_item("arc_challenge", bench).contexts[0].startswith("Question: ")


def test_arc_hf_format_and_numeric_keys(tmp_path):
    row = {
        "id": "x",
        "question": "2+2?",
        "choices": {"text": ["3", "4", "5"], "label": ["1", "2", "3"]},
        "answerKey": "2",
    }
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc" / "ARC-Easy-Test.jsonl").write_text(json.dumps(row) + "\n")
    it = first_item("arc_easy", tmp_path)
    assert it.contexts[0] == "Question: 2+2?\nAnswer:" and it.continuations == [" 3", " 4", " 5"] and it.gold == 1


def test_winogrande_first_item_partial_scoring(bench):
    it = first_item("winogrande", bench)
    # "Sarah was a much better surgeon than Maria so _ always got the easier cases.", answer "2"
    assert it.contexts == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert it.continuations == [" always got the easier cases."] * 2
    assert it.gold == 1


def test_mmlu_row_and_description(bench):
    it = first_item("mmlu", bench, "mmlu_abstract_algebra")
    assert (
        it.contexts
        == [
            "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
            "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
            "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
        ]
        * 4
    )
    assert it.continuations == [" A", " B", " C", " D"] and it.choices == ["A", "B", "C", "D"] and it.gold == 1
    us = first_item("mmlu", bench, "mmlu_us_foreign_policy")
    assert us.contexts[0].startswith(
        "The following are multiple choice questions (with answers) about us foreign policy.\n\n"
    )


def test_mmlu_original_headerless_letter_csv(tmp_path):
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    with open(tmp_path / "mmlu" / "test" / "anatomy_test.csv", "w", newline="") as f:
        csv.writer(f).writerows([["  What, is it? ", "a", "b", "c", "d", "C"], ["Q2", "1", "2", "3", "4", "A"]])
    t = TASKS["mmlu"]()
    docs = t.docs("mmlu_anatomy", str(tmp_path))
    assert [d["answer"] for d in docs] == [2, 0]
    it = t.item(docs[0], 0, "mmlu_anatomy")
    assert it.contexts[0].endswith("anatomy.\n\nWhat, is it?\nA. a\nB. b\nC. c\nD. d\nAnswer:")


def test_blimp_empty_context_whole_sentence(bench):
    it = first_item("blimp", bench, "blimp_adjunct_island")
    assert it.contexts == ["", ""]
    assert it.continuations == [
        " Who should Derek hug after shocking Richard?",
        " Who should Derek hug Richard after shocking?",
    ]
    assert it.gold == 0 and len(TASKS["blimp"]().subtasks()) == 67


def test_missing_data_names_directory_and_files(tmp_path):
    (tmp_path / "winogrande").mkdir()
    with pytest.raises(StlmError, match=r"winogrande.*dev\.jsonl"):
        TASKS["winogrande"]().docs("winogrande", str(tmp_path))
    with pytest.raises(StlmError, match="does not exist"):
        evaluate(StubLM({}), None, ["arc_easy"], data_dir=str(tmp_path / "nope"))
    with pytest.raises(StlmError, match="Unknown eval task 'hellaswa'"):
        evaluate(StubLM({}), None, ["hellaswa"])


# --------------------------------------------------------------------------- tokenization of pairs


@pytest.fixture(scope="module")
def gpt2_tok(shared_data):
    from stlm.tokenizers import load_tokenizer

    vocab = shared_data / "tokenizers" / "gpt2" / "gpt2.tiktoken"
    return load_tokenizer(ModelConfig(tokenizer="gpt2"), DataConfig(gpt2_vocab_file=str(vocab)))


def test_encode_pair_like_the_harness(gpt2_tok):
    lm = StlmLM(torch.nn.Linear(1, 1), gpt2_tok)
    enc = gpt2_tok.encode
    ctx, cont = lm.encode_pair("Question: What is red?\nAnswer:", " Blood")
    assert ctx == enc("Question: What is red?\nAnswer:") and cont == enc(" Blood")
    # a trailing space of the context moves onto the continuation: "Answer: " + "Blood" -> ("Answer:", " Blood")
    ctx2, cont2 = lm.encode_pair("Answer: ", "Blood")
    assert ctx2 == enc("Answer:") and cont2 == enc(" Blood")
    # the split is where the context's own encoding ends, inside the whole string's encoding
    whole = enc("Sarah was so Maria always")
    c3, k3 = lm.encode_pair("Sarah was so Maria", " always")
    assert c3 + k3 == whole
    # empty context: conditioned on end-of-text
    assert lm.encode_pair("", " The cat sat.") == ([50256], enc(" The cat sat."))


# --------------------------------------------------------------------------- metric math with a stub LM


class StubLM(LM):
    """Log-likelihoods chosen by the test: keyed by the continuation text (bytes tokenizer)."""

    eot_id = 256
    max_length = 10_000

    def __init__(self, table: dict[str, float]):
        self.table = table
        self.calls = 0

    def encode(self, text):
        return list(text.encode("utf-8"))

    def loglikelihood(self, requests):
        self.calls += 1
        return [(self.table[bytes(c).decode("utf-8")], False) for _, c in requests]


def test_acc_norm_uses_characters_and_acc_bytes_uses_utf8_bytes():
    # choice 0: 2 chars / 4 bytes, ll -3;  choice 1: 3 chars / 3 bytes, ll -4
    item = Item(task="t", doc_id=0, contexts=["q"] * 2, continuations=[" éé", " abc"], choices=["éé", "abc"], gold=1)
    row = score_item(item, [(-3.0, False), (-4.0, False)])
    assert row["pred"] == 0  # -3 > -4
    assert row["pred_norm"] == 1  # -3/2 = -1.5 < -4/3 = -1.33
    assert row["pred_bytes"] == 0  # -3/4 = -0.75 > -1.33
    assert (row["acc"], row["acc_norm"], row["acc_bytes"]) == (0.0, 1.0, 0.0)
    tie = score_item(item, [(-1.0, False), (-1.0, False)])
    assert tie["pred"] == 0  # numpy argmax: ties go to the first choice


def test_evaluate_with_stub_lm_on_local_files(tmp_path):
    rows = [
        {
            "question": {"stem": "q1", "choices": [{"text": "yes", "label": "A"}, {"text": "no way", "label": "B"}]},
            "answerKey": "A",
        },
        {
            "question": {"stem": "q2", "choices": [{"text": "up", "label": "A"}, {"text": "down", "label": "B"}]},
            "answerKey": "B",
        },
        {
            "question": {"stem": "q3", "choices": [{"text": "left", "label": "A"}, {"text": "right", "label": "B"}]},
            "answerKey": "B",
        },
    ]
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc" / "ARC-Easy-Test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    table = {
        " yes": -3.0,
        " no way": -4.0,  # acc right; norm -3/3 = -1 < -4/6 = -0.67: wrong
        " up": -1.0,
        " down": -1.9,  # acc wrong; norm -1/2 = -0.5 < -1.9/4 = -0.475: right
        " left": -9.0,
        " right": -1.0,
    }  # both right
    lm = StubLM(table)
    items = tmp_path / "out" / "items.jsonl"
    res = evaluate(lm, None, "arc_easy", data_dir=str(tmp_path), items_path=items)["arc_easy"]
    assert lm.calls == 1  # every request of the task in one batched call
    assert res["acc"] == pytest.approx(2 / 3) and res["acc_norm"] == pytest.approx(2 / 3)
    se = math.sqrt(np.var([1, 0, 1], ddof=1) / 3)
    assert res["acc_stderr"] == pytest.approx(se)
    assert res["acc_ci95_low"] == pytest.approx(2 / 3 - 1.96 * se) and res["n"] == 3
    lines = [json.loads(x) for x in items.read_text().splitlines()]
    assert [r["pred"] for r in lines] == [0, 0, 1] and [r["pred_norm"] for r in lines] == [1, 1, 1]
    assert lines[0]["loglikelihoods"] == [-3.0, -4.0] and lines[0]["context"] == "Question: q1\nAnswer:"


# --------------------------------------------------------------------------- statistics


def test_stderr_is_the_harness_mean_stderr():
    xs = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert mean_stderr(xs) == pytest.approx(np.std(xs, ddof=1) / math.sqrt(len(xs)))
    assert mean_stderr([0.0, 1.0]) == pytest.approx(0.5)
    assert math.isnan(mean_stderr([1.0]))


def test_group_aggregates():
    rng = random.Random(0)
    groups = [[float(rng.random() < p) for _ in range(n)] for p, n in ((0.3, 50), (0.6, 50), (0.9, 50))]
    members = [summarize({"acc": g}) for g in groups]
    # BLiMP: unweighted mean; with equal sizes the pooled stderr is the stderr of the mean of independent means
    blimp = aggregate(members, ("acc",), weight_by_size=False)
    assert blimp["acc"] == pytest.approx(np.mean([m["acc"] for m in members]))
    assert blimp["acc_stderr"] == pytest.approx(math.sqrt(sum(m["acc_stderr"] ** 2 for m in members)) / 3)
    # MMLU: weighted by size
    members[0] = summarize({"acc": groups[0][:10]})
    mmlu = aggregate(members, ("acc",), weight_by_size=True)
    assert mmlu["acc"] == pytest.approx(sum(sum(g) for g in (groups[0][:10], groups[1], groups[2])) / 110)
    assert mmlu["n"] == 110
    ses, sizes = [m["acc_stderr"] for m in members], [10, 50, 50]
    want = math.sqrt(sum((n - 1) * s * s * n for s, n in zip(ses, sizes)) / (110 - 3) / 110)
    assert pooled_sample_stderr(ses, sizes) == pytest.approx(want) == mmlu["acc_stderr"]


def test_limit_subset_is_seeded_and_deterministic(bench):
    a = sample_ids(1000, 25, 1234, "blimp_passive_1")
    assert a == sample_ids(1000, 25, 1234, "blimp_passive_1") and a == sorted(a) and len(set(a)) == 25
    assert a != sample_ids(1000, 25, 1235, "blimp_passive_1")
    assert a != sample_ids(1000, 25, 1234, "blimp_passive_2")  # each sub-task draws its own subset
    assert sample_ids(10, 50, 0, "x") == list(range(10))


# --------------------------------------------------------------------------- a tiny real model


def tiny_model(context_length: int = 64, seed: int = 0):
    models = pytest.importorskip("stlm.models")
    if not hasattr(models, "build_model"):
        pytest.skip("stlm.models.build_model is not available yet")
    from stlm.tokenizers import load_tokenizer

    cfg = ModelConfig(tokenizer="bytes", context_length=context_length, n_layers=2, d_model=32, n_heads=2)
    tok = load_tokenizer(cfg, DataConfig())
    torch.manual_seed(seed)
    return models.build_model(cfg, tok).eval(), tok, cfg


def test_batched_scoring_equals_one_at_a_time(bench):
    model, tok, _ = tiny_model(context_length=64)
    t = TASKS["hellaswag"]()
    docs = t.docs("hellaswag", str(bench))
    items = [t.item(docs[i], i, "hellaswag") for i in range(6)]
    items += [first_item("mmlu", bench, "mmlu_anatomy")]  # 4 continuations read from one shared row
    lm1 = StlmLM(model, tok, batch_size=1)
    lm1.dedup = False
    lm8 = StlmLM(model, tok, batch_size=8)
    reqs = [lm8.encode_pair(c, k) for it in items for c, k in zip(it.contexts, it.continuations)]
    assert any(len(c) + len(k) > 65 for c, k in reqs)  # some are truncated from the left
    one, batched = lm1.loglikelihood(reqs), lm8.loglikelihood(reqs)
    for (a, ga), (b, gb) in zip(one, batched):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5) and ga == gb
    # the vocabulary projection on continuation positions only == the model's full forward
    full = StlmLM(model, tok, batch_size=8)
    full.split_head = False
    for (a, ga), (b, gb) in zip(batched, full.loglikelihood(reqs)):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5) and ga == gb
    # shared contexts run once through the KV cache: same scores up to float rounding
    cached = StlmLM(model, tok, batch_size=8, context_cache=True).loglikelihood(reqs)
    for (a, ga), (b, gb) in zip(one, cached):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4) and ga == gb
    # and both equal the model's own token_logprobs on the (left-truncated) sequence
    ctx, cont = reqs[0]
    whole = (ctx + cont)[-65:]
    lp = model.token_logprobs(torch.tensor([whole[:-1]]), torch.tensor([whole[1:]]))[0, -len(cont) :].sum()
    assert one[0][0] == pytest.approx(float(lp.detach()), abs=1e-4)


def test_context_cache_equals_plain_scoring():
    model, tok, _ = tiny_model(context_length=64)
    g = random.Random(0)

    def tokens(n):
        return [g.randrange(256) for _ in range(n)]

    reqs = []
    for plen in (5, 5, 5, 9, 9, 30, 1):  # groups of equal context length share a batch; 1: EOT-like, plain
        ctx = tokens(plen)
        reqs += [(ctx, tokens(g.randint(1, 6))) for _ in range(3)]
    mmlu_like = tokens(12)
    reqs += [(mmlu_like, [t]) for t in (65, 66, 67, 68)]  # one shared row: plain path
    long_ctx = tokens(70)
    reqs += [(long_ctx, tokens(3)), (long_ctx, tokens(4))]  # truncated from the left: plain path
    plain = StlmLM(model, tok, batch_size=1, dedup=False).loglikelihood(reqs)
    for bs in (4, 32):
        lm = StlmLM(model, tok, batch_size=bs, context_cache=True)
        shared_batches = []
        lm._score_shared = lambda plen, chunk, *a, _f=lm._score_shared: (
            shared_batches.append(plen),  # noqa: B023 - each round's lambda is used in that round
            _f(plen, chunk, *a),
        )
        cached = lm.loglikelihood(reqs)
        assert sorted(set(shared_batches)) == [4, 8, 29]  # the cache served every shared-context group
        for (a, ga), (b, gb) in zip(plain, cached):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-4) and ga == gb


def test_evaluate_real_model_is_deterministic(bench, tmp_path):
    model, tok, _ = tiny_model()
    kw = dict(limit=2, data_dir=str(bench), batch_size=16)
    r1 = evaluate(model, tok, ["blimp", "winogrande"], items_path=tmp_path / "a.jsonl", **kw)
    r2 = evaluate(model, tok, ["blimp", "winogrande"], items_path=tmp_path / "b.jsonl", **kw)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert r1 == r2
    assert r1["blimp"]["n"] == 67 * 2 and r1["winogrande"]["n"] == 2
    members = [v["acc"] for k, v in r1.items() if k.startswith("blimp_")]
    assert len(members) == 67 and r1["blimp"]["acc"] == pytest.approx(np.mean(members))


def test_mmlu_groups_weighted_by_size(bench):
    model, tok, _ = tiny_model()
    r = evaluate(model, tok, ["mmlu"], limit=2, data_dir=str(bench))
    cats = [f"mmlu_{c}" for c in ("stem", "other", "social_sciences", "humanities")]
    assert r["mmlu"]["n"] == 57 * 2 and sum(r[c]["n"] for c in cats) == 114
    assert r["mmlu"]["acc"] == pytest.approx(sum(r[c]["acc"] * r[c]["n"] for c in cats) / 114)
    assert r["mmlu_stem"]["n"] == 2 * 19  # anatomy counts as STEM in the harness


# --------------------------------------------------------------------------- `stlm eval` on a checkpoint


def _save_tiny_checkpoint(tmp_path):
    ck = pytest.importorskip("stlm.train.checkpoint")
    from stlm.config import build_config

    model, tok, _ = tiny_model()
    cfg = build_config(
        {
            "model": {"tokenizer": "bytes", "context_length": 64, "n_layers": 2, "d_model": 32, "n_heads": 2},
            "eval": {"tasks": ["arc_easy"]},
        }
    )
    path = tmp_path / "run" / "step_000010"
    ck.save_checkpoint(
        path,
        model_state=model.state_dict(),
        trainer_state={},
        cfg=cfg,
        meta={"step": 10, "tokenizer": {"name": tok.name, "identity": tok.identity}},
    )
    return path


def test_limit_first_takes_the_harness_items(bench, tmp_path, capsys):
    """lm-evaluation-harness's --limit N scores the first N docs of each task: --subset first does the same."""
    from stlm.cli import main

    assert sample_ids(1000, 25, 1234, "blimp_passive_1", "first") == list(range(25))
    path = _save_tiny_checkpoint(tmp_path)
    items, out = tmp_path / "items.jsonl", tmp_path / "res.json"
    rc = main(
        [
            "eval",
            str(path.parent),
            "--tasks",
            "arc_easy,winogrande",
            "--limit",
            "3",
            "--subset",
            "first",
            "--data-dir",
            str(bench),
            "--items",
            str(items),
            "--json",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    assert [(r["task"], r["doc_id"]) for r in rows] == [("arc_easy", i) for i in range(3)] + [
        ("winogrande", i) for i in range(3)
    ]
    assert "the first 3 documents per (sub)task (as lm-evaluation-harness --limit 3)" in capsys.readouterr().out
    assert json.loads(out.read_text())["selection"] == {"limit": 3, "subset": "first"}
    main(["eval", str(path.parent), "--tasks", "arc_easy", "--limit", "3", "--data-dir", str(bench), "--device", "cpu"])
    assert "a seeded random 3 documents per (sub)task (seed 1234" in capsys.readouterr().out


def test_mmlu_stderr_is_pooled_over_the_57_subjects(bench):
    model, tok, _ = tiny_model()
    r = evaluate(model, tok, ["mmlu"], limit=3, data_dir=str(bench))
    subjects = [
        v
        for k, v in r.items()
        if k.startswith("mmlu_") and k.removeprefix("mmlu_") not in ("stem", "other", "social_sciences", "humanities")
    ]
    assert len(subjects) == 57
    # lm_eval.api.metrics.pooled_sample_stderr over the subjects, written out
    sizes, ses = [s["n"] for s in subjects], [s["acc_stderr"] for s in subjects]
    n_all, k = sum(sizes), len(sizes)
    want = math.sqrt(sum((n - 1) * se**2 * n for n, se in zip(sizes, ses)) / (n_all - k) / n_all)
    assert r["mmlu"]["acc_stderr"] == pytest.approx(want, rel=1e-12)
    assert r["mmlu"]["acc"] == pytest.approx(sum(s["acc"] * s["n"] for s in subjects) / n_all)


def test_hellaswag_doc_1673_is_capitalised_like_the_harness(bench):
    t = TASKS["hellaswag"]()
    docs = t.docs("hellaswag", str(bench))
    # the row's fields: ctx_a = 'The words "... machetes!" appears on screen.',
    # ctx_b = 'a volunteer named " irene zimmerman "';
    # harness: activity_label + ": " + ctx_a + " " + ctx_b.capitalize(), written out
    got = t.item(docs[1673], 1673, "hellaswag").contexts[0]
    assert got == (
        'Cutting the grass: The words "the good works tour cuts the lawn with machetes!" appears on screen. '
        'A volunteer named " irene zimmerman "'
    )


def test_hf_wrapper_passes_dtype_not_the_deprecated_torch_dtype(shared_data, tmp_path, capfd):
    tr = pytest.importorskip("transformers")
    import warnings

    from stlm.eval.hf import HFLM

    src = shared_data / "tokenizers" / "gpt2"
    (tmp_path / "vocab.json").write_bytes((src / "gpt2_vocab.json").read_bytes())
    (tmp_path / "merges.txt").write_bytes((src / "gpt2_merges.txt").read_bytes())
    tr.GPT2TokenizerFast.from_pretrained(str(tmp_path)).save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    tr.GPT2LMHeadModel(tr.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64)).save_pretrained(str(tmp_path))
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = HFLM(str(tmp_path), dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    # transformers 5 logs "`torch_dtype` is deprecated! Use `dtype` instead!" to stderr (not a warning)
    assert "torch_dtype" not in capfd.readouterr().err
    assert not [w for w in caught if "torch_dtype" in str(w.message)]


def test_stlm_eval_cli_on_a_checkpoint(bench, tmp_path, capsys):
    from stlm.cli import main

    path = _save_tiny_checkpoint(tmp_path)
    items, out = tmp_path / "items.jsonl", tmp_path / "res.json"
    rc = main(
        [
            "eval",
            str(path.parent),
            "--tasks",
            "arc_easy,winogrande",
            "--limit",
            "4",
            "--data-dir",
            str(bench),
            "--items",
            str(items),
            "--json",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["arc_easy"]["n"] == 4 and res["winogrande"]["n"] == 4
    assert len(items.read_text().splitlines()) == 8
    assert "arc_easy" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "missing"), "--tasks", "arc_easy"]) == 2


def test_stlm_eval_without_data_and_hub_fails_at_once(tmp_path, monkeypatch, capsys):
    """No benchmark directory and a hub that does not answer: exit 2 within seconds, naming the offline
    alternatives, instead of datasets' ~30 s of retries (issue 21, item 8)."""
    import time

    from stlm import offline
    from stlm.cli import main

    path = _save_tiny_checkpoint(tmp_path)
    monkeypatch.delenv("STLM_BENCHMARKS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    offline.unreachable.cache_clear()
    t0 = time.monotonic()
    rc = main(["eval", str(path.parent), "--tasks", "arc_easy", "--limit", "2", "--device", "cpu"])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and took < 15, (rc, took)
    assert "127.0.0.1:9 cannot be reached" in err and "--data-dir" in err and "STLM_BENCHMARKS" in err
    assert "Traceback" not in err


def test_bpb_task_uses_the_prepared_val_split(tmp_path):
    pytest.importorskip("stlm.data.prepare")
    from stlm.config import build_config
    from stlm.data import prepare
    from stlm.data.loader import val_windows
    from stlm.eval.bpb import evaluate_bpb

    model, tok, _ = tiny_model(context_length=64)
    cfg = build_config(
        {
            "model": {"tokenizer": "bytes", "context_length": 64, "n_layers": 2, "d_model": 32, "n_heads": 2},
            "data": {"source": "generated", "max_chars": 20_000, "cache_dir": str(tmp_path), "num_proc": 1},
        }
    )
    res = evaluate(model, tok, ["bpb"], config=cfg, limit=5)["bpb"]
    data = prepare(cfg)
    want = evaluate_bpb(model, val_windows(data.val, 64, 5), tok.byte_lengths, "cpu")
    assert res["n"] == 5 and res["val_bpb"] == pytest.approx(want["val_bpb"]) and 5 < res["val_bpb"] < 12
    with pytest.raises(StlmError, match="needs the run's config"):
        evaluate(model, tok, ["bpb"])


@pytest.mark.parametrize("embedder", ["token", "byte_pooled"])
def test_val_bpb_scores_only_text_targets_and_val_loss_every_target(request, embedder):
    """The end-of-text after each document stands for no byte: val_bpb leaves its bits out (as
    lm-evaluation-harness's bits_per_byte scores a document's text only); val_loss keeps it."""
    from stlm.data.loader import val_windows
    from stlm.eval.bpb import evaluate_bpb
    from stlm.models import build_model

    if embedder == "token":
        model, tok, _ = tiny_model(context_length=32)
    else:  # byte-level: still one log-prob per BPE target, so the same rule
        from stlm.config import ByteLevelConfig

        tok = request.getfixturevalue("gpt2_tok")
        cfg = ModelConfig(
            tokenizer="gpt2",
            embedder="byte_pooled",
            context_length=32,
            n_layers=1,
            d_model=32,
            n_heads=2,
            byte_level=ByteLevelConfig(byte_dim=16, chunk_len=8, encoder_layers=1, decoder_layers=1, n_heads=2),
        )
        torch.manual_seed(0)
        model = build_model(cfg, tok).eval()
    docs = ["To be, or not to be: that is the question.", "Ay, there's the rub.", "Words, words, words."] * 8
    windows = val_windows(tok.encode_documents(docs), 32, 3)
    x = torch.cat([w[0].reshape(-1, 32) for w in windows])
    y = torch.cat([w[1].reshape(-1, 32) for w in windows])
    with torch.no_grad():
        nll = -model.token_logprobs(x, y).double()
    text = y != tok.eot_id
    n_bytes = int(tok.byte_lengths[y[text].numpy()].sum())
    assert (~text).sum() >= 3 and n_bytes == len(tok.decode(y[text].tolist()).encode())  # EOT targets are scored

    got = evaluate_bpb(model, windows, tok.byte_lengths, "cpu", batch_size=2)
    assert got["val_bpb"] == pytest.approx(float(nll[text].sum()) / (math.log(2) * n_bytes), rel=1e-9)
    assert got["val_loss"] == pytest.approx(float(nll.mean()), rel=1e-9)  # EOT included
    assert got["val_bpb"] < float(nll.sum()) / (math.log(2) * n_bytes)  # the old rule counted EOT's bits


def test_hf_wrapper_without_transformers_says_which_extra_to_install(monkeypatch):
    """(Scoring through transformers is tested in test_hf.py.)"""
    from stlm.eval.hf import HFLM

    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` sees when it is absent
    with pytest.raises(StlmError, match="pip install 'stlm\\[transformers\\]'"):
        HFLM("gpt2")


@pytest.mark.slow  # MLflow's sqlite store takes several seconds to create
def test_stlm_eval_resolves_an_mlflow_run_id(bench, tmp_path):
    from stlm.cli import main
    from stlm.tracking import mlflow_client

    path = _save_tiny_checkpoint(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp, tags={"stlm.checkpoint": str(path)})
    out = tmp_path / "r.json"
    rc = main(
        [
            "eval",
            run.info.run_id,
            "--tracking-uri",
            uri,
            "--tasks",
            "winogrande",
            "--limit",
            "2",
            "--data-dir",
            str(bench),
            "--json",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and json.loads(out.read_text())["winogrande"]["n"] == 2
    # the results went back to the run the checkpoint came from: metrics at the checkpoint's step, items under eval/
    hist = client.get_metric_history(run.info.run_id, "eval/winogrande/acc")
    assert [m.step for m in hist] == [10] and hist[0].value == json.loads(out.read_text())["winogrande"]["acc"]
    assert [Path(f.path).name for f in client.list_artifacts(run.info.run_id, "eval")] == ["items.jsonl"]
    assert client.get_run(run.info.run_id).data.tags["stlm.eval.subset"] == "random"


def test_eval_finds_the_mlflow_run_a_checkpoint_came_from(tmp_path):
    from stlm.eval.__main__ import source_run

    run_dir = tmp_path / "runs" / "baseline"  # `stlm train` writes mlflow_run.json beside its checkpoints
    (run_dir / "step_000010").mkdir(parents=True)
    (run_dir / "mlflow_run.json").write_text(json.dumps({"run_id": "a" * 32, "tracking_uri": "sqlite:///x.db"}))
    assert source_run(run_dir / "step_000010") == ("a" * 32, "sqlite:///x.db")
    exp = tmp_path / "sweep"  # a sweep trial's checkpoint: the sweep's ledger names its run
    ck = exp / "trials" / "t1" / "checkpoints" / "run" / "step_000005"
    ck.mkdir(parents=True)
    (exp / "mlflow_state.json").write_text(json.dumps({"trials": {"t1": {"run_id": "b" * 32}}}))
    (exp / "sweep.json").write_text(json.dumps({"tracking_uri": "sqlite:///y.db"}))
    assert source_run(ck) == ("b" * 32, "sqlite:///y.db")
    assert source_run(tmp_path / "elsewhere") is None
