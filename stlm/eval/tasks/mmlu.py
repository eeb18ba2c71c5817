"""MMLU (Hendrycks et al. 2021), 57 subjects, test split, zero-shot, as lm-evaluation-harness scores it.

Harness (lm_eval/tasks/mmlu/default/_default_template_yaml, mmlu_<subject>.yaml, _generate_configs.py):
    description   "The following are multiple choice questions (with answers) about {subject with spaces}.\\n\\n"
    doc_to_text   "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\n"
                  "D. {{choices[3]}}\\nAnswer:"
    doc_to_choice ["A", "B", "C", "D"]  -> continuations " A" ... " D";  doc_to_target answer (0-3)
    context = description + doc_to_text (zero-shot: no examples between them)
Metric: acc (acc_norm / acc_bytes are reported too; with one-letter choices they equal acc).
Groups: mmlu_stem / mmlu_humanities / mmlu_social_sciences / mmlu_other and mmlu, each the mean
of its members weighted by their sizes (the harness's weight_by_size: True).

Local files: <benchmarks>/mmlu/test/<subject>_test.csv in either layout:
  original hendrycks CSV: no header, question,A,B,C,D,answer with a letter answer;
  the cais/mmlu-style export: header "question,choice0,choice1,choice2,choice3,answer", integer answer.
"""

from __future__ import annotations

import csv

from stlm.eval.tasks.base import TARGET_DELIMITER, Item, Task, load_hub

# subject -> category, as in the harness's lm_eval/tasks/mmlu/_generate_configs.py
SUBJECTS = {
    "abstract_algebra": "stem",
    "anatomy": "stem",
    "astronomy": "stem",
    "business_ethics": "other",
    "clinical_knowledge": "other",
    "college_biology": "stem",
    "college_chemistry": "stem",
    "college_computer_science": "stem",
    "college_mathematics": "stem",
    "college_medicine": "other",
    "college_physics": "stem",
    "computer_security": "stem",
    "conceptual_physics": "stem",
    "econometrics": "social_sciences",
    "electrical_engineering": "stem",
    "elementary_mathematics": "stem",
    "formal_logic": "humanities",
    "global_facts": "other",
    "high_school_biology": "stem",
    "high_school_chemistry": "stem",
    "high_school_computer_science": "stem",
    "high_school_european_history": "humanities",
    "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem",
    "high_school_psychology": "social_sciences",
    "high_school_statistics": "stem",
    "high_school_us_history": "humanities",
    "high_school_world_history": "humanities",
    "human_aging": "other",
    "human_sexuality": "social_sciences",
    "international_law": "humanities",
    "jurisprudence": "humanities",
    "logical_fallacies": "humanities",
    "machine_learning": "stem",
    "management": "other",
    "marketing": "other",
    "medical_genetics": "other",
    "miscellaneous": "other",
    "moral_disputes": "humanities",
    "moral_scenarios": "humanities",
    "nutrition": "other",
    "philosophy": "humanities",
    "prehistory": "humanities",
    "professional_accounting": "other",
    "professional_law": "humanities",
    "professional_medicine": "other",
    "professional_psychology": "social_sciences",
    "public_relations": "social_sciences",
    "security_studies": "social_sciences",
    "sociology": "social_sciences",
    "us_foreign_policy": "social_sciences",
    "virology": "other",
    "world_religions": "humanities",
}
assert len(SUBJECTS) == 57
CATEGORIES = ("stem", "other", "social_sciences", "humanities")
LETTERS = ["A", "B", "C", "D"]

_hub_cache: dict[str, list[dict]] = {}


def read_csv(path) -> list[dict]:
    """Either CSV layout -> [{question, choices: [4], answer: int}]."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if rows and [c.strip().lower() for c in rows[0]][-1] == "answer":
        rows = rows[1:]  # header row of the export
    docs = []
    for row in rows:
        if not row:
            continue
        question, *choices, answer = row
        answer = answer.strip()
        docs.append(
            {
                "question": question,
                "choices": choices,
                "answer": LETTERS.index(answer) if answer in LETTERS else int(answer),
            }
        )
    return docs


def description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"


def doc_to_text(doc: dict) -> str:
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


class MMLU(Task):
    name = "mmlu"
    folder = "mmlu"
    group_weighting = "weighted"

    def subtasks(self):
        return [f"mmlu_{s}" for s in SUBJECTS]

    def docs(self, subtask, data_dir):
        subject = subtask.removeprefix("mmlu_")
        d = self.local_dir(data_dir)
        if d is None:
            if "all" not in _hub_cache:
                _hub_cache["all"] = load_hub(self.name, "cais/mmlu", "all", "test")
            return [
                {"question": r["question"], "choices": list(r["choices"]), "answer": int(r["answer"])}
                for r in _hub_cache["all"]
                if r["subject"] == subject
            ]
        for path in (d / "test" / f"{subject}_test.csv", d / f"{subject}_test.csv"):
            if path.is_file():
                return read_csv(path)
        raise self.missing(d, f"test/{subject}_test.csv (one CSV per subject, 57 subjects)")

    def item(self, doc, doc_id, subtask):
        subject = subtask.removeprefix("mmlu_")
        return Item(
            task=subtask,
            doc_id=doc_id,
            contexts=[description(subject) + doc_to_text(doc)] * 4,
            continuations=[TARGET_DELIMITER + letter for letter in LETTERS],
            choices=list(LETTERS),
            gold=int(doc["answer"]),
        )
