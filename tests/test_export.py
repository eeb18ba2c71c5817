"""`stlm export`: stlm models leave as transformers models that compute the same function.

Exactness over every exportable option (small random models, weights perturbed so norms, biases and
LoRA adapters are not at their init), refusals of what has no equivalent, tokenizers that give stlm's
ids on the shared corpora and on random Unicode, and one real trained run exported through the CLI:
loaded offline by transformers, scored by `stlm eval --hf` like the checkpoint, greedy generation
equal, and a model card with the run's numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stlm.config import ModelConfig, SharingConfig, build_config
from stlm.errors import StlmError
from stlm.export import choose_target, max_logit_diff, to_hf_tokenizer, to_transformers
from stlm.export.convert import exported_params
from stlm.export.tokenizer import save_tokenizer
from stlm.models import build_model, count_params
from stlm.tokenizers import ByteTokenizer, load_gpt2, train_bpe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LLAMA = dict(positional="rope", ffn="swiglu", norm="rmsnorm")
GPT2 = dict(positional="learned", ffn="gelu", norm="layernorm")
SH = SharingConfig
# (target, config options): every exportable option, sharing mode and tying choice at least once
CASES = [
    ("llama", {}),
    ("llama", dict(n_kv_heads=2, rope_theta=500.0, norm_eps=1e-6)),  # GQA
    ("llama", dict(n_kv_heads=1, tie_embeddings=False)),  # MQA, untied
    ("llama", dict(bias=True)),  # attention_bias + mlp_bias
    ("qwen3", dict(qk_norm=True, n_kv_heads=2, tie_embeddings=False)),
    ("llama", dict(sharing=SH(mode="ffn_all"))),
    ("llama", dict(sharing=SH(mode="ffn_group", group_size=2))),
    ("llama", dict(sharing=SH(mode="ffn_lora", lora_rank=4), bias=True)),
    ("qwen3", dict(qk_norm=True, sharing=SH(mode="block_all"))),
    ("llama", dict(sharing=SH(mode="block_repeat", repeats=2), n_kv_heads=2)),
    ("gpt2", dict(**GPT2)),
    ("gpt2", dict(**GPT2, bias=True, tie_embeddings=False, norm_eps=1e-6)),
    ("gpt2", dict(**GPT2, n_kv_heads=2, sharing=SH(mode="ffn_lora", lora_rank=4))),  # GQA -> MHA, LoRA merged
    ("gpt2", dict(**GPT2, n_kv_heads=1, bias=True, sharing=SH(mode="block_repeat", repeats=2))),
]


def random_model(**kw):
    cfg = ModelConfig(
        **{"tokenizer": "bytes", "context_length": 48, "n_layers": 3, "d_model": 32, "n_heads": 4, "ffn_dim": 48, **kw}
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # off the init: norm weights != 1, biases and LoRA B != 0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, cfg


@pytest.mark.parametrize(
    "target,kw", CASES, ids=[f"{t}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'base'}" for t, kw in CASES]
)
def test_exported_logits_equal_stlm_logits(target, kw):
    from stlm.data.generated import story

    model, cfg = random_model(**kw)
    hf, tgt = to_transformers(model, eot_id=256)
    assert tgt.name == target and type(hf).__name__ == tgt.hf_class
    assert hf.config.num_hidden_layers == count_params(cfg).n_layers_applied
    diff, _ = max_logit_diff(model, hf)  # random token sequences
    assert diff < 1e-4
    text = story("val", 0) + story("val", 1)  # story text (the built-in corpus), as bytes
    ids = torch.tensor([list(text.encode())[:48]])
    assert max_logit_diff(model, hf, ids)[0] < 1e-4
    # exported vs unique parameters: shared weights are copied, GPT-2 gets zero biases, MHA k/v
    n_unique = count_params(cfg).total
    assert n_unique == model.num_params()
    same_shape = kw.get("sharing") is None and (target != "gpt2" or (cfg.bias and cfg.kv_heads == cfg.n_heads))
    assert exported_params(hf) == n_unique if same_shape else exported_params(hf) > n_unique


def test_a_wrong_weight_is_caught():
    """The check is not vacuous: swapping gate and up (w1 <-> w3) in one layer shows in the logits."""
    model, _ = random_model()
    hf, _ = to_transformers(model, eot_id=256)
    mlp = hf.model.layers[1].mlp
    with torch.no_grad():
        w = mlp.gate_proj.weight.clone()
        mlp.gate_proj.weight.copy_(mlp.up_proj.weight)
        mlp.up_proj.weight.copy_(w)
    assert max_logit_diff(model, hf)[0] > 1e-2


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(embedder="byte_pooled", tokenizer="gpt2"), "model.embedder=byte_pooled"),
        (dict(positional="alibi"), "model.positional=alibi"),
        (dict(positional="sincos"), "model.positional=sincos"),
        (dict(positional="none"), "model.positional=none"),
        (dict(ffn="relu2"), "model.ffn=relu2"),
        (dict(ffn="gelu"), "model.ffn=gelu"),  # RoPE + GeLU: not Llama
        (dict(norm="layernorm"), "model.norm=layernorm"),
        (dict(norm="none"), "model.norm=none"),
        (dict(qk_norm=True, bias=True), "model.bias=True"),
        (dict(positional="learned", ffn="swiglu", norm="layernorm"), "model.ffn=swiglu"),
        (dict(**GPT2, qk_norm=True), "model.qk_norm=True"),
    ],
)
def test_what_has_no_transformers_equivalent_is_refused(kw, key):
    with pytest.raises(StlmError) as e:
        choose_target(ModelConfig(**kw))
    msg = str(e.value)
    assert key in msg and "Exportable:" in msg and "\n" not in msg


# --------------------------------------------------------------------------- tokenizers


def corpora(shared_data) -> dict[str, str]:
    c = shared_data / "corpora"
    return {
        p.name: p.read_text()
        for p in [
            c / "tinyshakespeare.txt",
            c / "wikitext-2" / "wiki.valid.tokens",
            c / "tinystories" / "tinystories_valid_sample.txt",
        ]
    }


@pytest.fixture(scope="module")
def gpt2(shared_data):
    return load_gpt2(str(shared_data / "tokenizers" / "gpt2" / "gpt2.tiktoken"))


@pytest.fixture(scope="module")
def bpe(shared_data):
    return train_bpe([(shared_data / "corpora" / "tinyshakespeare.txt").read_text()[:400_000]], 1024)


def test_gpt2_exports_the_standard_gpt2_files(gpt2, shared_data, tmp_path):
    names = save_tokenizer(gpt2, 1024, tmp_path)
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= set(names)
    ref = shared_data / "tokenizers" / "gpt2"
    assert json.loads((tmp_path / "vocab.json").read_text()) == json.loads((ref / "gpt2_vocab.json").read_text())
    # merges.txt: GPT-2's own 50,000 merges in order (the shared copy lacks the "#version" header)
    assert (tmp_path / "merges.txt").read_text().splitlines()[1:] == (ref / "gpt2_merges.txt").read_text().splitlines()
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.eos_token_id == hf.bos_token_id == 50256 and hf.model_max_length == 1024


@pytest.mark.parametrize("name", ["gpt2", "bpe"])
def test_exported_tokenizer_encodes_the_shared_corpora_like_stlm(name, request, shared_data):
    tok = request.getfixturevalue(name)
    hf = to_hf_tokenizer(tok, 256)
    for fname, text in corpora(shared_data).items():
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text), fname
    assert hf.decode(tok.encode("Once upon a time, Zoë")) == "Once upon a time, Zoë"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(st.characters(codec="utf-8"), max_size=60)
    | st.lists(
        st.sampled_from(
            [" ", "  ", "\n", "\r\n", "\t", "a", "'s", "'LL", "1", "123", "é", "日本", "😀", ".", "<|endoftext|>"]
        ),
        max_size=25,
    ).map("".join)
)
def test_exported_tokenizers_encode_random_unicode_like_stlm(gpt2, bpe, text):
    for tok in (gpt2, bpe, ByteTokenizer()):
        hf = _hf_cached(tok)
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text), tok.name


_HF: dict = {}


def _hf_cached(tok):
    if tok.name not in _HF:
        _HF[tok.name] = to_hf_tokenizer(tok, 256)
    return _HF[tok.name]


def test_bytes_tokenizer_maps_each_utf8_byte_to_its_id(tmp_path):
    save_tokenizer(ByteTokenizer(), 64, tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    s = "héllo 日本 😀\x00\x7f"
    assert hf.encode(s, add_special_tokens=False) == list(s.encode()) and len(hf) == 257
    assert hf.eos_token_id == 256 and hf.decode(list(s.encode())) == s


# --------------------------------------------------------------------------- a real run, through the CLI


EVAL_TASKS = "blimp,hellaswag,arc_easy,arc_challenge,winogrande,mmlu"


@pytest.fixture(scope="module")
def trained_run(shared_data, tmp_path_factory):
    """A BPE + GQA + ffn_lora model trained for 60 steps on TinyStories: a real run directory."""
    from stlm.train.loop import train

    out = tmp_path_factory.mktemp("runs")
    cfg = build_config({
        "model": {"tokenizer": "bpe", "vocab_size": 512, "context_length": 64, "n_layers": 3, "d_model": 48,
                  "n_heads": 4, "n_kv_heads": 2, "sharing": {"mode": "ffn_lora", "lora_rank": 4}},
        "data": {"source": str(shared_data / "corpora" / "tinystories" / "tinystories_train_prefix_cased.txt"),
                 "max_chars": 300_000, "bpe_train_chars": 300_000, "num_proc": 1},
        "train": {"max_steps": 60, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "eval_interval": 30,
                  "eval_batches": 2, "out_dir": str(out), "run_name": "tiny", "seed": 0},
    })  # fmt: skip
    final = train(cfg)
    return out / "tiny", final


def _cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1", "STLM_QUIET": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "stlm.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_stlm_export_cli_end_to_end(trained_run, shared_data, tmp_path, monkeypatch, capsys):
    from stlm.cli import main
    from stlm.eval.generate import generate_ids
    from stlm.train.checkpoint import load_model

    run_dir, final = trained_run
    bench = str(shared_data / "benchmarks")
    scores = tmp_path / "scores.json"
    ours = tmp_path / "ours.jsonl"
    assert (
        main(
            [
                "eval",
                str(run_dir),
                "--tasks",
                EVAL_TASKS,
                "--limit",
                "2",
                "--data-dir",
                bench,
                "--items",
                str(ours),
                "--json",
                str(scores),
                "--device",
                "cpu",
            ]
        )
        == 0
    )

    out = tmp_path / "hf"
    r = _cli(
        "export", str(run_dir), str(out), "--license", "mit", "--name", "someone/stlm-tiny", "--eval-json", str(scores)
    )
    assert r.returncode == 0, r.stderr
    assert "LlamaForCausalLM" in r.stdout
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "generation_config.json"} <= files
    assert not any(f.endswith(".bin") for f in files)

    # offline load, exact per-item log-likelihoods on every task through `stlm eval --hf`
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    theirs = tmp_path / "theirs.jsonl"
    assert (
        main(
            [
                "eval",
                str(out),
                "--hf",
                "--tasks",
                EVAL_TASKS,
                "--limit",
                "2",
                "--data-dir",
                bench,
                "--items",
                str(theirs),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    a = [json.loads(x) for x in ours.read_text().splitlines()]
    b = [json.loads(x) for x in theirs.read_text().splitlines()]
    assert len(a) == len(b) > 6 * 2 and {r["task"] for r in a} >= {"hellaswag", "arc_easy", "winogrande"}
    for x, y in zip(a, b):
        for k in ("task", "context", "contexts", "continuations"):
            assert x.get(k) == y.get(k)
        assert x["loglikelihoods"] == pytest.approx(y["loglikelihoods"], abs=1e-4)

    # greedy generation: transformers' generate() == stlm's KV-cached greedy decoding
    model, _, tok = load_model(run_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    prompt = "Once upon a time, there was a"
    ids = hf_tok(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == tok.encode(prompt)
    want = generate_ids(model, tok.encode(prompt), 40, temperature=0.0, eot_id=tok.eot_id)
    got = hf.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1] :].tolist()
    assert got[: len(want)] == want and len(want) > 0
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                str(run_dir),
                "--prompt",
                prompt,
                "--max-new-tokens",
                "40",
                "--temperature",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.rstrip("\n") == prompt + hf_tok.decode(got[: len(want)])

    # the model card: hub front matter and the run's numbers
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and front["license"] == "mit" and "llama" in front["tags"]
    cfg_unique = count_params(model.config).total
    assert f"exported: **{exported_params(hf):,}**" in card and f"unique (trained): **{cfg_unique:,}**" in card
    assert exported_params(hf) == hf.num_parameters() > cfg_unique  # the shared FFN copied into 3 layers, LoRA merged
    assert f"{count_params(model.config).flops_per_token:,}" in card
    assert f"{final['val_bpb']:.4f}" in card and f"{final['tokens']:,}" in card
    arc = json.loads(scores.read_text())["arc_easy"]
    assert f"| arc_easy | acc | {arc['acc']:.4f} |" in card
    assert 'AutoModelForCausalLM.from_pretrained("someone/stlm-tiny")' in card


def test_stlm_export_refuses_with_one_paragraph_and_exit_code_2(tmp_path, capsys):
    from stlm.cli import main
    from stlm.train import checkpoint as ck

    cfg = build_config(
        {
            "model": {
                "tokenizer": "bytes",
                "context_length": 32,
                "n_layers": 2,
                "d_model": 32,
                "n_heads": 2,
                "positional": "alibi",
            }
        }
    )
    tok = ByteTokenizer()
    path = ck.save_checkpoint(
        tmp_path / "run" / "step_000001",
        model_state=build_model(cfg.model).state_dict(),
        trainer_state={},
        cfg=cfg,
        meta={"step": 1, "tokenizer": {"name": tok.name, "identity": tok.identity}},
    )
    assert main(["export", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: stlm export: model.positional=alibi") and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    cfg.model.positional = "rope"
    ck.save_checkpoint(
        path,
        model_state=build_model(cfg.model).state_dict(),
        trainer_state={},
        cfg=cfg,
        meta={"step": 1, "tokenizer": {"name": tok.name, "identity": tok.identity}},
    )
    assert main(["export", str(path), str(tmp_path / "full")]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "full" / "x").read_text() == "keep me"


def test_gpt2_checkpoint_exports_as_gpt2_with_the_gpt2_tokenizer(shared_data, tmp_path, monkeypatch):
    """Learned positions + GeLU + LayerNorm on GPT-2's tokenizer: GPT2LMHeadModel + the standard files, offline."""
    from stlm.eval.generate import generate_ids
    from stlm.export import export_checkpoint
    from stlm.train import checkpoint as ck

    cfg = build_config(
        {
            "model": {
                "tokenizer": "gpt2",
                "context_length": 64,
                "n_layers": 2,
                "d_model": 32,
                "n_heads": 4,
                "n_kv_heads": 2,
                **GPT2,
                "tie_embeddings": False,
            },
            "data": {"gpt2_vocab_file": str(shared_data / "tokenizers" / "gpt2" / "gpt2.tiktoken")},
        }
    )
    tok = load_gpt2(cfg.data.gpt2_vocab_file)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    ck.save_checkpoint(
        tmp_path / "run" / "step_000005",
        model_state=model.state_dict(),
        trainer_state={},
        cfg=cfg,
        meta={"step": 5, "tokens": 320, "tokenizer": {"name": tok.name, "identity": tok.identity}},
    )
    r = export_checkpoint(tmp_path / "run", tmp_path / "out")
    assert r.target.hf_class == "GPT2LMHeadModel" and r.max_abs_diff < 1e-4
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= set(r.files)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.config.activation_function == "gelu_pytorch_tanh"
    text = (shared_data / "corpora" / "tinyshakespeare.txt").read_text()[:400]
    ids = hf_tok(text, return_tensors="pt").input_ids[:, :64]
    assert ids[0].tolist() == tok.encode(text)[:64]
    assert max_logit_diff(model, hf, ids)[0] < 1e-4
    prompt = tok.encode("First Citizen:")
    want = generate_ids(model, prompt, 20, temperature=0.0, eot_id=tok.eot_id)
    got = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)[0, len(prompt) :].tolist()
    assert got[: len(want)] == want and len(want) > 0


