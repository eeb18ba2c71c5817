"""A small MLflow helper shared by `stlm train` and the sweep.

Everything goes through an explicit MlflowClient and run id (no global "active run"), so
several runs can be written from one process and Ray workers never depend on their
working directory:

    uri = tracking_uri(cfg.tracking.uri)               # explicit > $MLFLOW_TRACKING_URI > sqlite:///<abs cwd>/mlflow.db
    client = mlflow_client(uri)
    run_id = create_run(client, cfg.tracking.experiment, run_name="baseline-10m", tags={...})
    log_config(client, run_id, cfg, extra={"params.total": 9.9e6})
    log_metrics(client, run_id, {"train_loss": 3.1}, step=100)
    end_run(client, run_id)

A run's stlm status (the tag stlm.status: finished, failed, stopped, interrupted) and the MLflow state it ends in
are one map, END_STATE, with its reverse STATUS_FROM_MLFLOW; end_with_status sets both.

What the MLflow UI reads (checked against MLflow 3.17's UI bundle, mlflow/server/js/build): an experiment's tag
mlflow.experimentKind (every experiment stlm writes to is a model-training one), a run's description
mlflow.note.content (Markdown), a saved runs-table view (the experiment tag mlflow.sharedViewState.<id>, listed
under "Views" and opened by ?viewStateShareKey=<id>), and ?workflowType=machine_learning, the URL parameter that
opens an experiment on its runs table: 3.17 chooses the page by that parameter or the sidebar's GenAI / Model
training switch (remembered by the browser), not by the tag. ui_link builds such a link.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from stlm.config import Config, dump_yaml, flatten, to_dict

PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_batch
METRICS_PER_CALL = 1000
MAX_PARAM_CHARS = 6000  # MLflow 3 param value limit
MAX_TAG_CHARS = 8000  # MLflow 3 run tag value limit (a run's description is a tag)
MAX_EXPERIMENT_TAG_CHARS = 20000

EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # the UI's kind for training runs (vs genai_development)
NOTE = "mlflow.note.content"  # a run's description: Markdown, rendered on its page
VIEW_PREFIX = "mlflow.sharedViewState."  # + view id: a saved runs-table view of the experiment
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves unless told otherwise

# a run's stlm status (its tag stlm.status) -> the MLflow state it ends in; any other status ends FAILED
END_STATE = {
    "finished": "FINISHED",
    "failed": "FAILED",
    "stalled": "FAILED",  # a sweep trial whose workers stopped reporting more often than its retries allow
    "stopped": "KILLED",
    "interrupted": "KILLED",
    "overwritten": "KILLED",
    "superseded": "KILLED",  # a trial run left by a killed driver whose trial Tune lost (sweep callback)
}
# the reverse, for a run without the tag
STATUS_FROM_MLFLOW = {
    "FINISHED": "finished",
    "FAILED": "failed",
    "KILLED": "stopped",
    "RUNNING": "running",
    "SCHEDULED": "running",
}


def tracking_uri(explicit: str | None = None) -> str:
    """explicit > $MLFLOW_TRACKING_URI > sqlite:///<absolute cwd>/mlflow.db (absolute: Ray moves trials' cwd)."""
    if explicit:
        return _absolutize(explicit)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return _absolutize(env)
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _absolutize(uri: str) -> str:
    """Make a relative sqlite path or bare directory absolute, leave server URIs alone."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    if "://" not in uri and not uri.startswith("databricks"):
        return str(Path(uri).resolve())
    return uri


def mlflow_client(uri: str | None = None):
    """A client of the store at `uri` (see tracking_uri). A SQLite store is opened under a file lock
    beside it: MlflowClient creates and migrates a new database on its first connection, and two
    processes doing that at once (two sweeps, or trials, starting together) crashed one of them with
    an alembic traceback ("Online migration expected to match one row", "duplicate column name":
    10 of 20 openings in 10 rounds of two processes, issue 28). Later openings take the same lock
    for a few milliseconds: the migration cannot be told from outside to be finished."""
    from mlflow.tracking import MlflowClient  # lazy: mlflow (slow to import) only where a run is written or read

    uri = tracking_uri(uri)
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri[len("sqlite:///") :])
    if not db.parent.is_dir():  # MLflow's own error names the missing directory
        return MlflowClient(tracking_uri=uri)
    with FileLock(str(db.parent / f".{db.name}.lock")):
        return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client, name: str) -> str:
    """Experiment id of `name`, creating it (race-safe) if needed, tagged as a model-training experiment
    (mark_model_training). For a sqlite store the artifacts go next to the database (<db dir>/mlartifacts),
    not into the working directory."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        mark_model_training(client, exp)
        return exp.experiment_id
    artifact_location = None
    uri = client.tracking_uri if hasattr(client, "tracking_uri") else ""
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND: MODEL_TRAINING}
        )
    except Exception:  # another process created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        mark_model_training(client, exp)
        return exp.experiment_id


def mark_model_training(client, experiment) -> None:
    """Tag an experiment (an Experiment or its id) mlflow.experimentKind=custom_model_development, the kind
    whose page is the runs table, only where it has no kind yet: a kind a user chose stands."""
    exp = client.get_experiment(experiment) if isinstance(experiment, str) else experiment
    if EXPERIMENT_KIND not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)


