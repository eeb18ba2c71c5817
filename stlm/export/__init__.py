"""Export stlm models to Hugging Face transformers (safetensors, tokenizer files, a model card).

    stlm export runs/baseline-10m export/baseline-10m        # checkpoint, run dir or MLflow run id

    from stlm.export import export_checkpoint, to_transformers
    result = export_checkpoint("runs/baseline-10m", "export/baseline-10m")
    hf_model, target = to_transformers(model, tokenizer.eot_id)    # in memory, same logits

targets.py (which architecture, the weight mapping), tokenizer.py, card.py, convert.py (build, check,
write), __main__.py (`stlm export`).
"""

from stlm.export.convert import ExportResult, export_checkpoint, max_logit_diff, to_transformers
from stlm.export.targets import choose_target
from stlm.export.tokenizer import save_tokenizer, to_hf_tokenizer

__all__ = [
    "ExportResult",
    "choose_target",
    "export_checkpoint",
    "max_logit_diff",
    "save_tokenizer",
    "to_hf_tokenizer",
    "to_transformers",
]
