"""An experiment directory in an object store (s3://bucket/prefix), against a real S3-compatible server
(moto's `moto_server`, a separate process on 127.0.0.1): pre-flight, the driver's mirror, and a
two-node sweep whose driver is killed and resumed from the bucket on a machine without its files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import test_cluster
import yaml
from test_cluster import TINY_SWEEP, VENV_PYTHON, _free_port, _lost_and_duplicated, _points, two_node_cluster
from test_sweep_e2e import _kill_group

BUCKET = "stlm-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


mlflow_server = test_cluster.mlflow_server  # the fixture: a real `mlflow server` process, as l40.yaml starts it


class S3Server:
    """`moto_server` on a free port; `env` is what a process needs to use it through pyarrow or boto3."""

    def __init__(self, root: Path):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}
        self.log = root / "moto.log"
        self.proc = subprocess.Popen(
            [str(Path(VENV_PYTHON).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=open(self.log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        t0 = time.monotonic()
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                break
            except OSError:
                assert time.monotonic() - t0 < 60, f"moto_server not up after 60 s:\n{self.log.read_text()[-2000:]}"
                time.sleep(0.2)
        self.client().create_bucket(Bucket=BUCKET)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def keys(self, prefix: str) -> dict[str, int]:
        """key -> size of every object under prefix (through the S3 API)."""
        out, token = {}, None
        while True:
            kw = {"ContinuationToken": token} if token else {}
            page = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix, **kw)
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def stop(self) -> None:
        _kill_group(self.proc)


@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    server = S3Server(tmp_path)
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    try:
        yield server
    finally:
        server.stop()


def _cli(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VENV_PYTHON, "-m", "stlm.sweep", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, STLM_QUIET="1", **env),
    )


def test_an_unreachable_bucket_fails_preflight_at_once(tmp_path):
    """Nothing answers at the endpoint: pre-flight names the URI and the endpoint in one paragraph
    (exit 2) within seconds, before anything is written or Ray is started."""
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(TINY_SWEEP)
    uri = f"s3://{BUCKET}/sweeps/two_node"
    dead = f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    r = _cli([str(sweep_file), "--experiment-dir", uri], tmp_path, **CREDENTIALS, AWS_ENDPOINT_URL=dead)
    wall = time.monotonic() - t0
    out = r.stdout + r.stderr
    print(f"unreachable bucket refused in {wall:.1f}s")
    assert r.returncode == 2, out[-3000:]
    assert uri in out and dead in out and "AWS_ENDPOINT_URL" in out and "Traceback" not in out, out[-3000:]
    assert wall < 30, wall  # the probe gives up after 10 s; the rest is Python and torch importing
    assert not (tmp_path / "sweep_runs").exists()


def test_a_query_string_uri_is_refused(tmp_path):
    from stlm.errors import StlmError
    from stlm.sweep.resilience import storage

    with pytest.raises(StlmError, match="AWS_ENDPOINT_URL"):
        storage.open(f"s3://{BUCKET}/x?endpoint_override=127.0.0.1:9000")
    with pytest.raises(StlmError, match="prefix inside the bucket"):
        storage.open(f"s3://{BUCKET}")
    assert not storage.open(tmp_path).remote and storage.open(tmp_path).local == tmp_path.resolve()


def test_the_mirror_follows_the_last_session(s3_server, tmp_path, monkeypatch):
    """--resume keeps this machine's mirror when this machine ran the last session (its newest writes
    may not be uploaded yet) and takes the bucket's copy otherwise; a missing bucket is named."""
    from stlm.errors import StlmError
    from stlm.sweep.resilience import storage
    from stlm.sweep.run import preflight

    uri = f"s3://{BUCKET}/sweeps/mirror"
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"

    def session(cache: Path, resume: bool) -> storage.Storage:
        monkeypatch.setenv("STLM_CACHE", str(cache))
        st = storage.open(uri)
        st.start_session(resume=resume)
        return st

    st = session(a, resume=False)
    (st.local / "sweep.json").write_text('{"by": "a"}')
    st.upload("sweep.json")
    (st.local / "sweep.json").write_text('{"by": "a, not uploaded yet"}')  # then A's driver is killed
    assert session(a, resume=True).local.joinpath("sweep.json").read_text() == '{"by": "a, not uploaded yet"}'
    assert s3_server.get("sweeps/mirror/sweep.json") == b'{"by": "a, not uploaded yet"}'  # and uploaded
    st = session(b, resume=True)  # another machine: the bucket's copy
    assert st.local.joinpath("sweep.json").read_text() == '{"by": "a, not uploaded yet"}'
    (st.local / "sweep.json").write_text('{"by": "b"}')
    st.upload("sweep.json")
    assert session(a, resume=True).local.joinpath("sweep.json").read_text() == '{"by": "b"}'  # A's copy is stale
    storage._ACTIVE.clear()

    # the lock object: a live driver on another host (fresh heartbeat) refuses; a stale one is taken over
    from stlm.sweep.resilience.lock import STALE_S, ObjectLock

    other = {"host": "other-host", "pid": 4242, "started": "earlier", "command": "python -m stlm.sweep x"}
    s3_server.client().put_object(
        Bucket=BUCKET, Key="sweeps/mirror.lock", Body=json.dumps({**other, "heartbeat": time.time()}).encode()
    )
    with pytest.raises(StlmError, match=r"in use by another sweep driver: pid 4242 on host 'other-host'"):
        ObjectLock(storage.open(uri)).acquire()
    s3_server.client().put_object(
        Bucket=BUCKET,
        Key="sweeps/mirror.lock",
        Body=json.dumps({**other, "heartbeat": time.time() - STALE_S - 1}).encode(),
    )
    lock = ObjectLock(storage.open(uri)).acquire()
    assert json.loads(s3_server.get("sweeps/mirror.lock"))["pid"] == os.getpid()
    lock.release()
    assert s3_server.get("sweeps/mirror.lock") == b""

    preflight.check_storage(storage.open(uri))  # reachable and writable: no problem
    with pytest.raises(StlmError, match=r"s3://no-such-bucket/x .*the bucket 'no-such-bucket' does not exist"):
        preflight.check_storage(storage.open("s3://no-such-bucket/x"))
    assert not [k for k in s3_server.keys("sweeps/") if ".stlm-probe" in k]  # the probe leaves nothing


