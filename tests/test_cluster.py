"""The cluster launcher files: Ray's own schema (offline), and a real two-node Ray cluster running a sweep job."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from test_sweep_e2e import _kill_group, live_pids

from stlm.train.checkpoint import step_of

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAMLS = sorted((REPO / "cluster").glob("*.yaml"))
VENV_PYTHON = sys.executable  # the interpreter running the tests has stlm, ray and mlflow installed
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


def _prepared(path: Path) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    return config


@pytest.fixture
def no_network(monkeypatch):
    """Validation must work offline and without AWS credentials: any connection attempt fails the test."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")

    def refuse(*args, **kwargs):
        raise AssertionError(f"cluster config validation tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_cluster_config_is_the_one_the_docs_describe():
    """README.md and cluster/README.md say: `ray up cluster/l40.yaml`, the torch that README pins,
    one placeholder to replace (the S3 bucket of MLflow's artifacts), and sweeps to submit. The file says the same."""
    docs = (REPO / "README.md").read_text() + (REPO / "cluster" / "README.md").read_text()
    named = set(re.findall(r"ray up (cluster/[\w.-]+\.yaml)", docs))
    assert named == {"cluster/l40.yaml"} and REPO / "cluster" / "l40.yaml" in CLUSTER_YAMLS
    text = (REPO / "cluster" / "l40.yaml").read_text()
    config = yaml.safe_load(text)
    readme_pin = set(re.findall(r"torch==[\w.+]+", (REPO / "README.md").read_text()))
    cluster_pin = set(re.findall(r"torch==[\w.+]+", " ".join(config["setup_commands"])))
    assert len(readme_pin) == 1 and cluster_pin == readme_pin  # the nodes run the torch CI tests
    assert set(re.findall(r"REPLACE_ME_\w+", text)) == {"REPLACE_ME_BUCKET"}
    uses = [c for c in config["head_start_ray_commands"] if "REPLACE_ME_BUCKET" in c]
    assert len(uses) == 1 and "--artifacts-destination s3://REPLACE_ME_BUCKET/" in uses[0]
    assert "replace `REPLACE_ME_BUCKET`" in docs
    sweeps = set(re.findall(r"sweeps/[\w.-]+\.yaml", text + docs))
    assert sweeps and all((REPO / sw).is_file() for sw in sweeps), sweeps


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_cluster_yaml_validates_against_ray_schema_offline(path, no_network):
    config = _prepared(path)
    # every shell command Ray will run on a node at least parses (a stray ' or a YAML
    # comment cutting a command short shows up here, not after 10 minutes of `ray up`)
    for key in COMMAND_KEYS:
        for cmd in config.get(key, []):
            r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert r.returncode == 0, f"{path.name} {key}: {cmd!r}: {r.stderr}"


def test_l40_cluster_shape():
    config = _prepared(REPO / "cluster" / "l40.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}

    # head: no GPU, on demand (it holds the MLflow database and the sweep driver)
    assert head["resources"]["GPU"] == 0 and head["resources"]["CPU"] >= 1
    assert "InstanceMarketOptions" not in head["node_config"]

    # workers: L40S instance types (AWS g6e), autoscaling from zero, spot, GPUs advertised
    instance_types = {t["node_config"]["InstanceType"] for t in workers.values()}
    assert {"g6e.xlarge", "g6e.12xlarge"} <= instance_types
    assert all(it.startswith("g6e.") for it in instance_types)
    for name, t in workers.items():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1, name
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
        assert t["resources"]["GPU"] >= 1, name
    assert types["ray.worker.l40s_4x"]["resources"]["GPU"] == 4  # g6e.12xlarge has 4 L40S
    for t in types.values():
        assert "deeplearning" in t["node_config"]["ImageId"]  # a Deep Learning AMI (NVIDIA driver)

    # the package is installed on every node from the synced working dir
    assert config["file_mounts"]["~/stlm"] == "."
    assert any("pip install" in c and "-e ~/stlm" in c for c in config["setup_commands"])


def test_l40_cluster_runs_mlflow_and_agrees_on_auth():
    config = _prepared(REPO / "cluster" / "l40.yaml")
    head_cmds = " ".join(config["head_start_ray_commands"])
    worker_cmds = " ".join(config["worker_start_ray_commands"])
    # an MLflow tracking server on the head that every node can reach, with shared artifact storage
    assert "mlflow server" in head_cmds
    for flag in ("--backend-store-uri", "--artifacts-destination s3://", "--host 0.0.0.0", "--port 5000"):
        assert flag in head_cmds, flag
    # ... and its URI in the environment of every Ray process on the workers
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in worker_cmds
    # one RAY_AUTH_MODE for every `ray start`, and the token shipped to every node
    for cmds in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        starts = [c for c in cmds if "ray start" in c]
        assert starts and all("export RAY_AUTH_MODE=token;" in c for c in starts)
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_l40_cluster_shares_the_experiment_dir():
    """Ray Train refuses a storage path workers cannot see: the head exports one over NFS, workers mount it."""
    config = _prepared(REPO / "cluster" / "l40.yaml")
    head_setup = " ".join(config["head_setup_commands"])
    assert "nfs-kernel-server" in head_setup and "/home/ubuntu/shared" in head_setup and "exportfs" in head_setup
    worker_start = config["worker_start_ray_commands"]
    mount = next(i for i, c in enumerate(worker_start) if "mount -t nfs" in c)
    assert "$RAY_HEAD_IP:/home/ubuntu/shared" in worker_start[mount]
    assert mount < next(i for i, c in enumerate(worker_start) if "ray start" in c)  # mounted before trials can land


# --------------------------------------------------------------------------- a real two-node cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), read from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(d.name)] = (ppid, cmdline)
    return out


def _cluster_pids(temp_dir: str) -> set[int]:
    """Every process of this cluster (its command line names temp_dir) and their descendants (job drivers)."""
    procs = _processes()
    pids = {pid for pid, (_, cmd) in procs.items() if temp_dir in cmd and pid != os.getpid()}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in pids} - pids - {os.getpid()}
        pids |= more
        grew = bool(more)
    return pids


def _kill_cluster(temp_dir: str) -> None:
    """Stop only this cluster's processes, by pid.

    Not `ray stop --force`: that kills every Ray process on the machine, including other
    clusters (CI jobs, other test sessions) that happen to run beside this one.
    """
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = _cluster_pids(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _cluster_pids(temp_dir):
            time.sleep(0.2)
        if not _cluster_pids(temp_dir):
            return


@contextmanager
def two_node_cluster(env_extra: dict[str, str] | None = None):
    """A head and a second node (1 CPU each) on this machine, token auth on, torn down afterwards.

    Each node has a HOME of its own, and with it a node-local data cache (~/.cache/stlm), as two
    machines would; `env_extra` goes into the environment of both `ray start` calls (as
    cluster/l40.yaml exports MLFLOW_TRACKING_URI before them)."""
    # short root: Ray's unix sockets live under it and must stay below ~107 characters
    temp_dir = tempfile.mkdtemp(prefix="stlm-ray-", dir="/tmp")
    token = Path(temp_dir) / "auth_token"
    token.write_text(os.urandom(24).hex())
    gcs, dash = _free_port(), _free_port()
    homes = {"head": Path(temp_dir) / "home-head", "worker": Path(temp_dir) / "home-worker"}
    for h in homes.values():
        h.mkdir()
    # RAY_ADDRESS: every process of this cluster inherits it from `ray start`; without it, Ray code
    # that looks the cluster up (Ray Train's placement group cleaner) fails when other Ray
    # instances run on the same machine ("Found multiple active Ray instances").
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ADDRESS=f"127.0.0.1:{gcs}",
        **(env_extra or {}),
    )
    env.pop("STLM_CACHE", None)  # the test session's shared cache would make one cache of both nodes
    bin_dir = Path(VENV_PYTHON).parent
    ray = str(bin_dir / "ray")
    common = ["--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats"]

    def start(args: list[str], home: Path) -> float:
        t0 = time.monotonic()
        r = subprocess.run(
            [ray, "start", *args, *common, f"--dashboard-agent-listen-port={_free_port()}"],
            env=dict(env, HOME=str(home)),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.returncode == 0, f"ray start failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return time.monotonic() - t0

    try:
        timings = {
            "head_s": start(
                [
                    "--head",
                    "--node-ip-address=127.0.0.1",
                    f"--port={gcs}",
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}",
                    f"--ray-client-server-port={_free_port()}",
                ],
                homes["head"],
            ),
            "worker_s": start([f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1"], homes["worker"]),
        }
        yield {
            "env": dict(env, HOME=str(homes["head"])),
            "gcs": gcs,
            "dashboard": f"http://127.0.0.1:{dash}",
            "ray": ray,
            "timings": timings,
            "temp_dir": temp_dir,
            "homes": homes,
        }
    finally:
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _node_pids(home: Path) -> list[int]:
    """The processes of one node of two_node_cluster: its raylet, agents and workers (HOME=home)."""
    marker = f"HOME={home}\0".encode()
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int(d.name) != os.getpid() and marker in (d / "environ").read_bytes():
                out.append(int(d.name))
        except OSError:
            continue
    return out


def _state_api(cluster, path: str, token: bool = True) -> list[dict]:
    """GET the dashboard's state API (token auth: the token goes in the Authorization header)."""
    headers = (
        {"Authorization": f"Bearer {Path(cluster['env']['RAY_AUTH_TOKEN_PATH']).read_text().strip()}"} if token else {}
    )
    req = urllib.request.Request(cluster["dashboard"] + path, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["data"]["result"]["result"]


TINY_SWEEP = """
name: two_node
config:
  model: {tokenizer: bytes, n_layers: 1, d_model: 32, n_heads: 2, context_length: 32}
  data: {source: generated, max_chars: 200000, num_proc: 1}
  train: {max_steps: 30, batch_size: 2, eval_interval: 2, log_interval: 2, eval_batches: 1, warmup_steps: 1}
grid:
  model.ffn: [gelu, swiglu]
control: gelu
seeds: [0]
max_failures: 1
log_checkpoint: true
"""


def _manifests(*roots: Path) -> dict[Path, dict]:
    """Every prepared-data manifest under these cache roots / stores."""
    return {
        m: json.loads(m.read_text())
        for root in roots
        for m in sorted(root.glob("**/manifest.json"))
        if m.parent.name != "checkpoint"
    }


@pytest.mark.slow
def test_two_node_cluster_runs_a_sweep(tmp_path, mlflow_server, shared_data):
    """`ray job submit` of a small sweep to a real two-node cluster, logging over HTTP to a real MLflow
    server started as cluster/l40.yaml starts it. The corpus is tokenized once for the cluster and
    copied to each node. Mid-trial the worker node is killed, as a spot preemption would: its trial
    resumes from its last checkpoint on the head and finishes. Everything is read back through the
    REST API."""
    max_steps = 30
    spec = yaml.safe_load(TINY_SWEEP)
    spec["eval"] = {"tasks": ["blimp"], "limit": 2, "data_dir": str(shared_data / "benchmarks")}
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    exp_dir = tmp_path / "sweep_runs" / "two_node"
    log = tmp_path / "job.log"
    t0 = time.monotonic()
    with two_node_cluster({"MLFLOW_TRACKING_URI": mlflow_server.uri}) as cluster:
        nodes = _state_api(cluster, "/api/v0/nodes")
        assert sum(n["state"] == "ALIVE" for n in nodes) == 2
        with pytest.raises(urllib.error.HTTPError, match="401"):  # token auth is really on
            _state_api(cluster, "/api/v0/nodes", token=False)
        entry = [VENV_PYTHON, "-m", "stlm.sweep", str(sweep_file), "--experiment-dir", str(exp_dir)]
        job = subprocess.Popen(
            [cluster["ray"], "job", "submit", "--address", cluster["dashboard"], "--", *entry],
            env=dict(cluster["env"], STLM_QUIET="1"),
            cwd=tmp_path,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            # a spot preemption: once the trial training on the worker node has a checkpoint that Ray Train
            # registered, and steps to go, the worker node (its raylet, agents and the Ray Train worker on it)
            # is killed; that trial must resume on the head. The trial is found by its Train worker's working
            # directory, which Ray Train names after the run. (Waiting for both trials' checkpoints instead
            # could catch the worker's trial already finished, its worker still tearing down: nothing resumed.)
            def registered_step(run: Path) -> int:
                try:
                    snap = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
                    return step_of(snap["latest_checkpoint_result"]["checkpoint_dir_name"]) or 0
                except (OSError, ValueError, KeyError, TypeError):
                    return 0

            def training_on_worker() -> list[str]:
                names = set()
                for pid in _node_pids(cluster["homes"]["worker"]):
                    if b"RayTrainWorker" in _cmdline(pid):
                        with contextlib.suppress(OSError):
                            names.add(Path(os.readlink(f"/proc/{pid}/cwd")).name)
                return [n for n in names if 0 < registered_step(exp_dir / "train" / n) <= max_steps - 10]

            _wait_until(
                "a registered checkpoint of the trial training on the worker node",
                training_on_worker,
                300,
                log,
                job,
            )
            lost_node = _node_pids(cluster["homes"]["worker"])
            for pid in lost_node:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            kill_s = time.monotonic() - t0
            rc = job.wait(timeout=420)
        finally:
            _kill_group(job)
        job_s = time.monotonic() - t0
        out = log.read_text()
        assert rc == 0 and "succeeded" in out, f"job failed:\n{out[-6000:]}"
        # each trial's Ray Train worker needs the one CPU of a node: the two ran on different nodes
        actors = _state_api(cluster, "/api/v0/actors?detail=1&limit=10000")
        train_nodes = {a["node_id"] for a in actors if a.get("class_name") == "RayTrainWorker"}
        assert len(train_nodes) == 2, f"Ray Train workers ran on {len(train_nodes)} node(s), expected both"
        # data: one tokenization for the cluster (the driver's, on the head), copied to the worker node
        manifests = _manifests(exp_dir / "data", *(h / ".cache" / "stlm" for h in cluster["homes"].values()))
    print(
        f"cluster start {cluster['timings']}, worker node killed at {kill_s:.1f}s ({len(lost_node)} processes), "
        f"job done at {job_s:.1f}s; data: {[str(p) for p in manifests]}"
    )
    builds = {m["build_id"] for m in manifests.values()}
    assert len(builds) == 1, f"the corpus was tokenized {len(builds)} times: {list(manifests)}"
    homes = {h for p in manifests for h in cluster["homes"].values() if h in p.parents}
    assert homes == set(cluster["homes"].values()), list(manifests)  # one copy on each node, same build

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)  # the server's REST API
    info = json.loads((exp_dir / "sweep.json").read_text())
    assert info["tracking_uri"] == mlflow_server.uri
    parent = client.get_run(info["parent_run_id"])
    assert parent.data.tags["stlm.sweep"] == "two_node" and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.arms"] == "gelu,swiglu"
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "report"} <= parent_files
    assert {"report/report.md", "report/report.html"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "report")
    }
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["stlm.arm"] for c in children) == ["gelu", "swiglu"]
    # the lost node's trial went on from its last checkpoint (not from step 0), on the head
    resumed = {
        c.data.tags["stlm.trial_id"]: max(
            r.get("resumed_from_step", 0) for r in _tune_results(exp_dir, c.data.tags["stlm.trial_id"])
        )
        for c in children
    }
    assert sorted(v > 0 for v in resumed.values()) == [False, True], resumed
    for c in children:
        tid = c.data.tags["stlm.trial_id"]
        assert c.data.tags["stlm.status"] == "finished" and c.info.status == "FINISHED", c.data.tags
        assert c.data.params["model.ffn"] == c.data.tags["stlm.arm"]
        # it learned: bytes are the tokens, so a uniform prediction scores log2(257) = 8.0 bits per byte (an
        # untrained model: 7.9 at step 2); after 30 steps these score ~6.9, and less than at their first evaluation
        bpb = [m.value for m in sorted(client.get_metric_history(c.info.run_id, "val_bpb"), key=lambda m: m.step)]
        assert bpb[-1] < 0.9 * math.log2(257) and bpb[-1] < bpb[0], bpb
        lost, duplicated = _lost_and_duplicated(client, c.info.run_id, _tune_results(exp_dir, tid))
        assert not lost and duplicated == 0, (tid, sorted(lost)[:20], duplicated)
        # each validation step logged exactly once, the lost node's trial included
        assert _points(client, c.info.run_id)["val_bpb"] == list(range(2, max_steps + 1, 2))
        files = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert {"config.yaml", "checkpoint"} <= files, files
        assert "checkpoint/model.pt" in {a.path for a in client.list_artifacts(c.info.run_id, "checkpoint")}
        assert 0.0 <= c.data.metrics["eval/blimp/acc"] <= 1.0
        assert "eval" in files
        item_files = client.list_artifacts(c.info.run_id, "eval")
        assert item_files and all(a.file_size > 0 for a in item_files)


# --------------------------------------------------------------------------- a real MLflow tracking server


def _l40_mlflow_server_argv(db: Path, artifacts: Path, port: int) -> tuple[dict[str, str], list[str]]:
    """cluster/l40.yaml's `mlflow server` command on its head, with this machine's paths and address:
    (environment it sets, argv). Every other flag is kept as the cluster passes it."""
    config = _prepared(REPO / "cluster" / "l40.yaml")
    command = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    words = shlex.split(next(part for part in command.split(";") if "mlflow server" in part))
    words = words[: words.index(">")] if ">" in words else words  # the log redirection and the trailing &
    env = {}
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words[0] == "nohup":
        words.pop(0)
    assert words[0].endswith("/mlflow") and words[1] == "server", words
    local = {
        "--backend-store-uri": f"sqlite:///{db}",
        "--artifacts-destination": str(artifacts),
        "--host": "127.0.0.1",
        "--port": str(port),
    }
    argv = [str(Path(VENV_PYTHON).parent / "mlflow"), "server"]
    rest = words[2:]
    assert set(local) <= set(rest), f"l40.yaml's mlflow server lacks {set(local) - set(rest)}"
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag in local:
            argv += [flag, local[flag]]
            i += 2
        else:
            argv.append(flag)
            i += 1
    return env, argv


class MlflowServer:
    """A real `mlflow server` (SQLite backend, proxied artifacts on local disk) on 127.0.0.1, started
    as cluster/l40.yaml starts it; kill() takes down every process of it, as a crash of the head's
    server would, and start() brings it back on the same port and database."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env, self.argv = _l40_mlflow_server_argv(root / "mlflow.db", root / "artifacts", self.port)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 120) -> float:
        t0 = time.monotonic()
        self.starts += 1
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.root,
            env=dict(os.environ, **self.env),
            stdout=open(self.root / f"server-{self.starts}.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() - t0 < timeout:
            assert self.proc.poll() is None, (self.root / f"server-{self.starts}.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"mlflow server not up after {timeout}s")

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 10  # its workers are in the same session
        while time.monotonic() < deadline and live_pids("session", self.proc.pid):
            time.sleep(0.1)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _points(client, run_id: str) -> dict[str, list[int]]:
    """metric key -> the steps MLflow holds for it (each entry, duplicates included)."""
    run = client.get_run(run_id)
    return {key: [m.step for m in client.get_metric_history(run_id, key)] for key in run.data.metrics}


def _tune_results(exp_dir: Path, trial_id: str) -> list[dict]:
    """Every result the driver's Tune loop received for a trial (Tune's own result.json)."""
    path = exp_dir / "tune" / trial_id / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _lost_and_duplicated(client, run_id: str, results: list[dict]) -> tuple[set, int]:
    """(the (metric, step) points Tune received but MLflow lacks, the points MLflow holds twice)."""
    from stlm.sweep.tracking.callback import TUNE_KEYS

    expected = {
        (k, int(r["step"]))
        for r in results
        if "step" in r
        for k, v in r.items()
        if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    held = _points(client, run_id)
    logged = {(k, s) for k, steps in held.items() for s in steps}
    return expected - logged, sum(len(steps) - len(set(steps)) for steps in held.values())


OUTAGE_SWEEP = """
name: outage
config:
  model: {tokenizer: bytes, n_layers: 1, d_model: 32, n_heads: 2, context_length: 32}
  data: {source: generated, max_chars: 200000, num_proc: 1}
  train: {max_steps: MAX_STEPS, batch_size: 2, eval_interval: 2, log_interval: 2, eval_batches: 1, warmup_steps: 1}