def set_description(client, run_id: str, markdown: str) -> None:
    """A run's description (Markdown, shown on its page in the MLflow UI), cut to MLflow's tag limit."""
    if len(markdown) > MAX_TAG_CHARS:
        cut = "\n\n(cut here: MLflow keeps 8000 characters)"
        markdown = markdown[: MAX_TAG_CHARS - len(cut)].rsplit("\n", 1)[0] + cut
    client.set_tag(run_id, NOTE, markdown)


def save_runs_view(
    client,
    experiment_id: str,
    view_id: str,
    name: str,
    *,
    columns: list[str],
    search_filter: str,
    order_by: str,
    ascending: bool,
) -> None:
    """A saved view of the experiment's runs table, as the UI's "Views" menu saves one (an experiment tag
    holding {name, createdAt, updatedAt, state}, the state a JSON text of the table's search and columns).
    `columns`: "params.<key>", "metrics.<key>" or "tags.<key>"; `order_by` likewise."""

    def column(ref: str) -> str:  # the UI's column ids: params.`train.lr`
        kind, _, key = ref.partition(".")
        return f"{kind}.`{key}`"

    now = int(time.time() * 1000)
    old = client.get_experiment(experiment_id).tags.get(VIEW_PREFIX + view_id)
    try:
        created = int(json.loads(old)["createdAt"]) if old else now
    except (ValueError, KeyError, TypeError):
        created = now
    state = {
        "searchFilter": search_filter,
        "orderByKey": column(order_by),
        "orderByAsc": ascending,
        "selectedColumns": [column(c) for c in columns],
    }
    value = json.dumps({"name": name, "createdAt": created, "updatedAt": now, "state": json.dumps(state)})
    if len(value) <= MAX_EXPERIMENT_TAG_CHARS:
        client.set_experiment_tag(experiment_id, VIEW_PREFIX + view_id, value)


def ui_link(tracking_uri: str, experiment_id: str, *, run_id: str | None = None, view_id: str | None = None) -> str:
    """The MLflow UI's address of an experiment's runs table (with a saved view), or of one run, opened as a
    model-training experiment. A tracking server's own address; for a database or directory, where
    `mlflow ui` serves by default."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_DEFAULT
    page = f"/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={view_id}" if view_id else "")
    return f"{base}/#{page}?{query}"


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """HEAD commit of the repository holding `path` (default: the stlm package), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def create_run(
    client,
    experiment: str,
    *,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """A new RUNNING run in `experiment`; tags include stlm.git_commit when known."""
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    commit = git_commit()
    if commit:
        all_tags.setdefault("stlm.git_commit", commit)
    run = client.create_run(get_or_create_experiment(client, experiment), run_name=run_name, tags=all_tags)
    return run.info.run_id


def param_value(v: Any) -> str:
    """A param as MLflow keeps it: text, null for None, cut to MLflow's length limit."""
    s = "null" if v is None else str(v)
    return s[:MAX_PARAM_CHARS]


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param  # lazy: mlflow

    items = [Param(str(k), param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[i : i + PARAMS_PER_CALL])


def log_config(client, run_id: str, cfg: Config, extra: dict[str, Any] | None = None) -> None:
    """Flattened config as params (model.d_model, ...), plus `extra`, plus config.yaml as an artifact."""
    params = flatten(to_dict(cfg))
    params.update(extra or {})
    log_params(client, run_id, params)
    client.log_text(run_id, dump_yaml(cfg), "config.yaml")


def log_metrics(
    client, run_id: str, metrics: dict[str, Any], step: int | None = None, *, synchronous: bool = True
) -> None:
    """Numeric entries of `metrics` at `step` (default: metrics['step']); non-numbers are skipped.

    synchronous=False queues them for MLflow's background writer, which batches what has piled up
    (the training loop does not wait on the store); flush() waits until everything queued is written."""
    from mlflow.entities import Metric  # lazy: mlflow

    step = int(metrics.get("step", 0) if step is None else step)
    now = int(time.time() * 1000)
    items = [
        Metric(str(k), float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    for i in range(0, len(items), METRICS_PER_CALL):
        client.log_batch(run_id, metrics=items[i : i + METRICS_PER_CALL], synchronous=synchronous)


def flush() -> None:
    """Wait for the metrics queued with synchronous=False (before a run is ended)."""
    import mlflow  # lazy: mlflow

    mlflow.flush_async_logging()


def set_tags(client, run_id: str, tags: dict[str, Any]) -> None:
    for k, v in tags.items():
        client.set_tag(run_id, str(k), str(v))


def end_run(client, run_id: str, status: str = "FINISHED") -> None:
    """status: FINISHED | FAILED | KILLED."""
    client.set_terminated(run_id, status=status)


def end_with_status(client, run_id: str, status: str) -> None:
    """Tag the run's stlm status (finished, failed, stopped, interrupted, ...) and end it in the MLflow
    state END_STATE gives it."""
    client.set_tag(run_id, "stlm.status", status)
    end_run(client, run_id, END_STATE.get(status, "FAILED"))


def status_of(run) -> str:
    """An MLflow run's stlm status: its tag stlm.status, else read from its MLflow state."""
    return run.data.tags.get("stlm.status") or STATUS_FROM_MLFLOW.get(run.info.status, run.info.status.lower())


def reopen_run(client, run_id: str) -> bool:
    """Mark an existing run RUNNING again (resume); False if it is gone. Its experiment is marked as a
    model-training one if it is not yet (made before stlm marked them)."""
    try:
        run = client.get_run(run_id)
    except Exception:
        return False
    mark_model_training(client, run.info.experiment_id)
    client.update_run(run_id, status="RUNNING")
    return True
