"""The speed benchmarks run and report what they promise (never their numbers: timings are not tested).

`python benchmarks/run.py --smoke --skip-sweep` runs bench_train, bench_data and bench_eval at
tiny sizes in subprocesses; its last stdout line must be one JSON object with the headline keys.
The Ray sweep benchmark is left out here (it starts a Ray cluster: minutes, not seconds).
The reference it times against computes stlm's function in every headline variant (logits at shared
random weights), and that check fails for a reference without positions, a norm or the causal mask.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_train import SAME_TOL, VARIANTS, compare_outputs, distinct_weights, same_function
from reference import Block as RefBlock
from reference import ref_model

KEYS = (
    "train_vs_reference",
    "train_vs_reference_min",
    "tokenize_speedup",
    "loader_overhead",
    "eval_items_per_s",
    "sweep_overhead",
    "machine",
    "details",
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    env = dict(os.environ)
    env["STLM_CACHE"] = str(tmp_path_factory.mktemp("bench_cache"))
    env["STLM_QUIET"] = "1"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--skip-sweep"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=600,
    )
    return proc


def test_smoke_run_ends_with_a_json_line_of_ratios(smoke_run):
    lines = [ln for ln in smoke_run.stdout.splitlines() if ln.strip()]
    assert lines, smoke_run.stderr[-3000:]
    result = json.loads(lines[-1])  # the contract: the LAST line is one JSON object
    for key in KEYS:
        assert key in result, f"{key} missing from {sorted(result)}"
    assert "errors" not in result, result.get("errors")
    assert smoke_run.returncode == 0, smoke_run.stdout[-3000:]
    assert result["mode"] == "smoke"
    assert result["sweep_overhead"] is None  # skipped, and said so rather than invented
    assert "bench_sweep" not in result["details"]
    # the machine the numbers were taken on is recorded
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"]


def test_training_benchmark_covers_the_variants_the_issue_names(smoke_run):
    result = json.loads(smoke_run.stdout.strip().splitlines()[-1])
    ratios = result["train_vs_reference"]
    assert set(ratios) == {"rope_swiglu", "learned_gelu", "ffn_all", "byte_level"}
    train = result["details"]["bench_train"]["train"]
    for variant, r in train.items():
        # measured side by side: both throughputs and the per-round ratios are there
        assert r["stlm_tokens_per_s"] > 0 and r["ref_tokens_per_s"] > 0, variant
        assert len(r["ratios"]) >= 2, variant
        assert r["params"] > 0
        assert r["same_function"]["logits"] < SAME_TOL and r["same_function"]["loss"] < SAME_TOL, variant
    assert result["train_vs_reference_min"] == min(ratios.values())
    assert set(result["train_vs_reference_ci95"]) == set(ratios)  # None at smoke's 2 rounds, but reported


def test_data_and_eval_benchmarks_report_their_measures(smoke_run):
    details = json.loads(smoke_run.stdout.strip().splitlines()[-1])["details"]
    tok = details["bench_data"]["tokenize"]
    assert tok["mb"] > 0 and set(tok["mb_per_s"]) >= {"prepare_np2", "tiktoken_loop"}
    assert details["bench_data"]["loader"]["step_ms"] > 0
    ev = details["bench_eval"]
    if ev.get("skipped"):
        pytest.skip(ev["skipped"])
    assert set(ev["eval"]) == {"arc_easy", "hellaswag"}
    assert all(v["items"] > 0 for v in ev["eval"].values())


def test_gpu_baseline_says_when_there_is_no_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real --gpu-baseline would run for minutes")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--gpu-baseline"],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "no CUDA device" in result["gpu_baseline"]["skipped"]


@pytest.mark.slow
def test_gpu_baseline_code_path_runs_on_the_cpu():
    """The --gpu-baseline script (bf16 autocast + torch.compile of both models, MFU) is ready for a GPU:
    here its whole code path runs on the CPU at a tiny size; its size is that of both built models and its
    FLOPs per token are 6 x the built model's matmul weights + attention's."""
    from stlm.config import load_config
    from stlm.models import build_model, count_params

    overrides = [
        "model.n_layers=2",
        "model.d_model=128",
        "model.n_heads=4",
        "model.n_kv_heads=1",
        "model.ffn_dim=256",
        "model.context_length=64",
        "train.batch_size=2",
        "train.grad_accum=1",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_train.py"),
            "--gpu-baseline",
            "--baseline-on-cpu",
            "--gpu-warmup",
            "1",
            "--gpu-rounds",
            "2",
            "--gpu-steps",
            "1",
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])["gpu_baseline"]
    cfg = load_config(REPO / "configs" / "baseline-50m.yaml", overrides)
    mc = cfg.model
    model = build_model(mc)
    assert res["params"] == sum(p.numel() for p in model.parameters()) == count_params(mc).total
    assert res["params"] == sum(p.numel() for p in ref_model(mc).parameters())
    # 6 FLOPs per matmul weight per token (the tied head's matmul included) + attention's 12 L d T
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert res["flops_per_token"] == 6 * matmul + 12 * mc.n_layers * mc.d_model * mc.context_length
    assert res["stlm_tokens_per_s"] > 0 and res["ref_tokens_per_s"] > 0
    same = res["same_function"]  # the reference really is the same network (tests below: this can fail)
    assert same["logits"] < SAME_TOL and same["loss"] < SAME_TOL, same


def test_the_median_confidence_interval_is_the_binomial_order_statistics():
    """The CI printed beside each train_vs_reference ratio: for n rounds, the sign-test interval
    (x_(k), x_(n+1-k)) of the standard tables (n=20: ranks 6 and 15; n=9: ranks 2 and 8), covering the
    median with probability >= 95%, and nothing for fewer than 6 rounds, where 95% is out of reach."""
    from run import median_ci

    assert median_ci([float(x) for x in range(20, 0, -1)]) == (6.0, 15.0)  # order of the input is irrelevant
    assert median_ci(list(range(1, 10))) == (2.0, 8.0)
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == (1.0, 6.0)
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    lo, hi = median_ci([1.0] * 21)
    assert lo == hi == 1.0


# --------------------------------------------------------------------------- the reference is stlm's network

TINY = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.context_length=32",
    "model.byte_level.byte_dim=32",
    "model.byte_level.chunk_len=8",
    "model.byte_level.encoder_layers=1",
    "model.byte_level.decoder_layers=1",
]


@pytest.fixture(scope="module")
def tokenizer():
    """A real BPE of 320 tokens (some longer than chunk_len=8) trained on the generated corpus: byte_level needs one."""
    from stlm.data.generated import generate_stories
    from stlm.tokenizers import train_bpe

    return train_bpe(generate_stories("train", 20_000), 320)


def tiny_pair(variant: str, tokenizer):
    from run import bench_config

    from stlm.models import build_model, count_params

    mc = bench_config(VARIANTS[variant] + TINY, vocab=tokenizer.vocab_size).model
    stlm_model, ref = build_model(mc, tokenizer), ref_model(mc, tokenizer)
    n = sum(p.numel() for p in stlm_model.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == count_params(mc).total
    return mc, stlm_model, ref


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_reference_computes_stlms_function_in_every_headline_variant(variant, tokenizer):
    mc, stlm_model, ref = tiny_pair(variant, tokenizer)
    same = same_function(stlm_model, ref, mc, torch.device("cpu"))
    assert same["logit_std"] > 0.5  # weights far from the init: the logits are not nearly uniform
    assert same["logits"] < SAME_TOL and same["loss"] < SAME_TOL, same  # the loss: both score the same targets


def no_positions(core):
    if core.rope:
        core.rope = False
    else:
        core.wpe = None


def no_norm(core):
    core.h[0].ln_1 = torch.nn.Identity()


def non_causal(core):
    for block in core.h:
        block.forward = functools.partial(RefBlock.forward, block, causal=False)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("breakage", [no_positions, no_norm, non_causal], ids=lambda f: f.__name__)
def test_the_same_function_check_fails_for_a_broken_reference(variant, breakage, tokenizer):
    """The check above can fail: the reference with one thing missing differs by ~1 (1e4 x SAME_TOL)."""
    mc, stlm_model, ref = tiny_pair(variant, tokenizer)
    distinct_weights(stlm_model, ref)
    breakage(ref.core)
    assert compare_outputs(stlm_model, ref, mc, torch.device("cpu"))["logits"] > 1000 * SAME_TOL