arms: [{name: base, set: {}}]
control: base
seeds: [0]
"""


def _sweep_process(args: list[str], cwd: Path, log: Path, **env) -> subprocess.Popen:
    env = dict(os.environ, STLM_QUIET="1", RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"), **env)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [VENV_PYTHON, "-m", "stlm.sweep", *args],
        cwd=cwd,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_until(what: str, cond, timeout: float, log: Path, p: subprocess.Popen | None = None) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        if p is not None and p.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout}s (or the sweep ended):\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_sweep_outlives_its_tracking_server(tmp_path, mlflow_server):
    """The MLflow server dies for good mid-sweep: the sweep stops after STLM_MLFLOW_OUTAGE_S with a
    clear message, and --resume writes what was kept. Killed mid-sweep again and back 30 s later, it
    stalls nothing: the trial trains and reports all along. MLflow ends with every point Tune
    received, none twice, and the report is written."""
    max_steps, limit_s = 140, 15
    sweep_file = tmp_path / "outage.yaml"
    sweep_file.write_text(OUTAGE_SWEEP.replace("MAX_STEPS", str(max_steps)))
    exp_dir = tmp_path / "sweep_runs" / "outage"
    args = [str(sweep_file), "--tracking-uri", mlflow_server.uri, "--experiment-dir", str(exp_dir)]
    log1, log2 = tmp_path / "first.log", tmp_path / "resume.log"

    def received():
        return (
            [r for t in sorted((exp_dir / "tune").glob("*")) if t.is_dir() for r in _tune_results(exp_dir, t.name)]
            if (exp_dir / "tune").is_dir()
            else []
        )

    def ledger_step():
        return (
            max(
                [
                    t.get("last_step", -1)
                    for t in json.loads((exp_dir / "mlflow_state.json").read_text()).get("trials", {}).values()
                ]
                or [-1]
            )
            if (exp_dir / "mlflow_state.json").is_file()
            else -1
        )

    # 1. the server dies for good after the first result: the sweep stops by itself, in bounded time
    # the product's 0.5 s Train poll (the test session polls at 0.1 s): the trial must outlast both outages
    slow_poll = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    p = _sweep_process(args, tmp_path, log1, STLM_MLFLOW_OUTAGE_S=str(limit_s), **slow_poll)
    try:
        _wait_until("a first result logged", lambda: ledger_step() >= 2, 240, log1, p)
        mlflow_server.kill()
        t_kill = time.monotonic()
        rc = p.wait(timeout=limit_s + 120)
        stop_s = time.monotonic() - t_kill
    finally:
        _kill_group(p)
    out = log1.read_text()
    assert rc == 2, out[-4000:]
    assert "Stopped: the MLflow tracking server at " + mlflow_server.uri in out, out[-3000:]
    assert "--resume" in out and "Traceback" not in out, out[-3000:]
    step_a = max(r["step"] for r in received())

    # 2. the server is back: --resume writes what was kept; then an outage of 30 s mid-trial
    mlflow_server.start()
    p = _sweep_process([*args, "--resume"], tmp_path, log2, **slow_poll)
    try:
        _wait_until("a new result logged after the resume", lambda: ledger_step() > step_a, 240, log2, p)
        mlflow_server.kill()
        at_kill = len(received())
        time.sleep(30)
        during = len(received()) - at_kill  # results the driver's Tune loop took in meanwhile
        restart_s = mlflow_server.start()
        rc = p.wait(timeout=300)
    finally:
        _kill_group(p)
    out = log2.read_text()
    print(
        f"outage: stopped {stop_s:.0f}s after the server died for good (limit {limit_s}s), at step {step_a}; "
        f"{during} results reached the driver during a 30 s outage; server back {restart_s:.1f}s after that"
    )
    assert rc == 0, out[-4000:]
    assert during >= 5, f"the Tune loop stalled during the outage ({during} results in 30 s):\n{out[-3000:]}"
    assert (exp_dir / "report" / "report.md").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)  # read back through the server's REST API
    info = json.loads((exp_dir / "sweep.json").read_text())
    [run] = client.search_runs(
        [client.get_run(info["parent_run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'",
    )
    assert run.data.tags["stlm.status"] == "finished" and run.info.status == "FINISHED"
    assert client.get_run(info["parent_run_id"]).info.status == "FINISHED"
    lost, duplicated = _lost_and_duplicated(
        client, run.info.run_id, _tune_results(exp_dir, run.data.tags["stlm.trial_id"])
    )
    print(f"outage: lost {len(lost)} points, duplicated {duplicated}")
    assert not lost and duplicated == 0, (sorted(lost)[:20], duplicated)
    assert _points(client, run.info.run_id)["val_bpb"] == list(range(2, max_steps + 1, 2))
    assert "report" in {a.path for a in client.list_artifacts(info["parent_run_id"])}
