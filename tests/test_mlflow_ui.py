"""What the MLflow UI gets from stlm, read back from a real MLflow sqlite store: experiments marked as model-training
ones (a user's own kind kept), a sweep's description that `stlm report` rewrites as trials are added, the trials'
descriptions and the plots as logged images, and the saved runs-table view with the link that opens it. The
browser itself is in test_sweep_e2e.py (a real sweep's store, a real `mlflow server`, headless Chromium)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import _log_trial

from stlm.fmt import ci, stat
from stlm.tracking import EXPERIMENT_KIND, MODEL_TRAINING, NOTE, VIEW_PREFIX


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One store for the module (a new database costs a second or more of migrations); each test its experiments."""
    from mlflow.tracking import MlflowClient

    from stlm.tracking import mlflow_client

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow_client(uri)  # creates the database under stlm's lock
    return MlflowClient(tracking_uri=uri)


def test_experiments_stlm_writes_to_open_as_model_training_and_a_users_kind_stands(client):
    from stlm.eval.__main__ import log_back
    from stlm.tracking import create_run

    run = create_run(client, "fresh", run_name="train")  # `stlm train` and sweeps make their runs this way
    fresh = client.get_experiment(client.get_run(run).info.experiment_id)
    assert fresh.tags[EXPERIMENT_KIND] == MODEL_TRAINING == "custom_model_development"
    old = client.create_experiment("made-before-stlm-marked-them")
    create_run(client, "made-before-stlm-marked-them")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND] == MODEL_TRAINING
    chosen = client.create_experiment("a users own", tags={EXPERIMENT_KIND: "genai_development"})
    create_run(client, "a users own")
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND] == "genai_development"
    # `stlm eval RUN_ID` logs its results back to the run's experiment: that one is marked too
    other = client.create_experiment("eval results")
    target = client.create_run(other).info.run_id
    log_back(target, client.tracking_uri, {"eval/arc_easy/acc": 0.5}, 10, None, {"subset": "random", "limit": 4})
    assert client.get_experiment(other).tags[EXPERIMENT_KIND] == MODEL_TRAINING
    assert client.get_run(target).data.metrics["eval/arc_easy/acc"] == 0.5


def test_saved_view_and_link_open_the_trials_of_one_sweep(client):
    from stlm.tracking import save_runs_view, ui_link

    exp = client.create_experiment("sweeps")
    for created in (True, False):  # a second save (a resumed sweep) keeps the view's creation time
        save_runs_view(
            client,
            exp,
            "stlm-sweep-abc",
            "sweep q: trials",
            columns=["params.sweep.arm", "metrics.val_bpb"],
            search_filter="tags.mlflow.parentRunId = 'abc'",
            order_by="metrics.val_bpb",
            ascending=True,
        )
        saved = json.loads(client.get_experiment(exp).tags[VIEW_PREFIX + "stlm-sweep-abc"])
        if created:
            first = saved["createdAt"]
    assert saved["name"] == "sweep q: trials" and saved["createdAt"] == first <= saved["updatedAt"]
    state = json.loads(saved["state"])  # the UI's own layout: columns as params.`key`, the filter as typed
    assert state == {
        "searchFilter": "tags.mlflow.parentRunId = 'abc'",
        "orderByKey": "metrics.`val_bpb`",
        "orderByAsc": True,
        "selectedColumns": ["params.`sweep.arm`", "metrics.`val_bpb`"],
    }
    assert ui_link("sqlite:////x/mlflow.db", exp, view_id="stlm-sweep-abc") == (
        f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey=stlm-sweep-abc"
    )
    assert ui_link("http://head:5000/", exp, run_id="r1") == (
        f"http://head:5000/#/experiments/{exp}/runs/r1?workflowType=machine_learning"
    )


def _sweep(client, exp_id: str, seeds: list[int]) -> str:
    """A parent run as start_parent leaves it (its params), with trials of arms A (control) and B."""
    parent = client.create_run(exp_id, tags={"stlm.sweep": "grow", "stlm.control_arm": "A"}).info.run_id
    for k, v in {
        "sweep.arms": "A,B",
        "sweep.seeds": "0,1",
        "sweep.trials": 4,
        "sweep.metric": "val_bpb",
        "sweep.mode": "min",
        "sweep.budget_text": "budget: 10,000,000 parameters (+-1.0%), free dimension d_model",
    }.items():
        client.log_param(parent, k, v)
    _add(client, exp_id, parent, seeds)
    return parent


def _add(client, exp_id: str, parent: str, seeds: list[int]) -> None:
    for seed in seeds:
        for arm, bpb in (("A", 2.0 + 0.1 * seed), ("B", 1.9 + 0.1 * seed + 0.01 * seed)):
            _log_trial(client, exp_id, parent, "grow", arm, seed, bpb)