def test_stlm_eval_finds_a_checkpoint_in_the_bucket(s3_server, tmp_path):
    """A sweep's trial run tags its checkpoints' s3:// URI; `stlm eval RUN_ID` downloads them."""
    from mlflow.tracking import MlflowClient

    from stlm.eval.__main__ import resolve_run

    for name in ("step_000010-0a1b2c3d/model.pt", "step_000010-0a1b2c3d/meta.json", "checkpoint_manager_snapshot.json"):
        s3_server.client().put_object(Bucket=BUCKET, Key=f"sweeps/e/train/t1/{name}", Body=b"x")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("e"), tags={"stlm.checkpoint": f"s3://{BUCKET}/sweeps/e/train/t1"})
    local = resolve_run(run.info.run_id, uri)
    assert (local / "step_000010-0a1b2c3d" / "model.pt").read_bytes() == b"x"
    assert resolve_run(run.info.run_id, uri) == local  # downloaded once


SWEEP_STEPS = 40


def _bucket_ledger(s3: S3Server, prefix: str) -> dict:
    try:
        return json.loads(s3.get(f"{prefix}/mlflow_state.json"))
    except Exception:  # noqa: BLE001 - not uploaded yet
        return {}


@pytest.mark.slow
def test_a_two_node_sweep_lives_in_the_bucket_and_resumes_from_it(tmp_path, mlflow_server, s3_server, shared_data):
    """A two-node sweep with --experiment-dir s3://...: its driver is killed (-9) mid-trial, then resumed
    by a driver with an empty HOME (another machine: no mirror) from what the bucket holds. Checkpoints,
    Tune's state, sweep.json and the report are in the bucket; every trial finished; MLflow holds every
    point Tune received, none twice."""
    spec = yaml.safe_load(TINY_SWEEP)
    spec["config"]["train"]["max_steps"] = SWEEP_STEPS
    # eval items are written on the worker node, uploaded, logged to MLflow by the driver
    spec["eval"] = {"tasks": ["blimp"], "limit": 2, "data_dir": str(shared_data / "benchmarks")}
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    prefix = "sweeps/two_node"
    uri = f"s3://{BUCKET}/{prefix}"
    t0 = time.monotonic()
    with two_node_cluster({"MLFLOW_TRACKING_URI": mlflow_server.uri, **s3_server.env}) as cluster:
        env = dict(cluster["env"], STLM_QUIET="1", **s3_server.env)
        args = [
            VENV_PYTHON,
            "-m",
            "stlm.sweep",
            str(sweep_file),
            "--experiment-dir",
            uri,
            "--address",
            f"127.0.0.1:{cluster['gcs']}",
        ]
        log1, log2 = tmp_path / "first.log", tmp_path / "resume.log"

        def running_far_enough() -> bool:
            trials = _bucket_ledger(s3_server, prefix).get("trials", {})
            keys = s3_server.keys(f"{prefix}/")
            return (
                len(trials) == 2
                and all(t["last_step"] >= 10 for t in trials.values())
                and any("/tune/experiment_state-" in k for k in keys)
                and sum(1 for k in keys if "/train/" in k and k.endswith("/model.pt")) >= 2
            )

        p = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=open(log1, "w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 300
            while not running_far_enough():
                assert p.poll() is None and time.monotonic() < deadline, log1.read_text()[-5000:]
                time.sleep(1)
            t_kill = time.monotonic()
            os.killpg(p.pid, signal.SIGKILL)  # the driver dies at once: no state saved, no lock released
        finally:
            _kill_group(p)
        steps_at_kill = {tid: t["last_step"] for tid, t in _bucket_ledger(s3_server, prefix)["trials"].items()}

        fresh_home = tmp_path / "another-machine"
        fresh_home.mkdir()
        p = subprocess.Popen(
            [*args, "--resume"],
            cwd=tmp_path,
            env=dict(env, HOME=str(fresh_home)),
            stdout=open(log2, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = p.wait(timeout=400)
        finally:
            _kill_group(p)
        resume_s = time.monotonic() - t_kill
        out = log2.read_text()
        assert rc == 0, out[-6000:]
    total_s = time.monotonic() - t0

    keys = s3_server.keys(f"{prefix}/")
    info = json.loads(s3_server.get(f"{prefix}/sweep.json"))
    assert info["experiment_dir"] == uri and info["resumed"] is True
    assert [r["status"] for r in info["trials"]] == ["finished", "finished"], info["trials"]
    assert any(k.startswith(f"{prefix}/tune/experiment_state-") for k in keys)
    assert {f"{prefix}/report/report.md", f"{prefix}/report/report.html", f"{prefix}/plan.pkl"} <= set(keys)
    assert not s3_server.get(f"{prefix}.lock").strip()  # released at the end
    tids = [r["trial_id"] for r in info["trials"]]
    for tid in tids:
        ckpts = {k.split("/")[4] for k in keys if k.startswith(f"{prefix}/train/{tid}/step_")}
        assert 1 <= len(ckpts) <= 2 and any(c.startswith(f"step_{SWEEP_STEPS:06d}") for c in ckpts), ckpts
        assert f"{prefix}/trials/{tid}/config.yaml" in keys
        assert keys.get(f"{prefix}/trials/{tid}/eval/items.jsonl", 0) > 0, sorted(keys)
    assert any(k.startswith(f"{prefix}/data/") and k.endswith("/manifest.json") for k in keys)
    total_bytes = sum(keys.values())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["stlm.trial_id"] for c in children) == sorted(tids)
    resumed_from = {}
    for c in children:
        tid = c.data.tags["stlm.trial_id"]
        assert c.info.status == "FINISHED" and c.data.tags["stlm.checkpoint"] == f"{uri}/train/{tid}", c.data.tags
        results = [
            json.loads(line)
            for line in s3_server.get(f"{prefix}/tune/{tid}/result.json").decode().splitlines()
            if line.strip()
        ]
        lost, duplicated = _lost_and_duplicated(client, c.info.run_id, results)
        assert not lost and duplicated == 0, (tid, sorted(lost)[:20], duplicated)
        assert _points(client, c.info.run_id)["val_bpb"] == list(range(2, SWEEP_STEPS + 1, 2))
        assert "checkpoint/model.pt" in {a.path for a in client.list_artifacts(c.info.run_id, "checkpoint")}
        assert 0.0 <= c.data.metrics["eval/blimp/acc"] <= 1.0
        assert [a.path for a in client.list_artifacts(c.info.run_id, "eval")] == ["eval/items.jsonl"]
        resumed_from[tid] = int(c.data.metrics.get("resumed_from_step", -1))
    print(
        f"s3 sweep: {total_s:.0f}s in all; resumed from the bucket and finished {resume_s:.0f}s after the kill; "
        f"steps at the kill {steps_at_kill}, resumed from {resumed_from}; {len(keys)} objects, "
        f"{total_bytes / 1e6:.1f} MB in the bucket"
    )
    assert all(s > 0 for s in resumed_from.values()), resumed_from  # from the bucket's checkpoints, not afresh
