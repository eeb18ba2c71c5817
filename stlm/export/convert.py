"""An stlm model as a transformers model, checked against the original, written as a hub directory.

    hf_model, target = to_transformers(model, tokenizer)     # same logits, fp32
    diff = max_logit_diff(model, hf_model)                   # on seeded random tokens
    result = export_checkpoint("runs/baseline-10m", "export/baseline-10m")

The directory holds config.json, generation_config.json, model.safetensors, the tokenizer files and
README.md (the model card). It is written beside OUT_DIR and renamed into place, so a failed export
never leaves a half directory.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stlm.atomic import replace_dir
from stlm.data.generated import story
from stlm.errors import StlmError
from stlm.export.card import gather_record, model_card
from stlm.export.targets import Target, choose_target
from stlm.export.tokenizer import save_tokenizer
from stlm.models import count_params
from stlm.train.checkpoint import load_model, read_config, resolve_checkpoint

CHECK_TOKENS = 64  # length of the random sequences the export is checked on
TOLERANCE = 1e-4  # max |logit difference| allowed, relative to max(1, |logits|)


def transformers_module():
    try:
        # lazy: transformers (an optional extra), only when exporting
        import transformers
    except ImportError:
        raise StlmError("stlm export needs the `transformers` package: pip install 'stlm[transformers]'.") from None
    return transformers


def to_transformers(model, eot_id: int):
    """(transformers model in eval mode, its Target) computing what `model` computes."""
    tr = transformers_module()
    target = choose_target(model.config)
    config = target.hf_config(model.config, eot_id)
    hf = tr.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = target.state_dict(model)
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # transformers ties it to the embedding itself
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (model.config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:  # a mapping bug, not a user error: say exactly what did not line up
        raise RuntimeError(f"stlm export ({target.hf_class}): weights missing {missing}, unexpected {unexpected}")
    hf.generation_config = tr.GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    return hf.eval(), target


@torch.no_grad()
def max_logit_diff(model, hf_model, ids: torch.Tensor | None = None, seed: int = 0) -> tuple[float, float]:
    """(max |stlm logits - transformers logits|, max |stlm logits|) on `ids` [B, T], or on 2 seeded random sequences."""
    if ids is None:
        g = torch.Generator().manual_seed(seed)
        T = min(CHECK_TOKENS, model.config.context_length)
        ids = torch.randint(0, model.config.effective_vocab_size, (2, T), generator=g)
    model.eval()
    ours = model(ids)[0].float()
    theirs = hf_model(ids).logits.float()
    return float((ours - theirs).abs().max()), float(ours.abs().max())


def exported_params(hf_model) -> int:
    return sum(p.numel() for p in hf_model.parameters())  # parameters() lists a tied weight once


def check_directory(path: Path, model, tokenizer, target: Target) -> float:
    """Reload the written directory as a user would; its logits and token ids must be stlm's. Returns the logit gap."""
    tr = transformers_module()
    reloaded = tr.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    diff, scale = max_logit_diff(model, reloaded)
    if diff > TOLERANCE * max(1.0, scale):
        raise RuntimeError(
            f"stlm export: the exported {target.hf_class} differs from the checkpoint by {diff:.3g} "
            f"in the logits (allowed {TOLERANCE:g} x max(1, {scale:.3g}))"
        )
    sample = story("val", 0) + " Zoë's café: 12345\n\n  \t日本語 😀 <|endoftext|>"
    if tr.AutoTokenizer.from_pretrained(str(path)).encode(sample, add_special_tokens=False) != tokenizer.encode(sample):
        raise RuntimeError(f"stlm export: the exported tokenizer does not encode text as stlm's {tokenizer.name} does")
    return diff


@dataclass
class ExportResult:
    out_dir: Path
    target: Target
    exported_params: int
    unique_params: int
    max_abs_diff: float
    files: list[str] = field(default_factory=list)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    eval_json: str | None = None,
    license: str = "other",
    name: str | None = None,
    force: bool = False,
) -> ExportResult:
    """Export the checkpoint (or a run directory's latest one) to `out_dir` as a transformers model + card."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise StlmError(f"stlm export: {str(out)!r} already exists and is not empty; pass --force to replace it.")
    ckpt = resolve_checkpoint(checkpoint)
    choose_target(read_config(ckpt).model)  # refuse before loading weights or a tokenizer
    record = gather_record(ckpt, run_id=run_id, tracking_uri=tracking_uri, eval_json=eval_json)
    model, cfg, tokenizer = load_model(ckpt, "cpu")
    model.float()
    hf, target = to_transformers(model, tokenizer.eot_id)
    counted = count_params(cfg.model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    bars = transformers_module().utils.logging
    had_bars = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # a sub-second write and reload: the shard bars are noise
    try:
        hf.save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(tokenizer, cfg.model.context_length, tmp)
        diff = check_directory(tmp, model, tokenizer, target)
        card = model_card(
            name=name or out.name,
            cfg=cfg,
            target=target,
            counted=counted,
            exported_params=exported_params(hf),
            tokenizer=tokenizer,
            record=record,
            license=license,
            max_abs_diff=diff,
        )
        (tmp / "README.md").write_text(card)
        replace_dir(tmp, out)  # --force: the old directory is swapped out whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if had_bars:
            bars.enable_progress_bar()
    return ExportResult(out, target, exported_params(hf), counted.total, diff, sorted(p.name for p in out.iterdir()))
