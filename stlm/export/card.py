"""The model card (README.md of the exported directory), in the Hugging Face hub's conventions.

    record = gather_record(ckpt, cfg, run_id=..., eval_json=...)   # what stlm knows about the run
    text = model_card(name=..., cfg=cfg, target=..., counted=..., ...)

YAML front matter (library_name, license, pipeline_tag, tags, datasets) and then: architecture, exact
parameter counts (exported and unique), FLOPs per token, training data and tokens, final validation
bits-per-byte, the eval scores stlm has for the run, how to load it, and how exact the export is.

Where the numbers come from: meta.json and trainer.pt of the checkpoint (step, tokens, last
validation), the run's MLflow metrics (`eval/<task>/<metric>`, logged by a sweep trial's evaluation)
when the run is known (an MLflow run id was given, or `stlm train` left mlflow_run.json beside the
checkpoints), and an `stlm eval --json` file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import yaml

from stlm.data.sources import HUB_ID, HUB_SOURCES
from stlm.errors import StlmError
from stlm.export.tokenizer import describe
from stlm.tracking import mlflow_client
from stlm.train.__main__ import RUN_FILE
from stlm.train.checkpoint import read_meta

# metrics shown per task, in this order (the harness's names)
TASK_METRICS = ("acc", "acc_norm", "acc_bytes", "val_bpb", "val_loss")


def _trainer_metrics(ckpt: Path) -> dict:

    f = ckpt / "trainer.pt"
    if not f.is_file():
        return {}
    state = torch.load(f, map_location="cpu", weights_only=False, mmap=True)  # our own pickle
    return dict(state.get("metrics") or {}) if isinstance(state, dict) else {}


def _mlflow_run(ckpt: Path, run_id: str | None, tracking_uri: str | None) -> tuple[str | None, str | None]:
    """The MLflow run of this checkpoint: given, or the one `stlm train` recorded in the run directory."""
    if run_id:
        return run_id, tracking_uri

    f = ckpt.parent / RUN_FILE
    if f.is_file():
        saved = json.loads(f.read_text())
        return saved.get("run_id"), tracking_uri or saved.get("tracking_uri")
    return None, None


def _eval_from_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """{"eval/arc_easy/acc": v} -> {"arc_easy": {"acc": v}}."""
    out: dict[str, dict[str, float]] = {}
    for key, v in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            out.setdefault(parts[1], {})[parts[2]] = v
    return out


def gather_record(
    ckpt: Path, *, run_id: str | None = None, tracking_uri: str | None = None, eval_json: str | None = None
) -> dict:
    """{step, tokens, metrics (last validation), evals {task: {metric: v}}, mlflow_run, notes}."""
    meta = read_meta(ckpt)
    rec = {
        "step": meta.get("step"),
        "tokens": meta.get("tokens"),
        "metrics": _trainer_metrics(ckpt),
        "evals": {},
        "mlflow_run": None,
        "notes": [],
    }
    rid, uri = _mlflow_run(ckpt, run_id, tracking_uri)
    if rid:
        try:
            client = mlflow_client(uri)
            run = client.get_run(rid)
            rec["mlflow_run"] = rid
            rec["evals"] = _eval_from_metrics(run.data.metrics)
            for k in ("val_bpb", "val_loss"):
                if k not in rec["metrics"] and k in run.data.metrics:
                    rec["metrics"][k] = run.data.metrics[k]
        except Exception as e:  # noqa: BLE001 - the card is still written, and says what is missing
            rec["notes"].append(
                f"the MLflow run {rid} could not be read ({type(e).__name__}: {e}); no eval scores from it"
            )
    if eval_json:
        p = Path(eval_json)
        try:
            results = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise StlmError(
                f"stlm export --eval-json: {str(p)!r} is not a readable `stlm eval --json` file ({e})."
            ) from None
        for task, ms in results.items():
            rec["evals"].setdefault(task, {}).update(ms)
    return rec


def _datasets(data_cfg) -> list[str]:
    """Hub dataset ids of the training data (a short name resolves to its hub id; local files have none)."""
    if data_cfg.source in HUB_SOURCES:
        return [HUB_SOURCES[data_cfg.source].path]
    if HUB_ID.match(data_cfg.source) and not Path(data_cfg.source).exists():
        return [data_cfg.source]
    return []


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:,}" if isinstance(v, int) else f"{v:.4f}"


def _human(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _eval_table(evals: dict[str, dict[str, float]]) -> list[str]:
    rows = []
    for task in sorted(evals):
        if (task.startswith("blimp_") or task.startswith("mmlu_")) and task not in ("blimp", "mmlu"):
            continue  # members of a group: the group's score is shown
        ms = evals[task]
        for m in TASK_METRICS:
            if m in ms:
                se = ms.get(f"{m}_stderr")
                n = ms.get("n")
                rows.append(f"| {task} | {m} | {_fmt(ms[m])} | {_fmt(se)} | {int(n) if n is not None else 'n/a'} |")
    if not rows:
        return [
            "stlm has no benchmark scores for this run. `stlm eval CHECKPOINT --json results.json` and "
            "`stlm export ... --eval-json results.json` put them here."
        ]
    return ["| task | metric | value | stderr | n |", "|---|---|---|---|---|", *rows]


def model_card(
    *, name: str, cfg, target, counted, exported_params: int, tokenizer, record: dict, license: str, max_abs_diff: float
) -> str:
    """The card's Markdown: the YAML front matter, then one section after another, each ending in a blank line."""
    lines = [
        *_front_matter(cfg.data, target, license),
        f"# {name}",
        "",
        f"A {_human(counted.total)}-parameter language model trained with stlm (Super Tiny Language Models) and "
        f"exported to transformers as `{target.hf_class}`: the exported model computes the same function as the "
        "stlm checkpoint.",
        "",
        *_section("Architecture", _architecture(cfg.model, target, counted)),
        *_section("Parameters", _parameters(counted, exported_params, cfg.model.context_length)),
        *_section("Training", _training(cfg, tokenizer, record)),
        *_section("Evaluation", _evaluation(record.get("evals", {}))),
        *_section("How to load", _how_to_load(name)),
        *_section("Exactness", [_exactness(max_abs_diff)]),
        *[f"Note: {n}." for n in record.get("notes", [])],
    ]
    return "\n".join(lines).rstrip() + "\n"


