"""The speed benchmarks run and report what they promise (never their numbers: timings are not tested).

`python benchmarks/run.py --smoke --skip-sweep` runs bench_train, bench_data and bench_eval at
tiny sizes in subprocesses; its last stdout line must be one JSON object with the headline keys.
The Ray sweep benchmark is left out here (it starts a Ray cluster: minutes, not seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KEYS = ("train_vs_reference", "train_vs_reference_min", "tokenize_speedup", "loader_overhead",
        "eval_items_per_s", "sweep_overhead", "machine", "details")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    env = dict(os.environ)
    env["STLM_CACHE"] = str(tmp_path_factory.mktemp("bench_cache"))
    env["STLM_QUIET"] = "1"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--skip-sweep"],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=600)
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
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--gpu-baseline"],
                          capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "no CUDA device" in result["gpu_baseline"]["skipped"]


@pytest.mark.slow
def test_gpu_baseline_code_path_runs_on_the_cpu():
    """The --gpu-baseline script (bf16 autocast + torch.compile of both models, MFU) is ready for a GPU:
    here its whole code path runs on the CPU at a tiny size, and its FLOPs are count_params's."""
    from stlm.config import load_config
    from stlm.models import count_params

    overrides = ["model.n_layers=2", "model.d_model=128", "model.n_heads=4", "model.n_kv_heads=1",
                 "model.ffn_dim=256", "model.context_length=64", "train.batch_size=2", "train.grad_accum=1"]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--gpu-baseline",
                           "--baseline-on-cpu", "--gpu-warmup", "1", "--gpu-rounds", "2", "--gpu-steps", "1",
                           *overrides], capture_output=True, text=True, cwd=str(REPO), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])["gpu_baseline"]
    cfg = load_config(REPO / "configs" / "baseline-50m.yaml", overrides)
    assert res["flops_per_token"] == count_params(cfg.model).flops_per_token
    assert res["stlm_tokens_per_s"] > 0 and res["ref_tokens_per_s"] > 0
    assert res["same_function_loss_diff"] < 1e-2  # the reference really is the same network


def test_the_median_confidence_interval_is_the_binomial_order_statistics():
    """The CI printed beside each train_vs_reference ratio: for n rounds, the sign-test interval
    (x_(k), x_(n+1-k)) of the standard tables (n=20: ranks 6 and 15; n=9: ranks 2 and 8), covering the
    median with probability >= 95%, and nothing for fewer than 6 rounds, where 95% is out of reach."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from run import median_ci

    assert median_ci([float(x) for x in range(20, 0, -1)]) == (6.0, 15.0)  # order of the input is irrelevant
    assert median_ci(list(range(1, 10))) == (2.0, 8.0)
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == (1.0, 6.0)
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    lo, hi = median_ci([1.0] * 21)
    assert lo == hi == 1.0
