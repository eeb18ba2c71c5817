"""The quickstart sweep, reduced, through Ray Tune + Ray Train + Optuna + MLflow for real, run once for the module:
started, stopped with SIGTERM as soon as the first results are in (it must end within 15 s with its parent run
KILLED), continued with --resume. Then two readers of what it left: MLflow's sqlite store (every trial finished
exactly once, with its config, params, an unbroken val_bpb history and the eval metrics; the parent run's
description through the interruption and the end), and the MLflow UI (`mlflow server` on that store, over REST
and in headless Chromium: the runs table of the trials and the answer on the parent run's page).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import time
import urllib.request
from types import SimpleNamespace

import pytest
import yaml
from test_sweep_e2e import (
    MAX_STEPS,
    OVERRIDES,
    REPO,
    _child_runs,
    _kill_group,
    _start,
    _wait_for_step,
    _wait_group_empty,
)

from stlm.fmt import ci, stat
from stlm.tracking import EXPERIMENT_KIND, MODEL_TRAINING, NOTE, UI_DEFAULT, VIEW_PREFIX

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, shared_data):
    """The quickstart, reduced (2 arms x 2 paired seeds x 1 Optuna sample of lr = 4 trials): stopped by SIGTERM at
    its first results, then resumed to the end. What each stage left, for the tests to judge."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("quickstart")
    spec = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())
    spec["base"] = str(REPO / "configs" / "quickstart.yaml")
    spec["search"]["samples"] = 1
    spec["eval"] = {"tasks": ["blimp"], "limit": 4, "data_dir": str(shared_data / "benchmarks")}
    sweep_file = tmp_path / "quick.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    exp_dir = tmp_path / "sweep_runs" / "quickstart"
    args = [str(sweep_file), *OVERRIDES]
    run = SimpleNamespace(tmp=tmp_path, exp_dir=exp_dir)

    # 1. start, and stop the driver with SIGTERM (what `kill` and schedulers send) once the first results are logged
    p = _start(args, tmp_path, tmp_path / "first.log")
    try:
        _wait_for_step(p, exp_dir, 10, tmp_path / "first.log")
        os.kill(p.pid, signal.SIGTERM)  # the driver alone, not its process group
        t_term = time.monotonic()
        run.stop_rc = p.wait(timeout=60)
        run.stop_s = time.monotonic() - t_term
        run.left = _wait_group_empty(p.pid, 20)  # the local Ray it started goes with it
    finally:
        _kill_group(p)
    run.first_out = (tmp_path / "first.log").read_text()
    info = json.loads((exp_dir / "sweep.json").read_text())
    stopped = MlflowClient(tracking_uri=info["tracking_uri"]).get_run(info["parent_run_id"])
    run.stopped_status, run.stopped_note = stopped.info.status, stopped.data.tags.get(NOTE, "")
    run.before = json.loads((exp_dir / "mlflow_state.json").read_text())["trials"]

    # 2. resume: finished trials stay, unfinished continue from their Train checkpoints
    p = _start([*args, "--resume"], tmp_path, tmp_path / "resume.log")
    try:
        run.resume_rc = p.wait(timeout=420)
    finally:
        _kill_group(p)
    run.resume_out = (tmp_path / "resume.log").read_text()
    run.info = json.loads((exp_dir / "sweep.json").read_text())
    return run


