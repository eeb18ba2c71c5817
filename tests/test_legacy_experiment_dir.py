"""An experiment directory written by stlm before the sweep package was split still resumes and reports.

The directory is made by the code of commit LEGACY (the last one with the flat stlm/sweep/), taken
from this repository's history with `git archive`: its driver is interrupted after the first of two
trials finished, then today's driver continues it with --resume (unpickling plan.pkl and Tune's
state, which name the old modules) and today's `stlm report` writes its report.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LEGACY = "59f722fcd4e633199dde836be51c80d6c1a9e266"  # the last commit with the flat stlm/sweep/ package

pytestmark = pytest.mark.slow


def _legacy_tree(dest: Path) -> Path:
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", LEGACY, "stlm"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"this test needs the repository's history (commit {LEGACY[:7]}): git archive failed: {e}")
    dest.mkdir()
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    assert (dest / "stlm" / "sweep" / "runner.py").is_file()  # really the flat package
    return dest


def _env(pythonpath: Path | None) -> dict:
    """The end-to-end tests' environment (a local Ray of its own), running the code at `pythonpath` or this tree's."""
    from test_sweep_e2e import _env as sweep_env

    env = sweep_env()
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def test_a_directory_written_before_the_split_resumes_and_reports(tmp_path):
    old = _legacy_tree(tmp_path / "legacy")
    spec = {
        "name": "legacy",
        "config": {
            "model": {"tokenizer": "bytes", "n_layers": 1, "d_model": 32, "n_heads": 2, "context_length": 32},
            "data": {"source": "generated", "max_chars": 100_000, "num_proc": 1},
            "train": {
                "max_steps": 20,
                "batch_size": 4,
                "eval_interval": 10,
                "log_interval": 10,
                "eval_batches": 1,
                "warmup_steps": 2,
            },
        },
        "seeds": [0, 1],
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "max_concurrent": 1},
    }
    sweep = tmp_path / "legacy.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    exp = tmp_path / "exp"
    args = [str(sweep), "--experiment-dir", str(exp)]

    # the old driver: stopped (SIGINT, as Ctrl-C) once its first trial is finished in the ledger
    log = tmp_path / "old.log"
    first = subprocess.Popen(
        [sys.executable, "-m", "stlm.sweep", *args],
        cwd=tmp_path,
        env=_env(old),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ledger = exp / "mlflow_state.json"
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        try:
            if any(t.get("status") == "finished" for t in json.loads(ledger.read_text())["trials"].values()):
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    assert first.poll() is None, f"the old driver ended before it could be interrupted:\n{log.read_text()[-3000:]}"
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130, log.read_text()[-3000:]
    assert "Continue it with" in log.read_text()  # the old driver stopped as it should, naming --resume

    # today's driver continues it, and today's report reads it
    resumed = subprocess.run(
        [sys.executable, "-m", "stlm.sweep", *args, "--resume"],
        cwd=tmp_path,
        env=_env(None),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    from test_sweep_e2e import _child_runs

    client, runs = _child_runs(exp)
    assert sorted(r.data.tags["stlm.seed"] for r in runs) == ["0", "1"]  # one run per cell: nothing run twice
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_bpb")] == [10, 20]
    report = subprocess.run(
        [str(Path(sys.executable).parent / "stlm"), "report", str(exp)],
        cwd=tmp_path,
        env=_env(None),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    md = (exp / "report" / "report.md").read_text()
    assert "legacy" in md and "val_bpb" in md
