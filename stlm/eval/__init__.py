"""Evaluation: benchmarks scored as lm-evaluation-harness scores them, bpb, generation.

from stlm.eval import evaluate
results = evaluate(model, tokenizer, ["blimp", "hellaswag"], limit=200, items_path="items.jsonl")
"""

from stlm.eval.harness import evaluate, flat_metrics, format_table

__all__ = ["evaluate", "flat_metrics", "format_table"]
