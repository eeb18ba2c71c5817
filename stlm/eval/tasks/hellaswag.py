"""HellaSwag (Zellers et al. 2019), validation split, as lm-evaluation-harness scores it.

Harness (lm_eval/tasks/hellaswag/utils.py, hellaswag.yaml):
    query   = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
    choices = [preprocess(e) for e in endings];  continuation = " " + choice;  gold = int(label)
    preprocess: strip, " [title]" -> ". ", drop every "[...]" tag, "  " -> " " (one pass)
Metrics: acc, acc_norm (log-likelihood / len(choice) in characters), plus acc_bytes.

Local files in <benchmarks>/hellaswag/, first found wins:
  hellaswag_val.jsonl              original rowanz / HF rows (ctx_a, ctx_b, endings, label): exact harness path
  hellaswag_val_preprocessed.jsonl export of klosax/hellaswag_text_data (activity_label, ctx, endings, label)
  hellaswag_val_full.txt.bz2       the same export as 6 lines per item
The export has ctx = ctx_a + " " + ctx_b already preprocessed, and ctx_b NOT capitalised. We
re-capitalise the unfinished sentence after the last sentence end (that fragment is ctx_b for the
ActivityNet items; WikiHow contexts are whole sentences and ctx_b is empty). On the 10,042 items no
such fragment has an upper-case letter after its first, so str.capitalize() on it can only differ
from the harness's where ctx_b would have started earlier than the last sentence end. A fragment
that ends in a quote is still unfinished unless the quote closes a sentence: doc 1673 ('... a
volunteer named " irene zimmerman "') is capitalised ('A volunteer ...') as the harness does.
Known residual difference of the export: its per-field preprocessing trims and collapses spaces, so a
WikiHow ending that begins with a "[tag]" loses the leading space the harness keeps (" " + " text").
"""

from __future__ import annotations

import bz2
import re

from stlm.eval.tasks.base import TARGET_DELIMITER, Item, Task, load_hub, read_jsonl


def preprocess(text: str) -> str:
    text = text.strip()
    # Brackets are artifacts of the WikiHow part of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


_SENTENCE_END = re.compile(r"[.!?] ")
_ENDS_SENTENCE = re.compile(r"[.!?]\"?$")  # '... machetes!"' ends a sentence; 'named " irene zimmerman "' does not


def _capitalize_ctx_b(ctx: str) -> str:
    """Undo the export's missing ctx_b.capitalize(): 'A man is sitting on a roof. he' -> '... He'.

    ctx_b is the unfinished sentence the endings complete: the text after the last sentence end,
    when it does not end a sentence itself (WikiHow contexts are whole sentences: ctx_b is empty).
    """
    ends = list(_SENTENCE_END.finditer(ctx))
    start = ends[-1].end() if ends else 0
    fragment = ctx[start:]
    if not fragment or _ENDS_SENTENCE.search(fragment):  # a whole sentence, possibly closing a quote
        return ctx
    return ctx[:start] + fragment.capitalize()


def _read_bz2(path) -> list[dict]:
    lines = bz2.open(path, "rt", encoding="utf-8").read().split("\n")
    docs = []
    for i in range(0, len(lines) - 5, 6):
        head, label, *endings = lines[i : i + 6]
        activity_label, ctx = head.split(": ", 1)
        docs.append({"activity_label": activity_label, "ctx": ctx, "endings": endings, "label": int(label)})
    return docs


class HellaSwag(Task):
    name = "hellaswag"
    folder = "hellaswag"

    def docs(self, subtask, data_dir):
        d = self.local_dir(data_dir)
        if d is None:
            return load_hub(self.name, "Rowan/hellaswag", None, "validation")
        for fname, reader in (
            ("hellaswag_val.jsonl", read_jsonl),
            ("hellaswag_val_preprocessed.jsonl", read_jsonl),
            ("hellaswag_val_full.txt.bz2", _read_bz2),
        ):
            if (d / fname).is_file():
                return reader(d / fname)
        raise self.missing(d, "hellaswag_val.jsonl, hellaswag_val_preprocessed.jsonl or hellaswag_val_full.txt.bz2")

    def item(self, doc, doc_id, subtask):
        if "ctx_a" in doc:  # original fields: exactly the harness's process_docs
            ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        else:  # preprocessed export (see module docstring)
            ctx = _capitalize_ctx_b(doc["ctx"])
        query = preprocess(doc["activity_label"] + ": " + ctx)
        choices = [preprocess(e) for e in doc["endings"]]
        return Item(
            task=self.name,
            doc_id=doc_id,
            contexts=[query] * len(choices),
            continuations=[TARGET_DELIMITER + c for c in choices],
            choices=choices,
            gold=int(doc["label"]),
        )