@pytest.mark.slow  # MLflow's sqlite store takes several seconds to create
def test_export_by_mlflow_run_id_puts_the_runs_eval_scores_in_the_card(tmp_path):
    """A sweep trial's run: the checkpoint is found from the run id (as `stlm eval` finds it), and the
    scores the trial logged (eval/<task>/<metric>) go into the card."""
    from stlm.cli import main
    from stlm.tracking import mlflow_client
    from stlm.train import checkpoint as ck

    cfg = build_config(
        {
            "model": {
                "tokenizer": "bytes",
                "context_length": 32,
                "n_layers": 2,
                "d_model": 32,
                "n_heads": 2,
                "sharing": {"mode": "block_all"},
            }
        }
    )
    tok = ByteTokenizer()
    path = ck.save_checkpoint(
        tmp_path / "trial" / "step_000040",
        model_state=build_model(cfg.model).state_dict(),
        trainer_state={"metrics": {"val_bpb": 2.3456, "val_loss": 1.6}},
        cfg=cfg,
        meta={"step": 40, "tokens": 40960, "tokenizer": {"name": tok.name, "identity": tok.identity}},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp, tags={"stlm.checkpoint": str(path)})
    for k, v in {
        "eval/arc_easy/acc": 0.3125,
        "eval/arc_easy/acc_stderr": 0.05,
        "eval/arc_easy/n": 64.0,
        "eval/blimp_adjunct_island/acc": 0.9,
    }.items():
        client.log_metric(run.info.run_id, k, v)
    out = tmp_path / "hf"
    assert main(["export", run.info.run_id, str(out), "--tracking-uri", uri]) == 0
    card = (out / "README.md").read_text()
    assert "| arc_easy | acc | 0.3125 | 0.0500 | 64 |" in card and "blimp_adjunct_island" not in card
    assert run.info.run_id in card and "2.3456" in card and "40,960" in card
    assert "one block applied 2 times" in card
