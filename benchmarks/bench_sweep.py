"""Sweep overhead: N trials through `python -m stlm.sweep` (Ray Tune + Ray Train + MLflow) vs the
same N trainings run one after another as plain `python -m stlm.train` processes.

    python benchmarks/bench_sweep.py [--quick | --smoke] [--trials N] [--trial-s SECONDS] [--concurrency C]

    overhead = sweep wall time x concurrency / sum of the standalone wall times - 1

STLM_TRAIN_CONTROLLER=actor in the environment measures Ray Train's stock controller actor instead
of stlm's in-trial controller (stlm/sweep/run/train_run.py), for an A/B of the two.

Both sides run the same config (a small model on the generated corpus, tokenized once beforehand
into a shared warm cache), log to their own fresh MLflow sqlite DB, write the same checkpoints
and validations, and use the same threads per training (a standalone run gets
OMP_NUM_THREADS = resources.cpus_per_worker, as Ray gives a worker). The trial length is set by
calibrating the step time first (max_steps = trial seconds / step time).

Breakdown of a Ray trial's start-up, from the timestamps the run leaves behind:
  * Tune result.json of every trial: `time_total_s` at the first report minus the loop's own
    `elapsed_s` = time from the Tune trial start to the loop's first step (+ one report's latency);
  * the Ray session logs (RAY_TMPDIR is pointed at a private dir): Train controller / worker
    lines with timestamps (worker group start, health-check polling);
  * the standalone runs' own split: process start to the first step (imports, MLflow, data, model).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import REPO, cache_dir, emit, machine, median, quiet_env

MODES = {  # trials, seconds per trial, concurrency
    "full": dict(trials=4, trial_s=120.0),
    "quick": dict(trials=2, trial_s=25.0),
    "smoke": dict(trials=2, trial_s=4.0),
}

BASE = """\
# written by benchmarks/bench_sweep.py
model: {{tokenizer: bpe, vocab_size: 2048, context_length: 128, n_layers: 4, d_model: 128, n_heads: 4,
        positional: rope, ffn: swiglu}}
data: {{source: generated, max_chars: 2000000, bpe_train_chars: 500000, num_proc: 1, cache_dir: {cache}}}
train: {{device: cpu, batch_size: 16, max_steps: {steps}, lr: 3.0e-3, warmup_steps: 10, log_interval: 10,
        eval_interval: {eval_interval}, eval_batches: 4, out_dir: {out}}}