def test_quickstart_sweep_resume_and_mlflow(quickstart):
    q = quickstart
    # 1. SIGTERM: the driver ends within 15 s, says how to continue, leaves its parent run KILLED and says so on it
    assert not q.left, f"processes left behind by the stopped driver: {q.left}"
    print(f"SIGTERM: the driver exited {q.stop_s:.1f}s after the signal, status {q.stop_rc}")
    assert q.stop_s < 15 and q.stop_rc == 130, (q.stop_s, q.stop_rc, q.first_out[-3000:])
    assert "--resume" in q.first_out and "Traceback" not in q.first_out, q.first_out[-3000:]
    assert q.stopped_status == "KILLED"
    assert "**Interrupted** with" in q.stopped_note and "--resume" in q.stopped_note, q.stopped_note

    # 2. the resume ran to the end
    assert q.resume_rc == 0, q.resume_out[-4000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in q.resume_out

    # 3. read MLflow back
    info, tmp_path = q.info, q.tmp
    assert info["tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert (tmp_path / "mlflow.db").is_file()
    assert info["arms"] == ["rope", "learned"] and info["control_arm"] == "rope"
    client, children = _child_runs(q.exp_dir)
    parent = client.get_run(info["parent_run_id"])
    assert parent.data.tags["stlm.sweep"] == "quickstart" and parent.info.status == "FINISHED"
    assert len(children) == 4, [c.data.tags.get("stlm.trial_id") for c in children]
    trial_ids = [c.data.tags["stlm.trial_id"] for c in children]
    assert len(set(trial_ids)) == 4  # no duplicate runs after the resume
    assert set(q.before) <= set(trial_ids)  # the runs made before the kill were reused
    cells = sorted((c.data.tags["stlm.arm"], c.data.tags["stlm.seed"]) for c in children)
    assert cells == [("learned", "0"), ("learned", "1"), ("rope", "0"), ("rope", "1")]  # every cell ran
    lrs = {float(c.data.params["train.lr"]) for c in children}
    assert len(lrs) == 4 and all(1e-3 <= lr <= 1e-2 for lr in lrs)  # Optuna sampled lr per trial
    for c in children:
        tags, params = c.data.tags, c.data.params
        assert tags["stlm.status"] == "finished" and c.info.status == "FINISHED", tags
        assert tags["stlm.git_commit"]
        assert params["model.positional"] == tags["stlm.arm"] == params["sweep.arm"]
        assert params["train.seed"] == tags["stlm.seed"] == params["sweep.seed"]
        # the cell as the runs table shows and groups it: size (the budget) and search sample, params and tags
        assert (
            params["sweep.size"] == tags["stlm.size"] == "1M" and params["sweep.sample"] == tags["stlm.sample"] == "0"
        )
        assert int(params["params.total"]) == pytest.approx(1_000_000, rel=0.02)
        assert int(params["flops_per_token"]) > 0
        hist = client.get_metric_history(c.info.run_id, "val_bpb")
        steps = [m.step for m in hist]
        assert sorted(steps) == [10, 20, 30], steps  # one point per eval, none repeated by the resume
        # it learned: an untrained model predicts ~uniformly (val_loss ~ ln V nats per token; 7.62 here), these
        # end near 6.0 (measured 5.8-6.0 at lr 1e-3..1e-2), and val_bpb falls from the first evaluation to the last
        loss = max(client.get_metric_history(c.info.run_id, "val_loss"), key=lambda m: m.step).value
        assert loss < 0.9 * math.log(int(params["model.vocab_size"])), loss
        bpb = [m.value for m in sorted(hist, key=lambda m: m.step)]
        assert bpb[-1] < bpb[0], bpb
        assert [m.step for m in client.get_metric_history(c.info.run_id, "step")].count(MAX_STEPS) == 1
        cut = q.before.get(tags["stlm.trial_id"], {}).get("last_step", -1)
        if 10 <= cut < MAX_STEPS:  # interrupted mid-run: continued from its Ray Train checkpoint, not step 0
            resumed = [m.value for m in client.get_metric_history(c.info.run_id, "resumed_from_step")]
            assert max(resumed) >= cut, (tags["stlm.trial_id"], cut, resumed)
        artifacts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert "config.yaml" in artifacts
        assert 0.0 <= c.data.metrics["eval/blimp/acc"] <= 1.0
        assert "eval" in artifacts  # per-item JSONL
        # its page says its cell, its final metric and its eval score
        assert f"Final val_bpb: **{stat(c.data.metrics['val_bpb'])}** at step 30" in tags[NOTE]
        assert f"blimp {c.data.metrics['eval/blimp/acc']:.3f}" in tags[NOTE]
    # the resume's end rewrote the interrupted note with the answer, from every trial
    note = parent.data.tags[NOTE]
    assert "**Interrupted**" not in note and "**Answer.** `learned` − `rope`" in note and "from 4 finished" in note


def _rest(base: str, path: str, body: dict | None = None) -> dict:
    """One call to a tracking server's REST API (GET with a query string, or POST with a JSON body)."""
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _tags(entity: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in entity.get("tags", [])}


def _printed_link(out: str, label: str, base: str) -> str:
    """A link the sweep printed at its end, pointed at `base` (the test's server) instead of `mlflow ui`'s default."""
    m = re.search(rf"{re.escape(label)}\s+(http\S+)", out)
    assert m, f"the sweep printed no {label!r} link:\n{out[-2000:]}"
    return m.group(1).replace(UI_DEFAULT, base)


def test_the_mlflow_ui_shows_the_trials_and_the_answer(quickstart, tmp_path):
    """`mlflow server` on the sweep's store, read over REST and in headless Chromium as a person would: the link the
    sweep printed opens the experiment as a model-training one on its runs table, one row per trial with the numbers
    sweep.json holds; the parent run's page shows the summary table with sweep.json's numbers, and every plot.
    STLM_UI_SCREENSHOT=FILE also keeps the screenshot of the parent run's page there (the README's)."""
    from browser import Chromium, chromium_binary
    from mlflow.tracking import MlflowClient
    from test_cluster import MlflowServer  # the server as cluster/l40.yaml starts it

    chromium_binary()  # none: fail now, with how to install it
    q = quickstart
    assert q.resume_rc == 0, q.resume_out[-3000:]
    info, parent_id = q.info, q.info["parent_run_id"]
    stored = MlflowClient(tracking_uri=info["tracking_uri"])
    exp_id = stored.get_run(parent_id).info.experiment_id
    server = MlflowServer(q.tmp)  # its database is the sweep's store, <tmp>/mlflow.db
    server.start()
    try:
        # over REST: the experiment's kind and saved view, the parent's description as the store holds it
        exp = _tags(_rest(server.uri, f"experiments/get?experiment_id={exp_id}")["experiment"])
        assert exp[EXPERIMENT_KIND] == MODEL_TRAINING and f"{VIEW_PREFIX}stlm-sweep-{parent_id}" in exp
        parent = _tags(_rest(server.uri, f"runs/get?run_id={parent_id}")["run"]["data"])
        assert parent[NOTE] == stored.get_run(parent_id).data.tags[NOTE]
        found = _rest(
            server.uri,
            "runs/search",
            {"experiment_ids": [exp_id], "filter": f"tags.mlflow.parentRunId = '{parent_id}'"},
        )["runs"]
        cells = sorted(p["value"] for r in found for p in r["data"]["params"] if p["key"] == "sweep.arm")
        assert cells == ["learned", "learned", "rope", "rope"]

        trials = [r for r in info["trials"] if r["status"] == "finished"]
        names = [stored.get_run(r["run_id"]).info.run_name for r in trials]
        with Chromium(tmp_path, width=1300, height=1500) as page:
            # the trials link: the runs table (not the GenAI overview), the sweep's view, one row per trial
            text = page.open(_printed_link(q.resume_out, "every trial, best first:", server.uri), until=names)
            assert "4 matching runs" in text and "sweep quickstart: trials" in text
            # as a model-training experiment: MLflow's Model training navigation (Runs, Models, Model registry), not
            # the GenAI one (Overview, Observability, Training runs) that MLflow 3.17 opens unless told
            assert "Model registry" in text and "Observability" not in text
            for r in trials:  # each trial's val_bpb, as MLflow holds and shows it, is sweep.json's
                assert repr(r["val_bpb"]) in text, (r["val_bpb"], text[:3000])

            # the answer link: the parent run's page, its description expanded as a person would
            link = _printed_link(q.resume_out, "the answer, on the parent run's page:", server.uri)
            page.open(link, until=["Answer.", "Per arm"])
            page.click("button[aria-label=Close]")  # the assistant panel MLflow opens on a first visit
            assert page.click('button[aria-label="Expand description"]')
            comparison = info["comparison"]["arms"]
            rows = []
            for arm, r in comparison.items():  # the summary table's cells, from sweep.json's comparison
                cells = [arm, str(r["n"]), stat(r["mean"]), stat(r["sd"]), ci(r["lo"], r["hi"])]
                if arm == info["control_arm"]:
                    cells.append("(control)")
                else:
                    cells += [stat(r["diff"], signed=True), ci(r["diff_lo"], r["diff_hi"], signed=True)]
                rows.append("\t".join(cells))
            text = page.wait_for(["Plots", *rows])
            assert "Fewer than 3 paired seeds" in text  # the warning where seeds are few
            plots = sorted(p.name for p in (q.exp_dir / "report").glob("*.png"))
            shown = page.wait_js(
                "(() => { const im = [...document.querySelectorAll('img')].filter(i => i.src.includes('get-artifact'));"
                " return im.length && im.every(i => i.complete && i.naturalWidth > 0) &&"
                " im.map(i => decodeURIComponent(i.src).split('report/')[1].split('&')[0]); })()",
                "the plots loaded on the parent run's page",
            )
            assert sorted(shown) == plots and len(plots) >= 4, (shown, plots)
            shot = page.screenshot(tmp_path / "parent-run.png")
            if os.environ.get("STLM_UI_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["STLM_UI_SCREENSHOT"])
        assert shot.stat().st_size > 50_000
    finally:
        server.kill()
    print(f"screenshot of the parent run's page: {shot}")
