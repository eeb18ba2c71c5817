"""Any Hugging Face causal LM behind the same LM interface, so it goes through exactly the same evaluator.

    from stlm.eval import evaluate
    from stlm.eval.hf import HFLM
    results = evaluate(HFLM("gpt2", device="cuda"), None, ["hellaswag", "arc_easy"])

Mirrors lm-evaluation-harness's HFLM where it matters for scores: no special tokens when encoding,
an empty context is conditioned on the prefix token (BOS if the tokenizer has one, else EOS), the
maximum length comes from the model config (n_positions / max_position_embeddings / n_ctx), rows are
right-padded without an attention mask (causal: padding cannot reach real positions). Needs the
optional extra: pip install 'stlm[transformers]'.
"""

from __future__ import annotations

import re

import torch

from stlm.errors import StlmError
from stlm.eval.scorer import TorchLM


def _transformers():
    try:
        # lazy: transformers, only for a Hugging Face model
        import transformers
    except ImportError:
        raise StlmError("stlm.eval.hf needs the `transformers` package: pip install 'stlm[transformers]'.") from None
    return transformers


def _dtype_kwarg(tr) -> str:
    """`dtype=` since transformers 4.56; `torch_dtype=` before (deprecated in 5, which warns on it)."""
    major, minor = (int(x) for x in re.findall(r"\d+", tr.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class HFLM(TorchLM):
    def __init__(
        self,
        pretrained,
        tokenizer=None,
        *,
        batch_size: int = 32,
        device: str = "cpu",
        dtype: str = "float32",
        revision: str | None = None,
        max_length: int | None = None,
    ):
        """`pretrained`: a hub name / local path, or an already built transformers model (then pass `tokenizer`)."""
        tr = _transformers()
        if isinstance(pretrained, str):
            self.model = tr.AutoModelForCausalLM.from_pretrained(
                pretrained, revision=revision, **{_dtype_kwarg(tr): getattr(torch, dtype)}
            )
            tokenizer = tokenizer or tr.AutoTokenizer.from_pretrained(pretrained, revision=revision)
        else:
            self.model = pretrained
            if tokenizer is None:
                raise StlmError("HFLM with a model object needs its tokenizer too.")
        self.tokenizer = tokenizer
        self.model.to(device).eval()
        self.device = str(device)
        self.batch_size = batch_size
        self.vocab_size = int(self.model.config.vocab_size)
        self.has_logits = True
        eos = tokenizer.eos_token_id
        bos = getattr(tokenizer, "bos_token_id", None)
        self.eot_id = int(bos if bos is not None else eos)  # the harness's prefix_token_id
        self.max_length = int(max_length or self._max_length())

    def _max_length(self) -> int:
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            v = getattr(self.model.config, attr, None)
            if v:
                return int(v)
        m = getattr(self.tokenizer, "model_max_length", None)
        return int(m) if m and m < 10**9 else 2048

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _logits(self, idx):
        return self.model(idx).logits
