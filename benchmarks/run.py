"""Run every stlm speed benchmark and print their ratios as one JSON object (the LAST line).

    python benchmarks/run.py --quick                 # all of them, reduced, a few minutes on 2 cores
    python benchmarks/run.py                         # the full versions (RESULTS.md; ~30 min on 2 cores)
    python benchmarks/run.py --quick --skip-sweep    # without Ray (what tests/test_benchmarks.py runs, with --smoke)
    python benchmarks/run.py --smoke                 # tiny sizes: proves the scripts work, numbers mean little

Each bench_*.py runs in its own process (a crash or a Ray session in one cannot disturb the
others) and prints its own JSON object as its last line; this script merges them. The helpers
below (machine description, medians, the benchmark's data) are shared by the bench scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"  # real data beside the repo (see tests/conftest.py)
SCRIPTS = ("bench_train", "bench_data", "bench_eval", "bench_sweep")


# --------------------------------------------------------------------------- shared helpers


def machine() -> dict:
    """What the numbers were measured on: CPU model, cores, load, torch, GPU if any."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def median(xs) -> float:
    return float(statistics.median(xs))


def median_ci(xs, confidence: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median: the order statistics (x_(k), x_(n+1-k)),
    k the largest with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. Round-to-round timings on a
    shared machine are skewed by bursts of load, so no normal approximation. None below 6 rounds
    (too few for 95%)."""
    xs = sorted(xs)
    n = len(xs)
    tail, k = 0.0, 0
    while True:
        tail += math.comb(n, k) / 2**n  # P(Bin(n, 1/2) <= k)
        if tail > (1 - confidence) / 2:
            break
        k += 1
    return None if k == 0 else (float(xs[k - 1]), float(xs[n - k]))


def _finite(x):
    """NaN / inf -> None, so the JSON line is strict JSON (jq, JavaScript) and not Python's extension."""
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def emit(result: dict) -> None:
    """The contract of every bench script: its last stdout line is one JSON object."""
    print(json.dumps(_finite(result), sort_keys=True, default=str, allow_nan=False), flush=True)


def cache_dir() -> str:
    """Token/tokenizer cache for the benchmarks: $STLM_CACHE, else a fixed temp dir (reused between runs)."""
    return os.environ.get("STLM_CACHE") or str(Path(tempfile.gettempdir()) / "stlm-bench-cache")


def gpt2_vocab() -> str | None:
    p = SHARED / "tokenizers" / "gpt2" / "gpt2.tiktoken"
    return os.environ.get("STLM_GPT2_VOCAB") or (str(p) if p.is_file() else None)


def bench_config(overrides: list[str] = (), *, vocab: int = 2048, bpe_chars: int = 500_000, max_chars: int = 1_000_000):
    """A CPU-sized Config on the built-in generated corpus, tokenized with a BPE trained on it."""
    from stlm.config import build_config

    data = {
        "model": {
            "tokenizer": "bpe",
            "vocab_size": vocab,
            "context_length": 256,
            "n_layers": 4,
            "d_model": 256,
            "n_heads": 4,
            "positional": "rope",
            "ffn": "swiglu",
        },
        "data": {
            "source": "generated",
            "max_chars": max_chars,
            "bpe_train_chars": bpe_chars,
            "num_proc": 1,
            "cache_dir": cache_dir(),
        },
        "train": {"device": "cpu", "batch_size": 8, "lr": 1e-3, "warmup_steps": 10, "max_steps": 10_000},
    }
    return build_config(data, overrides)


def quiet_env() -> dict:
    env = dict(os.environ)
    env.setdefault("STLM_QUIET", "1")
    env.setdefault("STLM_CACHE", cache_dir())
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------- orchestration


def run_script(name: str, mode: str, extra: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(HERE / f"{name}.py")] + ([f"--{mode}"] if mode != "full" else []) + extra
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env=quiet_env(),
            cwd=str(REPO),
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        print(out[-3000:])
        return {"error": f"{name} timed out after {timeout:.0f}s"}
    out = proc.stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    body = lines[:-1] if lines else []
    print("\n".join(body[-60:]), flush=True)
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        print(out[-3000:])
        return {"error": f"{name} exited {proc.returncode} without a JSON last line"}
    if proc.returncode != 0:
        result.setdefault("error", f"{name} exited {proc.returncode}")
    print(f"--- {name}: {time.time() - t0:.0f}s", flush=True)
    return result


def summarize(results: dict[str, dict]) -> dict:
    """The headline ratios (each script's full result stays under its own key)."""
    tr, da, ev, sw = (results.get(k, {}) for k in SCRIPTS)
    out = {
        "train_vs_reference": tr.get("train_vs_reference"),
        "train_vs_reference_min": tr.get("train_vs_reference_min"),
        "train_vs_reference_ci95": tr.get("train_vs_reference_ci95"),
        "tokenize_speedup": da.get("tokenize_speedup"),
        "tokenize_speedup_vs_batch": da.get("tokenize_speedup_vs_batch"),
        "loader_overhead": da.get("loader_overhead"),
        "eval_items_per_s": ev.get("eval_items_per_s"),
        "eval_speedup_vs_naive": ev.get("eval_speedup_vs_naive"),
        "sweep_overhead": sw.get("sweep_overhead"),
        "sweep_trial_s": sw.get("trial_s"),
        "sweep_trial_startup_s": (sw.get("breakdown") or {}).get("per_trial", {}).get("start_to_first_step_s"),
        "optimizer_step_speedup_if_fused": (tr.get("optimizer") or {}).get("speedup_if_fused"),
    }
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and v.get("error")}
    if errors:
        out["errors"] = errors
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="reduced versions (a few minutes on 2 cores)")
    g.add_argument("--smoke", action="store_true", help="tiny sizes: only proves the scripts run")
    p.add_argument("--skip-sweep", action="store_true", help="skip the Ray Tune/Train sweep benchmark")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(SCRIPTS))
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"

    names = [s for s in SCRIPTS if not (args.skip_sweep and s == "bench_sweep")]
    if args.only:
        wanted = {("bench_" + n.strip()).replace("bench_bench_", "bench_") for n in args.only.split(",")}
        names = [s for s in names if s in wanted]
    timeout = {"smoke": 300, "quick": 1200, "full": 7200}[mode]
    t0 = time.time()
    info = machine()
    results = {name: run_script(name, mode, [], timeout) for name in names}
    summary = summarize(results)
    summary.update(
        {
            "mode": mode,
            "machine": info,
            "wall_s": round(time.time() - t0, 1),
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
            "details": results,
        }
    )
    emit(summary)
    return 0 if "errors" not in summary else 1


if __name__ == "__main__":
    sys.exit(main())