def test_stlm_report_rewrites_the_description_as_a_resumed_sweep_adds_trials(client, tmp_path):
    from stlm.sweep.report.cli import main

    exp = client.create_experiment("grow", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = _sweep(client, exp, seeds=[0])
    args = [parent, "--tracking-uri", client.tracking_uri, "--out", str(tmp_path / "report")]
    assert main(args) == 0
    first = client.get_run(parent).data.tags[NOTE]
    assert "from 2 finished trials" in first
    assert "| A | 1 | 2.0000 |" in first and "| B | 1 | 1.9000 |" in first  # one seed: no interval
    assert "Arms `A` (control), `B`; val_bpb, lower is better" in first
    assert "Budget: 10,000,000 parameters (+-1.0%), free dimension d_model" in first

    _add(client, exp, parent, seeds=[1])  # what --resume adds: the second seed's trials
    assert main(args) == 0
    note = client.get_run(parent).data.tags[NOTE]
    assert "from 4 finished trials" in note and "| A | 1 |" not in note
    diff = [-0.1, -0.09]  # B - A per seed
    expected_row = f"| B | 2 | {stat(1.955)} |"
    assert expected_row in note, note
    assert f"`B` − `A`: {stat(sum(diff) / 2, signed=True)} val_bpb (95% CI " in note
    assert "2 paired seeds" in note and "Fewer than 3 paired seeds" in note


def test_description_plots_and_trial_pages_agree_with_the_report(client, tmp_path):
    from stlm.sweep.report.document import build_report

    exp = client.create_experiment("pages", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = _sweep(client, exp, seeds=[0, 1, 2])
    md = build_report(client.tracking_uri, parent, tmp_path / "report")
    note = client.get_run(parent).data.tags[NOTE]
    summary = md.read_text().split("## Summary: val_bpb", 1)[1].split("\n## ", 1)[0]
    table = [line for line in summary.splitlines() if line.startswith("|")]
    assert len(table) == 4 and all(line in note for line in table)  # header, rule, A, B: the report's own rows
    assert "Answer: `B` − `A`" in md.read_text() and "**Answer.** `B` − `A`" in note
    record = json.loads((tmp_path / "report" / "comparison.json").read_text())["arms"]["B"]
    assert ci(record["diff_lo"], record["diff_hi"], signed=True) in note
    # the plots: files the description shows from the run's artifacts, and MLflow images (Model metrics tab)
    plots = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert plots and all(f"get-artifact?path=report%2F{name}&run_uuid={parent}" in note for name in plots)
    images = {Path(a.path).name.split("+")[0] for a in client.list_artifacts(parent, "images")}
    assert images == {f"report~{Path(name).stem}" for name in plots}
    assert len(note) <= 8000  # MLflow's limit on a tag
    # each trial's page: its cell, its final metric, its eval scores with their standard errors
    runs = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    b1 = next(r for r in runs if r.data.tags["stlm.arm"] == "B" and r.data.tags["stlm.seed"] == "1")
    text = b1.data.tags[NOTE]
    assert text.startswith("**`B`**, seed 1: a trial of sweep [`grow`]")
    assert f"Final val_bpb: **{stat(b1.data.metrics['val_bpb'])}** at step 100" in text
    assert f"blimp {b1.data.metrics['eval/blimp/acc']:.3f} ± 0.010" in text and "arc_easy" in text


def test_a_sweep_of_many_arms_keeps_every_row_and_the_plots_within_mlflows_limit(client, tmp_path):
    """16 arms: the description with a sentence and a power line per arm would pass MLflow's 8000 characters; the
    page keeps the question, every arm's row, the warning and the plots, and sends the rest to report.md."""
    from stlm.sweep.report.document import build_report

    exp = client.create_experiment("wide", artifact_location=(tmp_path / "artifacts").as_uri())
    arms = ["control"] + [f"variant_{i:02d}" for i in range(15)]
    parent = client.create_run(exp, tags={"stlm.sweep": "wide", "stlm.control_arm": "control"}).info.run_id
    client.log_param(parent, "sweep.arms", ",".join(arms))
    for i, arm in enumerate(arms):
        for seed in (0, 1):
            _log_trial(client, exp, parent, "wide", arm, seed, 2.0 + 0.01 * i + 0.003 * seed * i, evals=False)
    build_report(client.tracking_uri, parent, tmp_path / "report")
    note = client.get_run(parent).data.tags[NOTE]
    assert len(note) <= 8000 and "(cut here" not in note
    assert all(f"| {arm} | 2 |" in note for arm in arms)
    assert "Fewer than 3 paired seeds" in note and "Each arm's answer and power line: report.md." in note
    assert "get-artifact?path=report%2Fdiffs.png" in note and "**Files**" in note
