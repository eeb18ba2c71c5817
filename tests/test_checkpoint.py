"""Trustworthy checkpoints: checksums written and verified, damaged ones named (file + step) and skipped,
the newest train.keep_checkpoints kept, stale ones ahead of the resume point discarded, and
`stlm train --resume` falling back to the newest intact checkpoint with the uninterrupted curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stlm.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- pure logic


def test_prune_keeps_the_newest_intact_and_drops_what_is_ahead():
    # wrote step 40 after resuming from 30; a stale 50 and 60 of the run before are ahead: never kept
    assert ckpt.prune_choice([(20, True), (30, True), (40, True), (50, True), (60, True)], 40, 2) == [20, 50, 60]
    # a damaged checkpoint does not count as one of the kept ones
    assert ckpt.prune_choice([(10, True), (20, True), (30, False), (40, True)], 40, 2) == [10, 30]
    assert ckpt.prune_choice([(10, True), (20, True)], 20, 1) == [10]
    assert ckpt.prune_choice([(10, True)], 10, 2) == []


def _write(tmp_path, step: int) -> Path:
    import torch

    from stlm.config import build_config

    cfg = build_config(
        {"model": {"tokenizer": "bytes", "n_layers": 1, "d_model": 16, "n_heads": 2, "context_length": 16}}
    )
    return ckpt.save_checkpoint(
        tmp_path / "run" / ckpt.step_dir_name(step),
        model_state={"w": torch.arange(1000.0 + step)},
        trainer_state={"step": step},
        cfg=cfg,
        meta={"step": step},
    )


def test_damage_is_named_by_file_and_step_and_the_run_falls_back(tmp_path, capsys):
    a, b = _write(tmp_path, 10), _write(tmp_path, 20)
    assert ckpt.resolve_checkpoint(tmp_path / "run") == b
    ckpt._verified.clear()  # as a new process would

    with open(b / "model.pt", "r+b") as f:  # one flipped byte, same size
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"step 20\).*model\.pt does not match the checksum"):
        ckpt.load_model_state(b)
    assert ckpt.resolve_checkpoint(tmp_path / "run") == a  # the run directory: the newest intact one
    err = capsys.readouterr().err
    assert "model.pt" in err and "step_000010" in err and "(step 10)" in err

    os.truncate(a / "trainer.pt", 10)
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"step 10\).*trainer\.pt has 10 bytes"):
        ckpt.load_trainer_state(a)
    with pytest.raises(ckpt.CorruptCheckpointError, match="No intact checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "run")
    c = _write(tmp_path, 30)
    (c / "config.yaml").unlink()
    assert "(step 30) is missing config.yaml" in ckpt.intact(c)


def test_a_full_disk_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    import errno

    import torch

    from stlm.atomic import DiskFullError

    _write(tmp_path, 10)
    real_save = torch.save

    def full(obj, f, *a, **kw):
        if isinstance(obj, dict) and "step" in obj:  # the trainer state: the disk fills up mid-checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match=r"step_000020 is full: .* free, and this write needs about .*--resume"):
        _write(tmp_path, 20)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["step_000010"]  # no temp dir, no half step 20


# --------------------------------------------------------------------------- through the command line


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, STLM_QUIET="1", PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "stlm.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _val_bpb(cwd: Path) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("stlm").experiment_id])
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, "val_bpb"))


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    """After the newest checkpoint is damaged, eval and generate name the damaged file and step in one
    paragraph, and `stlm train --resume` continues from the checkpoint before it, says so, and
    reproduces the uninterrupted curve from there."""
    cfg = {
        "model": {"tokenizer": "bytes", "n_layers": 1, "d_model": 32, "n_heads": 2, "context_length": 32},
        "data": {"source": "generated", "max_chars": 100_000},
        "train": {
            "max_steps": 30,
            "batch_size": 4,
            "eval_interval": 10,
            "log_interval": 10,
            "eval_batches": 2,
            "warmup_steps": 2,
            "out_dir": "runs",
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    first = _cli("train", "tiny.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step_000020", "step_000030"]  # keep_checkpoints=2
    with open(run_dir / "step_000030" / "trainer.pt", "r+b") as f:
        f.truncate(1000)

    for cmd in (
        ["eval", str(run_dir / "step_000030"), "--tasks", "bpb"],
        ["generate", str(run_dir / "step_000030"), "--prompt", "Once", "--max-new-tokens", "4"],
    ):
        r = _cli(*cmd, cwd=tmp_path)
        assert r.returncode == 2, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "trainer.pt" in r.stderr and "(step 30)" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1  # one paragraph

    resumed = _cli("train", "tiny.yaml", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_000030' (step 30) is damaged: trainer.pt" in resumed.stderr
    assert "Continuing from the newest intact checkpoint" in resumed.stderr and "(step 20)" in resumed.stderr
    points = _val_bpb(tmp_path)
    assert [s for s, _, _ in points] == [10, 20, 30, 30]  # steps 21-30 trained again, from step 20
    assert points[2][2] == points[3][2]  # bit for bit the uninterrupted run's value
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step_000020", "step_000030"]
    assert ckpt.intact(run_dir / "step_000030") is None  # the damaged one was replaced


def test_a_stopped_or_killed_stlm_train_leaves_no_run_running(tmp_path):
    """A run killed with -9 before its first checkpoint is marked KILLED by the next `stlm train --resume`
    of that directory, and SIGTERM ends `stlm train` like Ctrl-C: exit 130, its MLflow run KILLED."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    cfg = {
        "model": {"tokenizer": "bytes", "n_layers": 1, "d_model": 32, "n_heads": 2, "context_length": 32},
        "data": {"source": "generated", "max_chars": 100_000},
        "train": {
            "max_steps": 100_000,
            "batch_size": 4,
            "eval_interval": 100_000,
            "log_interval": 10,
            "warmup_steps": 2,
            "out_dir": "runs",
        },
    }
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, STLM_QUIET="1", PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    run_file = tmp_path / "runs" / "long" / "mlflow_run.json"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    started: list[subprocess.Popen] = []

    def start_and_wait() -> tuple[subprocess.Popen, str]:
        """A `stlm train` that has made (or reopened) its MLflow run: the run file names its pid."""
        p = subprocess.Popen(
            [sys.executable, "-m", "stlm.cli", "train", "long.yaml", "--resume"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(p)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            saved = json.loads(run_file.read_text()) if run_file.is_file() else {}
            if saved.get("pid") == p.pid:
                time.sleep(1.0)  # into the run
                return p, saved["run_id"]
            time.sleep(0.1)
        pytest.fail("stlm train made no MLflow run: " + p.communicate()[1][-2000:])

    try:
        p, first = start_and_wait()
        p.kill()  # -9: no chance to end its run
        p.communicate(timeout=30)
        assert client.get_run(first).info.status == "RUNNING"

        p, second = start_and_wait()  # the next run of the directory repairs it ...
        p.send_signal(signal.SIGTERM)  # ... and is itself stopped the way schedulers stop jobs
        _, err = p.communicate(timeout=30)
        assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
        assert f"the earlier run {first} of this directory was killed" in err and "marked KILLED in MLflow" in err
        assert (client.get_run(first).info.status, client.get_run(second).info.status) == ("KILLED", "KILLED")
    finally:
        for p in started:  # a failed assertion must not leave a training process behind
            p.kill()
            p.communicate(timeout=30)
