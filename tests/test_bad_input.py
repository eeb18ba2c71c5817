"""Bad input caught before anything is written, in every command (issue 28, item 7): each case ends in one
paragraph naming the key, file (and line) or address, exit 2, no traceback, and leaves no mlflow.db, run
directory, plan.pkl or lock. In-process through the real CLI (stlm.cli.main); none of them needs Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stlm.cli import main
from stlm.errors import StlmError
from stlm.sweep.resilience.lock import DriverLock

CONFIG = """\
model: {tokenizer: bytes, d_model: 32, n_layers: 1, n_heads: 2, context_length: 32}
data: {source: generated, max_chars: 20000}
train: {max_steps: 20, batch_size: 4, eval_interval: 10, log_interval: 10}
"""
SWEEP = """\
name: tiny
config:
  model: {tokenizer: bytes, d_model: 32, n_layers: 1, n_heads: 2, context_length: 32}
  data: {source: generated, max_chars: 20000}
  train: {max_steps: 20, batch_size: 4}
grid:
  model.positional: [rope, learned]
"""


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A clean working directory holding config.yaml and sweep.yaml; what the test leaves there is checked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return tmp_path


def _refused(capsys, argv, *said, seconds=10.0) -> str:
    """Exit 2 within `seconds`, one paragraph holding every `said`."""
    t0 = time.monotonic()
    code = main(argv)
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    assert took < seconds, f"took {took:.1f}s"
    assert "Traceback" not in err and err.startswith("error: ")
    assert "\n\n" not in err.strip()
    for s in said:
        assert s in err, err
    return err


def _untouched(d: Path, *extra: str) -> None:
    assert sorted(p.name for p in d.iterdir()) == sorted(["config.yaml", "sweep.yaml", *extra])


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_train_dead_tracking_server(here, capsys):
    uri = f"http://127.0.0.1:{_dead_port()}"
    _refused(capsys, ["train", "config.yaml", f"tracking.uri={uri}"], uri.removeprefix("http://"), "does not answer")
    _untouched(here)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_unsupported_tracking_scheme(here, capsys, command):
    f = "config.yaml" if command == "train" else "sweep.yaml"
    extra = ["--experiment-dir", "exp"] if command == "sweep" else []
    _refused(capsys, [command, f, *extra, "--tracking-uri", "htp://x"], "'htp://x'", "'htp://'")
    _untouched(here)  # a sweep: no exp/plan.pkl, no exp.lock


def test_train_tracking_uri_option_after_overrides(here, capsys):
    """stlm train has no --tracking-uri: its tracking.uri override, given after an option, still applies."""
    _refused(capsys, ["train", "config.yaml", "--run-name", "r", "tracking.uri=htp://x"], "'htp://x'")
    _untouched(here)


def test_malformed_jsonl_line_is_named(here, capsys):
    lines = [json.dumps({"text": f"document number {i} " * 20}) for i in range(300)]
    lines[199] = '{"text": "cut off'
    (here / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    _refused(capsys, ["train", "config.yaml", "data.source=corpus.jsonl"], "corpus.jsonl", "line 200")
    _untouched(here, "corpus.jsonl")


def test_jsonl_without_the_text_column(here, capsys):
    (here / "corpus.jsonl").write_text("".join(json.dumps({"body": "x" * 50}) + "\n" for _ in range(20)))
    _refused(capsys, ["train", "config.yaml", "data.source=corpus.jsonl"], "data.text_column='text'", "body")
    _refused(capsys, ["sweep", "sweep.yaml", "data.source=corpus.jsonl", "--dry-run"], "data.text_column='text'")
    _untouched(here, "corpus.jsonl")


def test_empty_text_file(here, capsys):
    (here / "empty.txt").write_text("")
    _refused(capsys, ["train", "config.yaml", "data.source=empty.txt"], "data.source='empty.txt'")
    _untouched(here, "empty.txt")


def test_output_directory_not_writable(here, capsys):
    (here / "taken").write_text("a file")
    _refused(capsys, ["train", "config.yaml", "train.out_dir=taken/runs"], "train.out_dir", "is a file")
    _untouched(here, "taken")


@pytest.mark.parametrize("command", ["eval", "export"])
def test_run_id_on_a_dead_tracking_server_answers_in_seconds(here, capsys, command):
    uri = f"http://127.0.0.1:{_dead_port()}"
    out = ["out"] if command == "export" else []
    _refused(capsys, [command, "0" * 32, *out, "--tracking-uri", uri], uri.removeprefix("http://"), "does not answer")
    _untouched(here)


def test_experiment_dir_that_is_a_file(here, capsys):
    (here / "exp").write_text("not a directory")
    _refused(capsys, ["sweep", "sweep.yaml", "--experiment-dir", "exp"], "--experiment-dir", "is a file")
    _untouched(here, "exp")


def test_a_directory_given_as_a_file(here, capsys):
    (here / "d").mkdir()
    _refused(capsys, ["sweep", "d", "--dry-run"], "is a directory, not a file")
    _refused(capsys, ["train", "d"], "is a directory, not a file")
    _untouched(here, "d")


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--connect-timeout", "-5"], "--connect-timeout: '-5' is not a positive number"),
        (["--connect-timeout", "0"], "--connect-timeout: '0' is not a positive number"),
        (["--head-timeout", "0"], "--head-timeout: '0' is not a positive number"),
        (["--address", "localhost:abc"], "--address: 'localhost:abc' is not a Ray address"),
    ],
)
def test_bad_connection_options_are_refused_at_once(here, capsys, option, said):
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        main(["sweep", "sweep.yaml", *option])
    assert e.value.code == 2 and time.monotonic() - t0 < 5
    assert said in capsys.readouterr().err
    _untouched(here)


def test_a_metric_never_reported(here, capsys):
    err = _refused(capsys, ["sweep", "sweep.yaml", "metric=val_acc", "--dry-run"], "metric: 'val_acc'")
    assert "val_bpb" in err and "train_loss" in err and "eval/<task>/<metric>" in err
    (here / "sweep.yaml").write_text(SWEEP + "eval: {tasks: [blimp]}\nmetric: eval/arc_easy/acc\n")
    _refused(capsys, ["sweep", "sweep.yaml", "--dry-run"], "'eval/arc_easy/acc'", "eval/blimp/<metric>")
    _untouched(here)


@pytest.mark.parametrize("value", ["0", "-30"])
def test_a_stall_timeout_that_is_not_positive_names_the_key(here, capsys, value):
    (here / "sweep.yaml").write_text(SWEEP + f"resources: {{stall_timeout: {value}}}\n")
    _refused(capsys, ["sweep", "sweep.yaml", "--dry-run"], "resources.stall_timeout must be a positive number")
    (here / "sweep.yaml").write_text(SWEEP)
    _refused(capsys, ["sweep", "sweep.yaml", f"resources.stall_timeout={value}"], "resources.stall_timeout must be")
    _untouched(here)


def test_max_chars_zero_names_the_key(here, capsys):
    _refused(capsys, ["train", "config.yaml", "data.max_chars=0"], "data.max_chars must be positive")
    _untouched(here)


def test_yaml_error_in_a_flow_mapping_names_its_line(here, capsys):
    (here / "config.yaml").write_text("model: {d_model: 32, n_layers: 1\ndata: {source: generated}\ntrain: {}\n")
    _refused(capsys, ["train", "config.yaml"], "at line 1, column 8", "flow mapping")
    _refused(capsys, ["sweep", "config.yaml"], "at line 1, column 8")


def test_overrides_after_options(here, capsys):
    code = main(["sweep", "sweep.yaml", "--dry-run", "--experiment-dir", "exp", "seeds=[0,1,2]"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "x 3 seeds [0, 1, 2]" in out.out
    _untouched(here)


def test_the_lock_refusal_names_an_owner_that_is_still_starting(tmp_path):
    """A driver that holds the lock but has not written itself yet (a simultaneous start) is named once it has."""
    exp = tmp_path / "exp"
    lock = DriverLock(exp).path
    lock.write_text("")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, json, os, socket, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(0.5)\n"
            "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode())\n"
            "time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StlmError) as e:
            DriverLock(exp).acquire()
        assert f"pid {holder.pid} on host {socket.gethostname()!r}" in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    assert not exp.exists() and os.path.getsize(lock) > 0
