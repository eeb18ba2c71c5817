"""Pre-flight, overrides and the small refusals, through the real CLI: exit 2, one paragraph naming the
key / file / address, no traceback, nothing written (issue 21, items 1, 2, 6, 7)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _stlm(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", STLM_QUIET="1", RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "STLM_GPT2_VOCAB", "STLM_BENCHMARKS"):
        env.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "stlm.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _refused(p: subprocess.CompletedProcess, *words: str) -> str:
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    err = p.stderr.split("error: ", 1)[1]
    assert "\n\n" not in err.strip()  # one paragraph
    for w in words:
        assert w in err, err
    return err


def test_dry_run_lists_every_problem_and_the_real_run_writes_nothing(tmp_path):
    import torch

    p = _stlm("sweep", REPO / "sweeps/ffn_sharing.yaml", "--dry-run", cwd=tmp_path)
    words = [
        "pre-flight found",
        "fineweb",
        "HF_HUB_OFFLINE",
        "gpt2",
        "openaipublic.blob.core.windows.net:443 was not tried: STLM_OFFLINE=1 is set",
    ]  # the test session is offline: the vocabulary's host is not even looked up
    if not torch.cuda.is_available():
        words += ["resources.gpus_per_worker"]
    _refused(p, *words)
    missing = tmp_path / "no_such_corpus.txt"
    for extra in (["--dry-run"], []):
        p = _stlm("sweep", REPO / "sweeps/quickstart.yaml", f"data.source={missing}", *extra, cwd=tmp_path)
        _refused(p, "pre-flight found 1 problem", str(missing), "does not exist")
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # no sweep_runs/, no mlflow.db


def test_sweep_level_overrides(tmp_path):
    q = REPO / "sweeps/quickstart.yaml"
    p = _stlm("sweep", q, "seeds=[0,1,2]", "search.samples=1", "resources.cpus_per_worker=1", "--dry-run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "2 arms x 3 seeds [0, 1, 2] x 1 sample(s) per cell = 6" in p.stdout
    _refused(_stlm("sweep", q, "search.sample=1", "--dry-run", cwd=tmp_path), "search.samples")
    _refused(_stlm("sweep", q, "cpus_per_worker=1", "--dry-run", cwd=tmp_path), "resources.cpus_per_worker")
    p = _stlm("sweep", q, "train.lr=0.002", "--dry-run", cwd=tmp_path)  # a searched knob is pinned, and said so
    assert p.returncode == 0 and "pins a knob the sweep searches" in p.stdout and "search: none" in p.stdout
    _refused(_stlm("sweep", q, "model.positional=rope", "--dry-run", cwd=tmp_path), "grid.model.positional")
    _refused(
        _stlm("sweep", q, "budget.tolerance=0.00001", "--dry-run", cwd=tmp_path), "budget.tolerance", "budget.free"
    )


def test_unreachable_address_fails_in_bounded_time(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    p = _stlm(
        "sweep",
        REPO / "sweeps/quickstart.yaml",
        "--address",
        f"127.0.0.1:{port}",
        "--connect-timeout",
        "3",
        cwd=tmp_path,
        timeout=90,
    )
    _refused(p, f"127.0.0.1:{port}", "--connect-timeout")
    assert not (tmp_path / "sweep_runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_tracking_server_that_does_not_answer_is_named_before_anything_starts(tmp_path):
    """Without this check MLflow's client retried a dead server for 4 min 16 s, then a traceback (exit 1)."""
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    p = _stlm("sweep", REPO / "sweeps/quickstart.yaml", "--tracking-uri", f"http://127.0.0.1:{port}", cwd=tmp_path)
    assert time.monotonic() - t0 < 60
    _refused(p, f"MLflow tracking server http://127.0.0.1:{port}", "does not answer", "sqlite:///")
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # no sweep_runs/, no mlflow.db


