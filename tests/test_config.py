"""The config is the contract every part reads: strict, typed, and with no dead keys."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stlm.config import CHOICES, Config, build_config, flatten, load_config, to_dict
from stlm.errors import StlmError

REPO = Path(__file__).resolve().parents[1]


def _error(data: dict, overrides=()) -> str:
    with pytest.raises(StlmError) as e:
        build_config(data, overrides)
    return str(e.value)


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = build_config({})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(p) == cfg


def test_unknown_key_names_the_dotted_path_and_the_closest_key():
    msg = _error({"model": {"sharing": {"mdoe": "ffn_all"}}})
    assert "model.sharing.mdoe" in msg and "model.sharing.mode" in msg


def test_value_outside_allowed_set_lists_the_allowed_values():
    msg = _error({"model": {"positional": "ropee"}})
    assert "model.positional" in msg and "'ropee'" in msg
    for allowed in CHOICES["model.positional"]:
        assert allowed in msg
    assert "Did you mean 'rope'" in msg


def test_wrong_type_names_key_and_value():
    msg = _error({"train": {"max_steps": "lots"}})
    assert "train.max_steps" in msg and "'lots'" in msg and "integer" in msg
    msg = _error({"model": {"qk_norm": "maybe"}})
    assert "model.qk_norm" in msg


def test_overrides_parse_yaml_scalars_and_human_sizes():
    cfg = build_config(
        {},
        ["train.lr=3e-4", "model.n_kv_heads=2", "model.qk_norm=true", "data.max_chars=2M", "eval.tasks=blimp,arc_easy"],
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.n_kv_heads == 2 and cfg.model.qk_norm is True
    assert cfg.data.max_chars == 2_000_000
    assert cfg.eval.tasks == ["blimp", "arc_easy"]
    assert "train.lrr" in _error({}, ["train.lrr=1"])
    assert "key.sub=value" in _error({}, ["train.lr"])


def test_cross_field_checks_name_the_keys():
    assert "model.n_heads" in _error({"model": {"d_model": 100, "n_heads": 3}})
    assert "model.n_kv_heads" in _error({"model": {"n_heads": 4, "n_kv_heads": 3}})
    assert "model.vocab_size" in _error({"model": {"tokenizer": "gpt2", "vocab_size": 1000}})
    assert "model.dropout.residual" in _error({"model": {"dropout": {"residual": 1.5}}})


def test_missing_and_malformed_files_are_one_paragraph_errors(tmp_path):
    with pytest.raises(StlmError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: [1, 2\n")
    with pytest.raises(StlmError, match="not valid YAML.*line"):
        load_config(bad)


def test_cli_turns_user_errors_into_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  ffn: swigluu\n")
    r = subprocess.run([sys.executable, "-m", "stlm.cli", "count", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "model.ffn" in r.stderr and "Traceback" not in r.stderr


def _all_key_paths(cls, prefix=""):
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        tp = f.type if not isinstance(f.type, str) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            yield from _all_key_paths(type(default), path + ".")
        else:
            yield path, tp


# --------------------------------------------------------------------------- no dead keys
#
# Every key changes the built model, the training run or the evaluation after it when its value changes
# (EFFECTS: the changed value, where its effect shows, and the base it needs), or says why it cannot (NO_EFFECT).
#   model  build_model's parameters (names, shapes, values) and its logits in train mode at a fixed seed
#   train  a 4-step training run on a tiny corpus: every logged metric, the final weights, the files it wrote
#   eval   the evaluation after training (stlm.sweep.runner.run_eval) of one checkpoint: metrics and item files
#   device the device the run resolves to (stlm.train.device.resolve_device)
# "{root}" in a value is the run's own temporary directory.

BPE = {"model.tokenizer": "bpe", "model.vocab_size": 300}
BYTE_POOLED = {**BPE, "model.embedder": "byte_pooled"}
LOCAL_TEXT = {"data.source": "{root}/docs.txt", "data.val_fraction": 0.2}  # a small corpus: val needs a fifth
EFFECTS: dict[str, tuple] = {
    "model.tokenizer": ("bpe", "model", {}),
    "model.vocab_size": (1024, "model", {"model.tokenizer": "bpe"}),
    "model.embedder": ("byte_pooled", "model", BPE),
    "model.context_length": (8, "train", {}),
    "model.n_layers": (2, "model", {}),
    "model.d_model": (32, "model", {}),
    "model.n_heads": (4, "model", {}),
    "model.n_kv_heads": (1, "model", {}),
    "model.qk_norm": (True, "model", {}),
    "model.positional": ("learned", "model", {}),
    "model.rope_theta": (100.0, "model", {}),
    "model.ffn": ("gelu", "model", {}),
    "model.ffn_dim": (24, "model", {}),
    "model.ffn_multiple": (2.0, "model", {}),
    "model.multiple_of": (32, "model", {}),
    "model.norm": ("layernorm", "model", {}),
    "model.norm_eps": (0.1, "model", {}),
    "model.bias": (True, "model", {}),
    "model.tie_embeddings": (False, "model", {}),
    "model.init_std": (0.05, "model", {}),
    "model.sharing.mode": ("ffn_all", "model", {"model.n_layers": 2}),
    "model.sharing.group_size": (1, "model", {"model.n_layers": 2, "model.sharing.mode": "ffn_group"}),
    "model.sharing.lora_rank": (4, "model", {"model.n_layers": 2, "model.sharing.mode": "ffn_lora"}),
    "model.sharing.repeats": (3, "model", {"model.sharing.mode": "block_repeat"}),
    "model.dropout.embedding": (0.5, "model", {}),
    "model.dropout.attention": (0.5, "model", {}),
    "model.dropout.residual": (0.5, "model", {}),
    "model.dropout.schedule": ("linear", "train", {"model.dropout.residual": 0.3}),
    "model.dropout.start": (0.5, "train", {"model.dropout.residual": 0.3, "model.dropout.schedule": "linear"}),
    "model.dropout.end": (0.5, "train", {"model.dropout.residual": 0.3, "model.dropout.schedule": "linear"}),
    "model.dropout.switch": (0.9, "train", {"model.dropout.residual": 0.3, "model.dropout.schedule": "early"}),
    "model.byte_level.byte_dim": (16, "model", BYTE_POOLED),
    "model.byte_level.chunk_len": (4, "model", BYTE_POOLED),
    "model.byte_level.encoder_layers": (2, "model", BYTE_POOLED),
    "model.byte_level.decoder_layers": (2, "model", BYTE_POOLED),
    "model.byte_level.n_heads": (4, "model", BYTE_POOLED),
    "data.source": ("{root}/docs.txt", "train", {"data.val_fraction": 0.2}),
    "data.text_column": ("body", "train", {**LOCAL_TEXT, "data.source": "{root}/docs.jsonl"}),
    "data.max_chars": (10_000, "train", {}),
    "data.val_fraction": (0.4, "train", LOCAL_TEXT),
    "data.split_seed": (1, "train", LOCAL_TEXT),
    "data.split": ("contiguous", "train", LOCAL_TEXT),
    "data.cache_dir": ("{root}/other_cache", "train", {}),
    "data.bpe_train_chars": (5_000, "train", BPE),
    "train.seed": (1, "train", {}),
    "train.device": ("cuda", "device", {}),
    "train.precision": ("bf16", "train", {}),
    "train.batch_size": (3, "train", {}),
    "train.grad_accum": (2, "train", {}),
    "train.max_steps": (3, "train", {}),
    "train.lr": (1e-2, "train", {}),
    "train.min_lr_ratio": (0.5, "train", {}),
    "train.schedule": ("constant", "train", {}),
    "train.warmup_steps": (2, "train", {}),
    "train.decay_fraction": (0.5, "train", {"train.schedule": "wsd"}),
    "train.weight_decay": (0.5, "train", {}),
    "train.decay_norms_and_embeddings": (True, "train", {}),
    "train.beta1": (0.5, "train", {}),
    "train.beta2": (0.5, "train", {}),
    "train.eps": (1e-2, "train", {}),
    "train.grad_clip": (1e-3, "train", {}),
    "train.log_interval": (2, "train", {}),
    "train.eval_interval": (4, "train", {}),
    "train.eval_batches": (2, "train", {}),
    "train.keep_checkpoints": (1, "train", {}),
    "train.out_dir": ("{root}/elsewhere", "train", {}),
    "train.run_name": ("named", "train", {}),
    "eval.tasks": (["arc_easy", "winogrande"], "eval", {}),
    "eval.limit": (5, "eval", {}),
    "eval.seed": (1, "eval", {}),
    "eval.write_items": (False, "eval", {}),
}
NO_EFFECT = {
    "data.subset": "read only for a hub dataset (data.source a hub id), which tests never download",
    "data.revision": "read only for a hub dataset, which tests never download",
    "data.num_proc": "tokenization processes: the same tokens by design (test_data: 1 and 2 processes agree)",
    "data.gpt2_vocab_file": "where tiktoken's GPT-2 vocabulary is read from: any valid file is the same vocabulary",
    "train.compile": "the same function compiled (test_models: the whole model is captured); ~30 s on the CPU",
    "eval.batch_size": "batching only: log-probs are batch-invariant by design (test_models checks it)",
    "eval.data_dir": "where the benchmark files are read from: the same files anywhere give the same results",
    "tracking.uri": "where MLflow records the run (the end-to-end tests read runs back from it), not what the run is",
    "tracking.experiment": "the MLflow experiment the run is filed under, not what the run is",
}


BENCHMARKS = REPO.parent / "shared" / "data" / "benchmarks"  # the shared_data fixture fails when it is missing


def _base(root: Path, overrides: dict) -> Config:
    """A 1-layer d_model 16 model on bytes, 4 steps on 20k characters of the generated corpus, evaluated on 3
    ARC-Easy items; `overrides` on top ("{root}" in a value: this run's directory)."""
    data = {
        "model": {
            "tokenizer": "bytes",
            "n_layers": 1,
            "d_model": 16,
            "n_heads": 2,
            "context_length": 16,
            "multiple_of": 8,
            "byte_level": {"byte_dim": 8, "chunk_len": 6, "encoder_layers": 1, "decoder_layers": 1, "n_heads": 2},
        },
        "data": {
            "source": "generated",
            "max_chars": 20_000,
            "num_proc": 1,
            "bpe_train_chars": 20_000,
            "cache_dir": f"{root}/cache",
        },
        "train": {
            "max_steps": 4,
            "batch_size": 2,
            "eval_interval": 2,
            "log_interval": 1,
            "eval_batches": 1,
            "warmup_steps": 1,
            "out_dir": f"{root}/runs",
            "device": "cpu",
        },
        "eval": {"tasks": ["arc_easy"], "limit": 3, "data_dir": str(BENCHMARKS)},
    }
    filled = {k: v.replace("{root}", str(root)) if isinstance(v, str) else v for k, v in overrides.items()}
    return build_config(data, [f"{k}={json.dumps(v)}" for k, v in filled.items()])


def _write_corpora(root: Path) -> None:
    from stlm.data.generated import generate_stories

    stories = list(generate_stories("train", 30_000))
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs.txt").write_text("\n\n".join(s.replace("\n\n", "\n") for s in stories))
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": s, "body": s.upper()}) + "\n" for s in stories))


@functools.cache
def _bpe(vocab_size: int):
    from stlm.data.generated import generate_stories
    from stlm.tokenizers import train_bpe

    return train_bpe(generate_stories("train", 20_000), vocab_size)


def _model_probe(cfg: Config, root: Path) -> dict:
    from stlm.models import build_model

    mc = cfg.model
    torch.manual_seed(0)
    model = build_model(mc, _bpe(mc.effective_vocab_size) if mc.embedder == "byte_pooled" else None).train()
    idx = torch.arange(12)[None] % (mc.effective_vocab_size - 1)
    torch.manual_seed(1)
    return {"params": {n: p.detach() for n, p in model.named_parameters()}, "logits": model(idx, idx)[0].detach()}


def _files(root: Path) -> list[str]:
    """The files a run wrote, with the cache's content hashes left out of their names."""
    return sorted(
        re.sub(r"[0-9a-f]{12,}", "<hash>", str(p.relative_to(root)))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("docs.")
    )


def _train_probe(cfg: Config, root: Path) -> dict:
    from stlm.train import checkpoint as ckpt
    from stlm.train.loop import train

    logged: list[dict] = []
    train(
        cfg,
        on_log=lambda m: logged.append({k: v for k, v in m.items() if k not in ("tokens_per_s", "elapsed_s", "mfu")}),
    )
    run_dir = Path(cfg.train.out_dir) / (cfg.train.run_name or "run")
    return {"logged": logged, "weights": ckpt.load_model_state(run_dir), "files": _files(root)}


def _eval_probe(cfg: Config, root: Path) -> dict:
    from stlm.sweep.run.worker import run_eval
    from stlm.train import checkpoint as ckpt

    base = _base(root / "trained", {})  # the same checkpoint in every root (same seed, same data)
    _train_probe(base, root / "trained")
    run_dir = Path(base.train.out_dir) / "run"
    metrics = run_eval(cfg, str(ckpt.latest_checkpoint(run_dir)), root / "trial")
    metrics.pop("eval_s")
    items = sorted((root / "trial").rglob("*.jsonl"))
    return {"metrics": metrics, "items": [(p.name, p.read_text()) for p in items]}


def _device_probe(cfg: Config, root: Path) -> dict:
    from stlm.train.device import World, resolve_device

    try:
        return {"device": str(resolve_device(cfg.train, World()))}
    except StlmError as e:  # cuda on a machine without one: refused, which is its effect here
        return {"device": f"refused: {e}"}


PROBES = {"model": _model_probe, "train": _train_probe, "eval": _eval_probe, "device": _device_probe}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_every_config_key_is_in_one_table():
    keys = {path for path, _ in _all_key_paths(Config)}
    assert not set(EFFECTS) & set(NO_EFFECT)
    assert set(EFFECTS) | set(NO_EFFECT) == keys, (
        sorted(keys - set(EFFECTS) - set(NO_EFFECT)),
        sorted(set(EFFECTS) | set(NO_EFFECT) - keys),
    )


def test_every_config_key_changes_the_model_the_run_or_its_evaluation(tmp_path, shared_data):
    """No dead keys: for each key of EFFECTS, its probe with the changed value differs from the same probe
    with the key at its base value; each run in its own directory, the base probes computed once."""
    _write_corpora(tmp_path / "corpora")
    base_probes: dict = {}
    dead = []
    for i, (key, (value, probe, needs)) in enumerate(EFFECTS.items()):
        ident = (probe, json.dumps(needs, sort_keys=True))
        if ident not in base_probes:
            root = tmp_path / f"base{len(base_probes)}"
            shutil.copytree(tmp_path / "corpora", root)
            base_probes[ident] = PROBES[probe](_base(root, needs), root)
        root = tmp_path / f"k{i}"
        shutil.copytree(tmp_path / "corpora", root)
        cfg = _base(root, {**needs, key: value})
        # the override set the key to a value other than the base's, so "no change" would be the key's
        assert flatten(to_dict(cfg))[key] != flatten(to_dict(_base(root, needs)))[key], key
        if _same(PROBES[probe](cfg, root), base_probes[ident]):
            dead.append(f"{key}={value!r} ({probe})")
    assert not dead, f"config keys whose value changes nothing: {dead}"


def test_flatten_gives_one_param_per_leaf():
    flat = flatten(to_dict(build_config({})))
    assert set(flat) == {p for p, _ in _all_key_paths(Config)}
