"""WinoGrande (Sakaguchi et al. 2019), winogrande_xl validation, as lm-evaluation-harness scores it.

Harness (lm_eval/tasks/winogrande/default.yaml + preprocess_winogrande.py): partial scoring.
    idx           = sentence.index("_")
    doc_to_choice = [sentence[:idx] + option1, sentence[:idx] + option2]   (placed in the CONTEXT)
    doc_to_target = sentence[idx + 1:].strip()                             (shared continuation)
    request i     = (choice_i, " " + target);  gold = {"1": 0, "2": 1}[answer]
Metric: acc only (the continuation is shared, so a length normalisation could not change the argmax).

Local file: <benchmarks>/winogrande/dev.jsonl (original v1.1 format = HF rows: sentence, option1,
option2, answer "1"/"2"); validation.jsonl is accepted too.
"""

from __future__ import annotations

from stlm.eval.tasks.base import TARGET_DELIMITER, Item, Task, load_hub, read_jsonl


class WinoGrande(Task):
    name = "winogrande"
    folder = "winogrande"
    metrics = ("acc",)

    def docs(self, subtask, data_dir):
        d = self.local_dir(data_dir)
        if d is None:
            return load_hub(self.name, "allenai/winogrande", "winogrande_xl", "validation")
        for fname in ("dev.jsonl", "validation.jsonl"):
            if (d / fname).is_file():
                return read_jsonl(d / fname)
        raise self.missing(d, "dev.jsonl (WinoGrande v1.1 dev: sentence, option1, option2, answer)")

    def item(self, doc, doc_id, subtask):
        sentence = doc["sentence"]
        idx = sentence.index("_")
        choices = [sentence[:idx] + doc["option1"], sentence[:idx] + doc["option2"]]
        target = sentence[idx + 1 :].strip()
        return Item(
            task=self.name,
            doc_id=doc_id,
            contexts=choices,
            continuations=[TARGET_DELIMITER + target] * 2,
            choices=choices,
            gold={"1": 0, "2": 1}[str(doc["answer"]).strip()],
        )