def _section(title: str, body: list[str]) -> list[str]:
    return [f"## {title}", "", *body, ""]


def _front_matter(data_cfg, target, license: str) -> list[str]:
    """The hub's metadata block: library, license, pipeline, tags, and the training data's hub ids if any."""
    front = {
        "library_name": "transformers",
        "license": license,
        "pipeline_tag": "text-generation",
        "tags": ["stlm", "super-tiny-language-model", target.name, "text-generation"],
    }
    if _datasets(data_cfg):
        front["datasets"] = _datasets(data_cfg)
    return ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]


def _architecture(m, target, counted) -> list[str]:
    """A two-column table of the shape; shared weights are described as the export lays them out."""
    n_applied = counted.n_layers_applied
    sharing = m.sharing.mode
    shared = {
        "none": "none",
        "ffn_all": "one FFN shared by every layer (copied into each exported layer)",
        "ffn_group": f"one FFN per {m.sharing.group_size} consecutive layers (copied into each exported layer)",
        "ffn_lora": f"one shared FFN plus a rank-{m.sharing.lora_rank} LoRA per layer "
        "(merged into each exported layer's FFN)",
        "block_all": f"one block applied {n_applied} times (exported as {n_applied} identical layers)",
        "block_repeat": f"each block applied {m.sharing.repeats} times in a row (exported as {n_applied} layers)",
    }[sharing]
    rows = [
        ("transformers class", f"`{target.hf_class}`"),
        ("layers (applied)", f"{n_applied} (stlm: n_layers={m.n_layers}, sharing={sharing})"),
        ("sharing", shared),
        ("d_model / heads / kv heads / head dim", f"{m.d_model} / {m.n_heads} / {m.kv_heads} / {m.head_dim}"),
        ("FFN", f"{m.ffn}, hidden width {m.effective_ffn_dim}"),
        ("positions", f"{m.positional}" + (f" (theta {m.rope_theta:g})" if m.positional == "rope" else "")),
        ("norm", f"{m.norm} (eps {m.norm_eps:g})" + (", QK-norm" if m.qk_norm else "")),
        ("biases", "yes" if m.bias else "no" + (" (exported as zeros)" if target.name == "gpt2" else "")),
        ("embeddings", "tied input/output" if m.tie_embeddings else "untied"),
        ("context length", str(m.context_length)),
        ("vocabulary", f"{m.effective_vocab_size:,}"),
    ]
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def _parameters(counted, exported_params: int, context_length: int) -> list[str]:
    return [
        f"- exported: **{exported_params:,}** parameters (what `model.num_parameters()` counts here)",
        f"- unique (trained): **{counted.total:,}** (`stlm count`; shared weights counted once)",
        f"- FLOPs per token (forward + backward, at context {context_length}): {counted.flops_per_token:,}",
        "- by component: " + ", ".join(f"{k} {v:,}" for k, v in counted.breakdown.items() if v),
    ]


def _training(cfg, tokenizer, record: dict) -> list[str]:
    d, t, met = cfg.data, cfg.train, record.get("metrics", {})
    source = d.source + (f" ({d.subset})" if d.subset else "")
    lines = [
        f"- data: `{source}`" + (f", capped at {d.max_chars:,} characters" if d.max_chars else ""),
        f"- tokenizer: {describe(tokenizer)}",
        f"- steps: {_fmt(record.get('step'))}; tokens seen: {_fmt(record.get('tokens'))}",
        f"- final validation: bits per byte {_fmt(met.get('val_bpb'))}, loss {_fmt(met.get('val_loss'))} (nats/token)",
        f"- optimizer: AdamW, lr {t.lr:g}, {t.schedule} schedule, batch {t.batch_size} x {t.grad_accum} x "
        f"{cfg.model.context_length} tokens per worker",
    ]
    if record.get("mlflow_run"):
        lines.append(f"- MLflow run: `{record['mlflow_run']}`")
    return lines


def _evaluation(evals: dict[str, dict[str, float]]) -> list[str]:
    return [
        "Scored by stlm the way lm-evaluation-harness scores them (log-likelihood of each choice).",
        "",
        *_eval_table(evals),
    ]


def _exactness(max_abs_diff: float) -> str:
    return "Checked at export: on seeded random token sequences the transformers logits (fp32, CPU) " + (
        f"differ from stlm's by at most {max_abs_diff:.2g}." if max_abs_diff else "equal stlm's bit for bit."
    )


def _how_to_load(name: str) -> list[str]:
    return [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("{name}")   # or the path of this directory',
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        'ids = tok("Once upon a time", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))",
        "```",
        "",
        "`<|endoftext|>` is BOS, EOS and padding; like stlm, the tokenizer reads that string inside text as "
        "plain text.",
    ]