"""

SWEEP = """\
name: bench-overhead
base: base.yaml
seeds: {seeds}
scheduler: {{type: none}}
resources: {{workers: 1, cpus_per_worker: {cpus}, gpus_per_worker: 0, max_concurrent: {conc}}}
metric: val_bpb
mode: min
tracking: {{uri: "sqlite:///{db}", experiment: bench-sweep}}
max_failures: 0
"""


def calibrate(base_yaml: Path, threads: int) -> float:
    """Seconds per optimizer step of the config, measured in a subprocess with the trial's threads."""
    code = (
        "import time, torch\n"
        "from stlm.config import load_config\nfrom stlm.data import prepare\n"
        "from stlm.data.loader import TokenBatcher\nfrom stlm.models import build_model\n"
        "from stlm.train.optim import build_optimizer\nfrom stlm.train.loop import train_step\n"
        f"cfg = load_config({str(base_yaml)!r})\ndata = prepare(cfg)\n"
        "m = build_model(cfg.model, data.tokenizer); o = build_optimizer(m, cfg.train, torch.device('cpu'))\n"
        "b = TokenBatcher(data.train, cfg.train.batch_size, cfg.model.context_length, seed=0)\n"
        "dev = torch.device('cpu')\n"
        "for _ in range(3): train_step(m, o, [b.next()], grad_clip=1.0, amp_dtype=None, device=dev)\n"
        "t = time.perf_counter()\n"
        "for _ in range(10): train_step(m, o, [b.next()], grad_clip=1.0, amp_dtype=None, device=dev)\n"
        "print((time.perf_counter() - t) / 10)\n"
    )
    env = quiet_env() | {"OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(REPO))
    if out.returncode != 0:
        raise SystemExit(f"calibration failed:\n{out.stdout}\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


def standalone(work: Path, base_yaml: Path, seeds: list[int], threads: int) -> list[dict]:
    db = work / "standalone.db"
    runs = []
    for s in seeds:
        cmd = [
            sys.executable,
            "-m",
            "stlm.train",
            str(base_yaml),
            f"train.seed={s}",
            f"tracking.uri=sqlite:///{db}",
            "tracking.experiment=bench-standalone",
            "--run-name",
            f"seed{s}",
        ]
        env = quiet_env() | {"OMP_NUM_THREADS": str(threads)}
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(work))
        wall = time.time() - t0
        if proc.returncode != 0:
            raise SystemExit(f"standalone run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        runs.append({"seed": s, "wall_s": round(wall, 2), "t0": t0, "line": proc.stdout.strip().splitlines()[-1][:300]})
        print(f"standalone seed {s}: {wall:.1f}s", flush=True)
    return runs


def sweep(work: Path, seeds: list[int], cpus: int, conc: int) -> dict:
    exp = work / "exp"
    (work / "sweep.yaml").write_text(SWEEP.format(seeds=json.dumps(seeds), cpus=cpus, conc=conc, db=work / "sweep.db"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="sbr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = quiet_env() | {"RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "stlm.sweep", str(work / "sweep.yaml"), "--experiment-dir", str(exp)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(work))
    wall = time.time() - t0
    log = proc.stdout + "\n" + proc.stderr
    (work / "sweep.log").write_text(log)
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed (rc {proc.returncode}):\n{log[-4000:]}")
    return {"wall_s": round(wall, 2), "exp": exp, "ray_tmp": ray_tmp, "log": log, "t0": t0}


def mlflow_trials(db: Path) -> list[dict]:
    """Per run of the DB (sweep trials, or standalone runs): start/end wall time and the reports.

    Each report is (driver receipt wall time, the loop's elapsed_s at that report): the sweep's
    MLflow callback logs a result when the driver receives it, `stlm train` when the loop logs it.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    out = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            tags = run.data.tags
            if tags.get("stlm.kind") == "sweep" or (tags.get("stlm.sweep") and not tags.get("stlm.trial_id")):
                continue  # the sweep's parent run
            hist = sorted(client.get_metric_history(run.info.run_id, "elapsed_s"), key=lambda m: m.step)
            tps = [m.value for m in client.get_metric_history(run.info.run_id, "tokens_per_s")]
            out.append(
                {
                    "tokens_per_s": median(tps) if tps else None,
                    "name": run.info.run_name,
                    "trial_id": tags.get("stlm.trial_id"),
                    "start": run.info.start_time / 1000,
                    "end": (run.info.end_time or 0) / 1000,
                    "reports": [(m.timestamp / 1000, m.value, m.step) for m in hist],
                }
            )
    out.sort(key=lambda r: r["start"])
    return out


def train_logs(ray_tmp: Path) -> dict[str, dict]:
    """Ray Train V2 events per run name (= trial id), from the JSON lines in logs/train/ray-train-sys-*.log.

    These system logs are written at DEBUG level whatever RunConfig's log level is. Controller:
    'Attempting to start training worker group', '[Worker Group Initialization] <part> in Xs',
    'Started training worker group'. Worker: 'Setting up process group', 'Launching training function'.
    """
    out: dict[str, dict] = {}
    for f in ray_tmp.glob("**/logs/train/ray-train-sys-*.log"):
        for line in f.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            run, ts = rec.get("run_name"), rec.get("timestamp_ns")
            if not run or not ts:
                continue
            t, msg = ts / 1e9, str(rec.get("message", ""))
            ev = out.setdefault(run, {"parts": {}})
            if rec.get("component") != "worker":
                ev["first"] = min(ev.get("first", t), t)
            for key, text in (
                ("wg_attempt", "Attempting to start training worker group"),
                ("wg_started", "Started training worker group"),
                ("process_group", "Setting up process group"),
                ("fn_launch", "Launching training function"),
            ):
                if msg.startswith(text) or (key == "fn_launch" and text in msg):
                    ev.setdefault(key, t)
            m = re.match(r"\[Worker Group Initialization\] (.*?) (?:in|completed in) ([\d.]+)s", msg)
            if m:
                ev["parts"].setdefault(m.group(1).strip(), float(m.group(2)))
    return out


def _med(xs):
    xs = [x for x in xs if x is not None]
    return round(median(xs), 2) if xs else None


def breakdown(
    work: Path, sw: dict, standalone_runs: list[dict], tokens: int | None = None, n_reports: int | None = None
) -> dict:
    """Where the sweep's extra wall time goes, per trial (medians) and for the driver."""
    trials = mlflow_trials(work / "sweep.db")
    ctl = train_logs(sw["ray_tmp"])
    rows = []
    for t in trials:
        if not t["reports"]:
            continue
        first_rx, first_el, _ = t["reports"][0]
        last_rx, last_el, _ = t["reports"][-1]
        first_step = first_rx - first_el  # loop start (run_t0), on the wall clock
        c = ctl.get(t["trial_id"] or "", {})
        row = {
            "trial": t["trial_id"],
            "loop_s": last_el,
            "loop_tokens_per_s": t["tokens_per_s"],
            "start_to_first_step_s": first_step - t["start"],
            "last_report_to_end_s": t["end"] - last_rx if t["end"] else None,
        }
        if "first" in c:  # the segments of start_to_first_step_s, in order
            row["a_trial_start_to_controller_s"] = c["first"] - t["start"]
            if "wg_attempt" in c and "wg_started" in c:
                row["b_controller_to_worker_group_attempt_s"] = c["wg_attempt"] - c["first"]
                row["c_worker_group_start_s"] = c["wg_started"] - c["wg_attempt"]
                row["d_worker_group_started_to_first_step_s"] = first_step - c["wg_started"]
            if "fn_launch" in c:  # inside d: imports of stlm/torch, prepare (warm cache), model and optimizer
                row["worker_fn_launch_to_first_step_s"] = first_step - c["fn_launch"]
            row["worker_group_parts_s"] = c["parts"]
        rows.append(row)
    srows = []
    for r, t in zip(standalone_runs, mlflow_trials(work / "standalone.db")):
        if not t["reports"]:
            continue
        first_rx, first_el, _ = t["reports"][0]
        last_rx, last_el, _ = t["reports"][-1]
        srows.append(
            {
                "loop_s": last_el,
                "loop_tokens_per_s": t["tokens_per_s"],
                "process_start_to_first_step_s": first_rx - first_el - r["t0"],
                "last_report_to_exit_s": r["t0"] + r["wall_s"] - last_rx,
                "wall_s": r["wall_s"],
            }
        )
    out: dict = {"per_trial": {}, "standalone": {}}
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "trial"})
    for k in keys:
        out["per_trial"][k] = _med([r.get(k) for r in rows])
    parts = [r.get("worker_group_parts_s") or {} for r in rows]
    if any(parts):
        out["per_trial"]["worker_group_parts_s"] = {
            k: _med([p.get(k) for p in parts]) for k in sorted({k for p in parts for k in p})
        }
    for k in sorted({k for r in srows for k in r}):
        out["standalone"][k] = _med([r.get(k) for r in srows])
    if rows and srows:
        extra = out["per_trial"]["loop_s"] - out["standalone"]["loop_s"]
        out["in_loop_extra_s"] = round(extra, 2)
        a, b = out["per_trial"].get("loop_tokens_per_s"), out["standalone"].get("loop_tokens_per_s")
        if a and b and tokens:
            # slower steps in the Ray worker (threads, niceness, neighbours) vs the rest (reports, checkpoints)
            out["in_loop_slower_steps_s"] = round(tokens * (1 / a - 1 / b), 2)
            out["in_loop_reports_and_rest_s"] = round(extra - tokens * (1 / a - 1 / b), 2)
            if n_reports:  # ray.train.report with a checkpoint: persist + wait for the controller's poll
                out["per_report_s"] = round(out["in_loop_reports_and_rest_s"] / n_reports, 3)
    if trials:
        starts, ends = [t["start"] for t in trials], [t["end"] for t in trials if t["end"]]
        out["driver_start_to_first_trial_s"] = round(min(starts) - sw["t0"], 2)
        if ends:
            out["last_trial_end_to_exit_s"] = round(sw["t0"] + sw["wall_s"] - max(ends), 2)
        gaps = [b["start"] - a["end"] for a, b in zip(trials, trials[1:]) if a["end"]]
        if gaps:
            out["between_trials_s"] = _med(gaps)
    m = re.search(r"Ray up in ([\d.]+)s", sw["log"])
    if m:
        out["ray_init_s"] = float(m.group(1))
    out["train_logs_found"] = len(ctl)
    return out


def health_check_interval() -> float | None:
    """RAY_TRAIN_HEALTH_CHECK_INTERVAL_S the sweep's Train controllers poll at (stlm's runner sets it)."""
    v = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    if v is None:
        try:
            from stlm.sweep.run.ray_cluster import HEALTH_CHECK_S as v
        except ImportError:
            return None
    return float(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="stlm sweep overhead vs standalone runs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--smoke", action="store_true")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--trial-s", type=float, default=None, help="target seconds of training per trial")
    p.add_argument("--concurrency", type=int, default=1, help="trials at once (each gets cores / concurrency CPUs)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, Tune results, MLflow DBs)")
    args = p.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = dict(MODES[name])
    n = args.trials or mode["trials"]
    trial_s = args.trial_s or mode["trial_s"]
    conc = args.concurrency
    cpus = max(1, (os.cpu_count() or 1) // conc)
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="stlm-bench-sweep-"))
    seeds = list(range(n))
    res: dict = {}
    result: dict = {"sweep_overhead": None, "mode": name, "machine": info}
    try:
        base = work / "base.yaml"
        base.write_text(BASE.format(cache=cache_dir(), steps=20, eval_interval=10, out=work / "runs"))
        step_s = calibrate(base, cpus)  # also prepares the data cache (not timed on either side)
        steps = max(20, int(round(trial_s / step_s / 10)) * 10)
        eval_interval = max(10, steps // 4)
        base.write_text(BASE.format(cache=cache_dir(), steps=steps, eval_interval=eval_interval, out=work / "runs"))
        print(
            f"calibrated: {step_s * 1e3:.0f} ms/step with {cpus} thread(s) -> {steps} steps "
            f"(~{steps * step_s:.0f}s of training per trial), {n} trials, concurrency {conc}",
            flush=True,
        )

        # standalone runs before AND after the sweep (A B A), so a drifting machine load hits both sides
        half = (n + 1) // 2
        runs = standalone(work, base, seeds[:half], cpus)
        res["sweep"] = sweep(work, seeds, cpus, conc)
        print(f"sweep: {res['sweep']['wall_s']:.1f}s", flush=True)
        runs += standalone(work, base, seeds[half:], cpus)
        res["standalone"] = runs
        sum_standalone = sum(r["wall_s"] for r in res["standalone"])
        ratio = res["sweep"]["wall_s"] * conc / sum_standalone
        bd = breakdown(
            work,
            res["sweep"],
            res["standalone"],
            tokens=steps * 16 * 128,  # batch x context of BASE
            n_reports=steps // eval_interval,
        )
        result = {
            "sweep_overhead": round(ratio - 1, 4),
            "sweep_wall_ratio": round(ratio, 4),
            "trial_s": round(median([r["wall_s"] for r in res["standalone"]]), 1),  # a standalone run, as measured
            "target_trial_s": trial_s,
            "trials": n,
            "concurrency": conc,
            "cpus_per_trial": cpus,
            "steps_per_trial": steps,
            "sweep_wall_s": res["sweep"]["wall_s"],
            "standalone_sum_s": round(sum_standalone, 2),
            "breakdown": bd,
            "health_check_interval_s": health_check_interval(),
            "mode": name,
            "machine": info,
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
        }
        print(
            f"sweep {res['sweep']['wall_s']:.1f}s x {conc} vs standalone sum {sum_standalone:.1f}s "
            f"-> overhead {ratio - 1:+.1%} (standalone runs of {result['trial_s']:.0f}s, {steps} steps)",
            flush=True,
        )
    except SystemExit as e:  # a failed run: say so in the JSON line instead of dying without one
        print(e)
        result["error"] = str(e).strip().splitlines()[0] if str(e).strip() else "failed"
    finally:
        if args.keep:
            print(f"kept {work} and the Ray logs under {res.get('sweep', {}).get('ray_tmp')}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if res.get("sweep"):
                shutil.rmtree(res["sweep"]["ray_tmp"], ignore_errors=True)
    emit(result)
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
