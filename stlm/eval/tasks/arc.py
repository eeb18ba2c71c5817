"""ARC-Easy and ARC-Challenge (Clark et al. 2018), test split, as lm-evaluation-harness scores them.

Harness (lm_eval/tasks/arc/arc_easy.yaml; arc_challenge.yaml includes it with dataset_name ARC-Challenge):
    doc_to_text   "Question: {{question}}\\nAnswer:"
    doc_to_choice {{choices.text}}   -> continuation " " + text
    doc_to_target {{choices.label.index(answerKey)}}
Metrics: acc, acc_norm, plus acc_bytes.

Local files in <benchmarks>/arc/: ARC-Easy-Test.jsonl / ARC-Challenge-Test.jsonl in the AI2 format
({"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}) or the HF format
({"question": str, "choices": {"text": [...], "label": [...]}, "answerKey"}), one JSON object a line.
"""

from __future__ import annotations

from stlm.eval.tasks.base import TARGET_DELIMITER, Item, Task, load_hub, read_jsonl


def normalize(doc: dict) -> dict:
    """AI2 or HF row -> {question, texts, labels, answerKey}."""
    q = doc["question"]
    if isinstance(q, dict):  # AI2 format
        return {
            "question": q["stem"],
            "texts": [c["text"] for c in q["choices"]],
            "labels": [c["label"] for c in q["choices"]],
            "answerKey": doc["answerKey"],
        }
    return {
        "question": q,
        "texts": list(doc["choices"]["text"]),
        "labels": list(doc["choices"]["label"]),
        "answerKey": doc["answerKey"],
    }


class Arc(Task):
    folder = "arc"
    subset = ""  # ARC-Easy | ARC-Challenge

    def docs(self, subtask, data_dir):
        d = self.local_dir(data_dir)
        if d is None:
            return load_hub(self.name, "allenai/ai2_arc", self.subset, "test")
        for fname in (f"{self.subset}-Test.jsonl", f"{self.subset}/test.jsonl", f"{self.subset}-test.jsonl"):
            if (d / fname).is_file():
                return read_jsonl(d / fname)
        raise self.missing(d, f"{self.subset}-Test.jsonl (AI2 or HF jsonl format)")

    def item(self, doc, doc_id, subtask):
        doc = normalize(doc)
        return Item(
            task=self.name,
            doc_id=doc_id,
            contexts=[f"Question: {doc['question']}\nAnswer:"] * len(doc["texts"]),
            continuations=[TARGET_DELIMITER + t for t in doc["texts"]],
            choices=doc["texts"],
            gold=doc["labels"].index(doc["answerKey"]),
        )


class ArcEasy(Arc):
    name = "arc_easy"
    subset = "ARC-Easy"


class ArcChallenge(Arc):
    name = "arc_challenge"
    subset = "ARC-Challenge"
