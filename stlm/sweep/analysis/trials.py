"""A sweep's trials read back from MLflow: the parent run's children, with their params, tags and metric histories."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from stlm.errors import StlmError
from stlm.tracking import status_of

CURVE_METRICS = ("val_bpb", "val_loss", "train_loss")  # histories plotted per arm

BASE_FINAL_METRICS = ("val_bpb", "val_loss", "train_loss")  # final values summarised per arm

EVAL_RE = re.compile(r"^eval/([^/]+)/(.+)$")  # eval/<task>/<metric>

PARAM_ALIASES = {"params": ("params.total",)}  # a sweep's `metric: [val_bpb, params]` objective

RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Trial:
    run_id: str
    run_name: str
    arm: str
    seed: Any  # int when the tag parses as one
    status: str  # finished | failed | stopped | running
    params: dict[str, str]
    metrics: dict[str, float]  # final (latest-step) values
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    error: str = ""

    def value(self, key: str) -> float | None:
        """A final metric, or a numeric param (params.total, flops_per_token) under the same name."""
        if key in self.metrics:
            return self.metrics[key]
        for k in (key, *PARAM_ALIASES.get(key, ())):
            if k in self.params:
                try:
                    return float(self.params[k])
                except ValueError:
                    return None
        return None

    @property
    def n_params(self) -> float | None:
        return self.value("params.total")


def get_run(client, run_id: str, tracking_uri: str):
    from mlflow.exceptions import MlflowException  # lazy: mlflow only when a store is read

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise StlmError(
            f"MLflow run {run_id!r} does not exist in the tracking store {tracking_uri!r} "
            "(pass the sweep's parent run id, or the sweep dir holding sweep.json; set --tracking-uri). "
            f"[{e.error_code}]"
        ) from None


def _parse_seed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def load_trials(client, parent, tracking_uri: str) -> list[Trial]:
    """All child runs of the parent run, with final metrics and the curve histories; not those superseded
    (a killed driver's run of a trial Tune lost and ran again: stlm.sweep.tracking.callback)."""
    pid = parent.info.run_id
    runs, token = [], None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{pid}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    trials = []
    for r in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        tags = r.data.tags
        if tags.get("stlm.status") == "superseded":  # deleted too; this keeps one restored by hand out
            continue
        history = {}
        for key in CURVE_METRICS:
            if key in r.data.metrics:
                pts = client.get_metric_history(r.info.run_id, key)
                history[key] = sorted((m.step, m.value) for m in pts)
        trials.append(
            Trial(
                run_id=r.info.run_id,
                run_name=r.info.run_name or r.info.run_id[:8],
                arm=tags.get("stlm.arm", "(all)"),
                seed=_parse_seed(tags.get("stlm.seed")),
                status=status_of(r),
                params=dict(r.data.params),
                metrics=dict(r.data.metrics),
                history=history,
                error=tags.get("stlm.error", ""),
            )
        )
    return trials


def headline_tasks(tasks) -> list[str]:
    """The eval tasks less the members of a group among them (stlm.eval.harness names a member <group>_<name>:
    blimp_<uid>, mmlu_<subject>): what a plot or a line has room for; the report's tables keep every member."""
    tasks = sorted(set(tasks))
    return [t for t in tasks if not any(t.startswith(g + "_") for g in tasks if g != t)]


def tag_list(text: str | None) -> list[str] | None:
    """A tag holding a list: JSON ('["val_bpb", "params.total"]') or comma-separated."""
    if not text:
        return None
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        v = [t.strip() for t in text.split(",") if t.strip()]
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]