def test_small_refusals(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    _refused(_stlm("train", tmp_path / "empty.yaml", cwd=tmp_path), "is empty", "section")
    _refused(_stlm("sweep", tmp_path / "empty.yaml", "--dry-run", cwd=tmp_path), "is empty", "`name`")
    _refused(
        _stlm("generate", tmp_path / "nowhere", "--temperature", "-1", "--top-k", "0", cwd=tmp_path),
        "--temperature",
        "--top-k",
    )
    p = _stlm("--version", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("stlm ")


# --------------------------------------------------------------------------- offline


@pytest.mark.filterwarnings("ignore:A test tried")  # pytest-socket warns as it raises
def test_the_test_session_reaches_no_host_but_this_machine():
    """conftest.py: a connect or a name lookup beyond this machine fails loudly (not as an OSError a probe
    would report as "cannot be reached"); this machine's own addresses, the one Ray gives its node
    included, stay open; every process a test starts inherits the offline variables."""
    from pytest_socket import SocketBlockedError, SocketConnectBlockedError

    from stlm.offline import local_addresses

    with pytest.raises(SocketConnectBlockedError, match="203.0.113.7"):
        socket.create_connection(("203.0.113.7", 443), timeout=1)  # TEST-NET-3: outside, and never routed
    with pytest.raises(SocketBlockedError, match="huggingface.co"):
        socket.getaddrinfo("huggingface.co", 443)
    with socket.create_server(("", 0)) as server:  # every interface of this machine
        port = server.getsockname()[1]
        for host in ["localhost", socket.gethostname(), *sorted(a for a in local_addresses() if ":" not in a)]:
            socket.create_connection((host, port), timeout=5).close()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; print(os.environ.get('STLM_OFFLINE'), "
            "os.environ.get('HF_HUB_OFFLINE'), os.environ.get('HF_DATASETS_OFFLINE'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert out.split() == ["1", "1", "1"]


def test_offline_probes_name_the_variable_and_connect_nowhere(tmp_path, monkeypatch):
    """With STLM_OFFLINE=1 (or, for the downloads, HF_HUB_OFFLINE=1) every probe answers at once with the
    variable that forbade it, and no socket is opened to an outside host; a server on this machine is
    still probed."""
    from stlm import offline, tokenizers
    from stlm.errors import StlmError
    from stlm.eval.tasks.base import load_hub
    from stlm.sweep.resilience import storage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with socket.create_server(("127.0.0.1", 0)) as server:  # loopback under STLM_OFFLINE: really probed
        offline.unreachable.cache_clear()
        assert offline.unreachable(f"http://127.0.0.1:{server.getsockname()[1]}") is None
    assert "cannot be reached" in offline.unreachable(f"http://localhost:{closed}")

    def no_connect(*args, **kwargs):
        raise AssertionError(f"an offline probe connected: {args}")

    monkeypatch.setattr(socket, "create_connection", no_connect)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "STLM_GPT2_VOCAB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("STLM_OFFLINE", "1")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache: only the download could help
    offline.unreachable.cache_clear()
    said = "was not tried: STLM_OFFLINE=1 is set"
    assert offline.hub_down() == f"huggingface.co:443 {said} (no host but this machine is contacted)"
    assert offline.hub_unreachable() == offline.hub_down()
    assert offline.unreachable("http://mlflow.example.com:5000").startswith(f"mlflow.example.com:5000 {said}")
    assert tokenizers.gpt2_unavailable().startswith(f"openaipublic.blob.core.windows.net:443 {said}")
    with pytest.raises(StlmError, match=f"{said}.*gpt2_vocab_file"):
        tokenizers.load_gpt2()
    with pytest.raises(StlmError, match=f"{said}.*eval.data_dir"):  # the local alternatives, named
        load_hub("arc_easy", "allenai/ai2_arc", "ARC-Easy", "test")
    assert storage.probe("s3://bucket/sweeps") == f"s3's default endpoint {said}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.example.com:9000")
    assert storage.probe("s3://bucket/sweeps").startswith(f"s3.example.com:9000 {said}")

    # HF_HUB_OFFLINE alone: the downloads are not tried (a server the user set up elsewhere still would be)
    monkeypatch.delenv("STLM_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert tokenizers.gpt2_unavailable().startswith(
        "openaipublic.blob.core.windows.net:443 was not tried: HF_HUB_OFFLINE=1 is set"
    )
    assert offline.hub_unreachable() == "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    assert offline.hub_down() is None  # datasets reads its cache of an earlier download, without the network
