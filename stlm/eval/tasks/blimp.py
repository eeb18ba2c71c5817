"""BLiMP (Warstadt et al. 2020): 67 minimal-pair sub-tasks, as lm-evaluation-harness scores them.

Harness (lm_eval/tasks/blimp/_template_yaml):
    doc_to_text ""  doc_to_choice [sentence_good, sentence_bad]  doc_to_target 0
so each request is ("", " " + sentence): the whole sentence, preceded by the target delimiter,
scored after the EOT token (the harness conditions an empty context on the EOT/prefix token).
Metric: acc per sub-task (blimp_<uid>); "blimp" is the unweighted mean of the 67 sub-tasks.

Local files: <benchmarks>/blimp/<uid>.jsonl (original alexwarstadt/blimp format, same fields as the
HF nyu-mll/blimp rows).
"""

from __future__ import annotations

from stlm.eval.tasks.base import TARGET_DELIMITER, Item, Task, load_hub, read_jsonl

UIDS = [
    "adjunct_island",
    "anaphor_gender_agreement",
    "anaphor_number_agreement",
    "animate_subject_passive",
    "animate_subject_trans",
    "causative",
    "complex_NP_island",
    "coordinate_structure_constraint_complex_left_branch",
    "coordinate_structure_constraint_object_extraction",
    "determiner_noun_agreement_1",
    "determiner_noun_agreement_2",
    "determiner_noun_agreement_irregular_1",
    "determiner_noun_agreement_irregular_2",
    "determiner_noun_agreement_with_adj_2",
    "determiner_noun_agreement_with_adj_irregular_1",
    "determiner_noun_agreement_with_adj_irregular_2",
    "determiner_noun_agreement_with_adjective_1",
    "distractor_agreement_relational_noun",
    "distractor_agreement_relative_clause",
    "drop_argument",
    "ellipsis_n_bar_1",
    "ellipsis_n_bar_2",
    "existential_there_object_raising",
    "existential_there_quantifiers_1",
    "existential_there_quantifiers_2",
    "existential_there_subject_raising",
    "expletive_it_object_raising",
    "inchoative",
    "intransitive",
    "irregular_past_participle_adjectives",
    "irregular_past_participle_verbs",
    "irregular_plural_subject_verb_agreement_1",
    "irregular_plural_subject_verb_agreement_2",
    "left_branch_island_echo_question",
    "left_branch_island_simple_question",
    "matrix_question_npi_licensor_present",
    "npi_present_1",
    "npi_present_2",
    "only_npi_licensor_present",
    "only_npi_scope",
    "passive_1",
    "passive_2",
    "principle_A_c_command",
    "principle_A_case_1",
    "principle_A_case_2",
    "principle_A_domain_1",
    "principle_A_domain_2",
    "principle_A_domain_3",
    "principle_A_reconstruction",
    "regular_plural_subject_verb_agreement_1",
    "regular_plural_subject_verb_agreement_2",
    "sentential_negation_npi_licensor_present",
    "sentential_negation_npi_scope",
    "sentential_subject_island",
    "superlative_quantifiers_1",
    "superlative_quantifiers_2",
    "tough_vs_raising_1",
    "tough_vs_raising_2",
    "transitive",
    "wh_island",
    "wh_questions_object_gap",
    "wh_questions_subject_gap",
    "wh_questions_subject_gap_long_distance",
    "wh_vs_that_no_gap",
    "wh_vs_that_no_gap_long_distance",
    "wh_vs_that_with_gap",
    "wh_vs_that_with_gap_long_distance",
]
assert len(UIDS) == 67


class Blimp(Task):
    name = "blimp"
    folder = "blimp"
    metrics = ("acc",)
    group_weighting = "mean"  # unweighted mean of the sub-task accuracies

    def subtasks(self):
        return [f"blimp_{uid}" for uid in UIDS]

    def docs(self, subtask, data_dir):
        uid = subtask.removeprefix("blimp_")
        d = self.local_dir(data_dir)
        if d is None:
            return load_hub(self.name, "nyu-mll/blimp", uid, "train")
        path = d / f"{uid}.jsonl"
        if not path.is_file():
            raise self.missing(d, f"{uid}.jsonl (and the other 66 <uid>.jsonl files of BLiMP)")
        return read_jsonl(path)

    def item(self, doc, doc_id, subtask):
        choices = [doc["sentence_good"], doc["sentence_bad"]]
        return Item(
            task=subtask,
            doc_id=doc_id,
            contexts=["", ""],
            continuations=[TARGET_DELIMITER + c for c in choices],
            choices=choices,
            gold=0,
        )
