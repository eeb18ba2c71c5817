"""The sweep report and the statistics under it, on a real MLflow sqlite store laid out as a sweep writes it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stlm import stats
from stlm.errors import StlmError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T975 = {1: 12.706, 2: 4.303, 5: 2.571, 30: 2.042}  # Student t table, two-sided 95%

# the synthetic sweep: seed effects are large (0.3 bpb), arm effects small and exactly known
SEEDS = [0, 1, 2]
SEED_BASE = {0: 2.00, 1: 2.30, 2: 1.80}
B_EFFECT = -0.050  # arm B is better than control A by 0.05 bpb, plus a little noise per seed
B_NOISE = {0: 0.002, 1: -0.003, 2: 0.001}
C_NOISE = {0: 0.010, 1: -0.012, 2: 0.003}  # arm C: no real effect


# --------------------------------------------------------------------------- stats


@pytest.mark.parametrize("df,expected", sorted(T975.items()))
def test_t_quantile_matches_table(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_other_levels_and_symmetry():
    assert stats.t_quantile(0.995, 3) == pytest.approx(5.841, abs=5e-4)  # 99% two-sided, df=3
    assert stats.t_quantile(0.95, 10) == pytest.approx(1.812, abs=5e-4)
    assert stats.t_quantile(0.025, 4) == pytest.approx(-stats.t_quantile(0.975, 4))
    assert stats.t_quantile(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)  # -> normal
    assert stats.t_cdf(0.0, 7) == pytest.approx(0.5)
    assert stats.t_cdf(stats.t_quantile(0.9, 7), 7) == pytest.approx(0.9, abs=1e-10)


# G*Power 3.1 / Cohen (1988): the one-sample (paired) t-test, two-sided alpha = 0.05, needs
# n = 34 pairs for power 0.80 at d = 0.5 (actual power 0.8078), 15 at d = 0.8, 199 at d = 0.2.
@pytest.mark.parametrize("d,n,power", [(0.5, 34, 0.8078), (0.8, 15, 0.8213), (0.2, 199, 0.8017)])
def test_paired_t_power_matches_published_tables(d, n, power):
    assert stats.paired_t_power(d, n) == pytest.approx(power, abs=5e-4)
    assert stats.paired_t_power(d, n - 1) < 0.80 <= stats.paired_t_power(d, n)  # the table's smallest n


def test_detectable_difference_inverts_the_power():
    # 34 pairs with sd 2.0 detect a difference of about 0.5 sd = 1.0 at 80% power
    delta = stats.detectable_difference(2.0, 34)
    assert 0.97 < delta < 1.0 and stats.paired_t_power(delta / 2.0, 34) == pytest.approx(0.80, abs=1e-6)
    two, five = stats.detectable_difference(0.01, 2), stats.detectable_difference(0.01, 5)
    assert five < two  # more seeds, smaller detectable effect; with 2 pairs t_{0.975,1} = 12.7 dominates
    assert stats.detectable_difference(0.01, 1) is None and stats.detectable_difference(0.0, 3) is None


def test_summarize_and_paired_difference():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3)  # sum of squares 5, n - 1 = 3
    assert (s.n, s.mean, s.std) == (4, 2.5, pytest.approx(sd))
    half = 3.182 * sd / 2  # t_{0.975,3} = 3.182, sqrt(4) = 2
    assert s.lo == pytest.approx(2.5 - half, abs=1e-3) and s.hi == pytest.approx(2.5 + half, abs=1e-3)

    one = stats.summarize([1.7])
    assert one.std is None and one.lo is None and one.hi is None  # no fake interval

    d = stats.paired_difference({0: 1.0, 1: 2.0, 2: 3.1, 9: 5.0}, {0: 0.5, 1: 1.4, 2: 2.6})
    diffs = [0.5, 0.6, 0.5]  # seed 9 has no control: not paired
    m = sum(diffs) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in diffs) / 2)
    assert d.seeds == (0, 1, 2) and d.n == 3
    assert d.mean == pytest.approx(m) and d.std == pytest.approx(sd)
    assert d.lo == pytest.approx(m - 4.303 * sd / math.sqrt(3), abs=1e-3)
    assert d.excludes_zero is True
    assert stats.paired_difference({0: 1.0, 1: 0.0}, {0: 0.0, 1: 1.0}).excludes_zero is False
    assert stats.paired_difference({0: 1.0}, {0: 0.5}).excludes_zero is None
    assert stats.paired_difference({0: 1.0}, {1: 0.5}) is None


def test_pareto_front():
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3.5)]
    assert stats.pareto_front(pts) == [0, 1, 3]
    assert stats.pareto_front(pts, ("min", "max")) == [0]


# --------------------------------------------------------------------------- a sweep in MLflow


def _val_bpb(arm: str, seed: int) -> float:
    base = SEED_BASE[seed]
    return {"A": base, "B": base + B_EFFECT + B_NOISE[seed], "C": base + C_NOISE[seed], "D": base - 0.1}[arm]


def _log_trial(
    client,
    exp_id,
    parent_id,
    sweep,
    arm,
    seed,
    final_bpb,
    status="finished",
    params_total=10_000_000,
    evals=True,
    extra_params=None,
):
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(
        exp_id,
        run_name=f"{arm}-s{seed}",
        tags={
            "mlflow.parentRunId": parent_id,
            "stlm.sweep": sweep,
            "stlm.arm": arm,
            "stlm.seed": str(seed),
            "stlm.trial_id": f"{arm}_{seed}",
            "stlm.status": status,
        },
    )
    rid = run.info.run_id
    steps = [0, 50, 100] if status == "finished" else [0, 50]
    metrics = []
    for i, step in enumerate(steps):
        bpb = final_bpb + 0.5 * (len(steps) - 1 - i)  # decreasing to final_bpb at the last step
        metrics += [
            Metric("val_bpb", bpb, 0, step),
            Metric("val_loss", bpb * 0.9, 0, step),
            Metric("train_loss", bpb * 0.88, 0, step),
        ]
    if evals and status == "finished":
        acc = 0.6 - (final_bpb - 2.0) * 0.1
        metrics += [
            Metric("eval/blimp/acc", acc, 0, 100),
            Metric("eval/blimp/acc_stderr", 0.01, 0, 100),
            Metric("eval/arc_easy/acc", acc - 0.2, 0, 100),
            Metric("eval/arc_easy/acc_stderr", 0.02, 0, 100),
        ]
    params = [
        Param("params.total", str(params_total)),
        Param("flops_per_token", str(6 * params_total)),
        Param("model.d_model", "256"),
    ]
    params += [Param(k, str(v)) for k, v in (extra_params or {}).items()]
    client.log_batch(rid, metrics=metrics, params=params, tags=[RunTag("stlm.git_commit", "abc")])
    if status == "failed":
        client.set_tag(rid, "stlm.error", "RuntimeError: CUDA out of memory")
    client.set_terminated(rid, "FINISHED" if status == "finished" else "FAILED")
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow sqlite store with an ablation sweep (arms A=control, B, C x 3 seeds, D x 1 seed, one failed B)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("stlm-test", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="ffn_sharing", tags={"stlm.sweep": "ffn_sharing"}).info.run_id
    for arm in "ABC":
        for seed in SEEDS:
            _log_trial(client, exp_id, parent, "ffn_sharing", arm, seed, _val_bpb(arm, seed))
    _log_trial(client, exp_id, parent, "ffn_sharing", "D", 0, _val_bpb("D", 0))
    failed = _log_trial(client, exp_id, parent, "ffn_sharing", "B", 3, 9.99, status="failed")
    client.set_terminated(parent, "FINISHED")
    return {"uri": uri, "client": client, "exp_id": exp_id, "parent": parent, "failed": failed, "root": root}


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    from stlm.sweep.report.document import build_report

    out = tmp_path_factory.mktemp("report")
    md = build_report(store["uri"], store["parent"], out, control_arm="A")
    return md


def _row(md_text: str, section: str, *cells: str) -> list[str]:
    """The table row of a section whose first cells are `cells`."""
    part = md_text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    for line in part.splitlines():
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        if row[: len(cells)] == list(cells):
            return row
    raise AssertionError(f"no row {cells} in section {section!r}:\n{part}")


def test_paired_difference_and_interval(report):
    text = report.read_text()
    # computed independently: d_s = B_s - A_s, t_{0.975, 2} = 4.303
    d = [_val_bpb("B", s) - _val_bpb("A", s) for s in SEEDS]
    m = sum(d) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / 2)
    half = T975[2] * sd / math.sqrt(3)
    row = _row(text, "Paired differences", "val_bpb", "B")
    assert row[2] == "3"  # three seed pairs; the failed seed-3 run of B is not paired
    assert float(row[3]) == pytest.approx(m, abs=1e-4)
    lo, hi = (float(x) for x in row[5].strip("[]").split(","))
    assert lo == pytest.approx(m - half, abs=2e-4) and hi == pytest.approx(m + half, abs=2e-4)
    assert row[6] == "yes (better)"  # the 0.05 bpb improvement is detected
    # an unpaired interval would be swamped by the 0.3 bpb seed effects: pairing is what finds it
    assert _row(text, "Paired differences", "val_bpb", "C")[6] == "no"
    # accuracy differences are judged with "higher is better"
    assert _row(text, "Paired differences", "eval/blimp/acc", "B")[6] == "yes (better)"


def test_per_arm_summary_and_single_seed_na(report):
    text = report.read_text()
    vals = [_val_bpb("B", s) for s in SEEDS]  # the failed run's 9.99 is not averaged in
    row = _row(text, "Final metrics per arm", "val_bpb", "B")
    assert row[2] == "3" and float(row[3]) == pytest.approx(sum(vals) / 3, abs=1e-4)
    d_row = _row(text, "Final metrics per arm", "val_bpb", "D")
    assert d_row[2] == "1" and d_row[4] == "n/a" and d_row[5] == "n/a"  # one seed: no sd, no interval
    assert _row(text, "Paired differences", "val_bpb", "D")[5] == "n/a"
    assert _row(text, "Summary: val_bpb", "A")[5] == "(control)"


def test_failed_trials_listed_not_averaged(report, store):
    text = report.read_text()
    row = _row(text, "Failed, stopped or unfinished trials", store["failed"])
    assert row[1:4] == ["B", "3", "failed"] and "out of memory" in row[5]
    assert "9.99" not in text.split("## Failed")[0]


def test_plots_are_real_pngs_and_html_references_them(report):
    out = report.parent
    for name in ("curves.png", "diffs.png", "params.png", "benchmarks.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'src="curves.png"' in page and "<table>" in page
    assert not (out / "pareto.png").exists()  # single objective: no Pareto front


def test_report_logged_to_parent_run(report, store):
    names = {Path(f.path).name for f in store["client"].list_artifacts(store["parent"], "report")}
    assert {"report.md", "report.html", "curves.png", "params.png", "benchmarks.png", "comparison.json"} <= names
    # the comparison is also the parent run's metrics (read back from the sqlite store): MLflow's compare view
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(tracking_uri=store["uri"]).get_run(store["parent"]).data.metrics
    d = [_val_bpb("B", s) - _val_bpb("A", s) for s in SEEDS]
    row = _row(report.read_text(), "Paired differences", "val_bpb", "B")
    lo, hi = (float(x) for x in row[5].strip("[]").split(","))
    assert metrics["compare/B/val_bpb/diff"] == pytest.approx(sum(d) / 3, abs=1e-12)
    assert metrics["compare/B/val_bpb/diff_lo"] == pytest.approx(lo, abs=1e-4)
    assert metrics["compare/B/val_bpb/diff_hi"] == pytest.approx(hi, abs=1e-4)
    assert metrics["compare/A/val_bpb/mean"] == pytest.approx(sum(SEED_BASE.values()) / 3, abs=1e-12)
    assert metrics["compare/D/val_bpb/pairs"] == 1 and "compare/D/val_bpb/diff_lo" not in metrics  # no fake interval


def test_few_seeds_get_a_power_line_not_just_an_interval(report):
    text = report.read_text()
    assert "Fewer than 3 paired seeds: the 95% intervals are not informative" in text  # D has one seed
    sd = stats.paired_difference({s: _val_bpb("B", s) for s in SEEDS}, {s: _val_bpb("A", s) for s in SEEDS}).std
    now, five = stats.detectable_difference(sd, 3), stats.detectable_difference(sd, 5)
    assert f"is {now:.4f} with 3 seeds, {five:.4f} with 5" in text
    assert "D: 1 pair(s) give no spread to plan with" in text


def test_cli_prints_table(store, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text(
        json.dumps(
            {
                "name": "ffn_sharing",
                "tracking_uri": store["uri"],
                "experiment": "stlm-test",
                "parent_run_id": store["parent"],
                "metric": "val_bpb",
                "mode": "min",
                "control_arm": "A",
                "arms": ["A", "B", "C", "D"],
                "seeds": SEEDS,
                "spec_path": "x.yaml",
            }
        )
    )
    env = dict(os.environ, STLM_QUIET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "stlm.cli", "report", str(sweep_dir), "--no-log"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["arm", "n", "val_bpb"]
    b = next(line for line in lines if line.startswith("B "))
    assert "yes (better)" in b and b.split()[1] == "3"
    assert (sweep_dir / "report" / "report.md").is_file() and "report.md" in proc.stdout


def test_errors_are_clear(store, tmp_path):
    from stlm.sweep.report.cli import main
    from stlm.sweep.report.document import build_report

    with pytest.raises(StlmError, match="neither a sweep dir"):
        main([str(tmp_path / "nope")])
    with pytest.raises(StlmError, match="holds no sweep.json"):
        main([str(tmp_path)])
    with pytest.raises(StlmError, match="does not exist"):
        build_report(store["uri"], "0" * 32, tmp_path / "r")
    client = store["client"]
    parent = client.create_run(store["exp_id"], tags={"stlm.sweep": "broken"}).info.run_id
    _log_trial(client, store["exp_id"], parent, "broken", "A", 0, 3.0, status="failed")
    with pytest.raises(StlmError, match="no finished trials"):
        build_report(store["uri"], parent, tmp_path / "r", log_artifacts=False)
    with pytest.raises(StlmError, match="Control arm 'Z'"):
        build_report(store["uri"], store["parent"], tmp_path / "r", control_arm="Z", log_artifacts=False)


def test_multi_objective_pareto(store, tmp_path):
    """An NSGA-II sweep (parent tag stlm.metric is a list): the Pareto front of bpb vs params is drawn and listed."""
    from stlm.sweep.report.document import build_report

    client = store["client"]
    parent = client.create_run(
        store["exp_id"], tags={"stlm.sweep": "nas", "stlm.metric": '["val_bpb", "params"]'}
    ).info.run_id
    # (params, bpb): 1M/3.0, 2M/2.5, 3M/2.7 (dominated by 2M), 4M/2.2
    ids = {}
    for i, (n, bpb) in enumerate([(1_000_000, 3.0), (2_000_000, 2.5), (3_000_000, 2.7), (4_000_000, 2.2)]):
        ids[n] = _log_trial(client, store["exp_id"], parent, "nas", f"t{i}", 0, bpb, params_total=n, evals=False)
    md = build_report(store["uri"], parent, tmp_path / "nas", metric=None, mode=None, log_artifacts=False)
    text = md.read_text()
    front = text.split("## Pareto front", 1)[1].split("\n## ", 1)[0]
    assert ids[1_000_000] in front and ids[2_000_000] in front and ids[4_000_000] in front
    assert ids[3_000_000] not in front
    assert (tmp_path / "nas" / "pareto.png").read_bytes()[:8] == PNG_MAGIC


def test_search_cells_keep_their_best_trial():
    """An Optuna search runs several trials per (arm, seed): the arm comparison uses the best of each cell."""
    from stlm.sweep.analysis.arms import best_per_cell
    from stlm.sweep.analysis.trials import Trial

    def trial(arm, seed, bpb):
        return Trial(
            run_id=f"{arm}{seed}{bpb}",
            run_name="",
            arm=arm,
            seed=seed,
            status="finished",
            params={},
            metrics={"val_bpb": bpb},
        )

    trials = [
        trial("A", 0, 2.0),
        trial("A", 0, 1.8),
        trial("A", 1, 2.1),
        trial("B", 0, 1.9),
        trial("B", 0, float("nan")),
    ]
    best = best_per_cell(trials, "val_bpb", "min")
    assert sorted((t.arm, t.seed, t.metrics["val_bpb"]) for t in best) == [("A", 0, 1.8), ("A", 1, 2.1), ("B", 0, 1.9)]
    assert [t.metrics["val_bpb"] for t in best_per_cell(trials[:2], "val_bpb", "max")] == [2.0]


def test_terminal_sweep_json_and_report_use_one_rule():
    """The quickstart's shape (2 arms x 2 seeds x 2 samples): the terminal/sweep.json comparison (from
    Tune's rows) and the report's (from MLflow trials) pick the same trial per cell and agree to the digit."""
    from stlm.sweep.analysis.arms import analyse
    from stlm.sweep.analysis.summary import comparison_of
    from stlm.sweep.analysis.trials import Trial
    from stlm.sweep.plan.sweep import load_sweep

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml")
    bpb = {
        ("rope", 0): [1.30, 1.10],
        ("rope", 1): [1.25, 1.40],
        ("learned", 0): [1.20, 1.35],
        ("learned", 1): [1.31, 1.29],
    }
    rows, trials = [], []
    for (arm, seed), vals in bpb.items():
        for i, v in enumerate(vals):
            rows.append({"trial_id": f"{arm}{seed}{i}", "arm": arm, "seed": seed, "val_bpb": v, "status": "finished"})
            trials.append(
                Trial(
                    run_id=f"{arm}{seed}{i}",
                    run_name="",
                    arm=arm,
                    seed=seed,
                    status="finished",
                    params={},
                    metrics={"val_bpb": v},
                )
            )
    rows.append({"trial_id": "x", "arm": "rope", "seed": 0, "val_bpb": 0.5, "status": "failed"})  # never chosen
    rec = comparison_of(sweep, rows)
    a = analyse(
        trials, name="q", parent_run_id="p", tracking_uri="u", metrics=["val_bpb"], modes=["min"], control="rope"
    )
    assert rec == a.record
    assert rec["arms"]["rope"]["mean"] == pytest.approx((1.10 + 1.25) / 2)  # best of each cell, not all 4 trials
    assert rec["arms"]["learned"]["diff"] == pytest.approx(((1.20 - 1.10) + (1.29 - 1.25)) / 2)
    assert [r["trial_id"] for r in rows if r["chosen"]] == ["rope01", "rope10", "learned00", "learned11"]


# --------------------------------------------------------------------------- a search: the knobs


def _searched_bpb(arm: str, seed: int, lr: float) -> float:
    """val_bpb of a searched trial: a bowl in log10(lr) around 10^-2.5, plus seed and arm effects;
    weight decay has no effect at all."""
    return 1.5 + 0.2 * seed + (0.03 if arm == "learned" else 0.0) + 0.4 * (math.log10(lr) + 2.5) ** 2


@pytest.fixture(scope="module")
def searched(store, tmp_path_factory):
    """A search laid out as a sweep writes it: the parent run made by tracking.start_parent for a real
    sweep file (2 arms x 2 seeds x 4 samples of train.lr, loguniform over 3 decades, and
    train.weight_decay, which does not matter), and the trials' sampled values as search.<knob> params."""
    import random

    import yaml

    from stlm.sweep.plan.space import SearchSpace
    from stlm.sweep.plan.sweep import load_sweep
    from stlm.sweep.report.document import build_report
    from stlm.sweep.tracking.ledger import Ledger
    from stlm.sweep.tracking.runs import start_parent

    repo = Path(__file__).resolve().parents[1]
    root = tmp_path_factory.mktemp("search")
    spec = yaml.safe_load((repo / "sweeps" / "quickstart.yaml").read_text())
    spec.update(name="lrsearch", base=str(repo / "configs" / "quickstart.yaml"), tracking={"experiment": "stlm-test"})
    spec["search"].update(
        samples=4,
        params={
            "train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
            "train.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.2},
        },
    )
    (root / "lrsearch.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep(root / "lrsearch.yaml")
    client = store["client"]
    parent = start_parent(client, Ledger(root), sweep, "stlm-test", root, SearchSpace(sweep))
    rng = random.Random(0)
    for arm, seed in [(a, s) for _ in range(4) for a, s in sweep.cells]:
        lr, wd = 10 ** rng.uniform(-4, -1), rng.uniform(0.0, 0.2)
        _log_trial(
            client,
            store["exp_id"],
            parent,
            "lrsearch",
            arm,
            seed,
            _searched_bpb(arm, seed, lr),
            evals=False,
            extra_params={"search.train.lr": lr, "search.train.weight_decay": wd, "train.lr": lr},
        )
    client.set_terminated(parent, "FINISHED")
    md = build_report(store["uri"], parent, root / "report", metric=None, mode=None)
    return {"md": md, "parent": parent, "sweep": sweep}


def test_search_report_plots_each_knob_and_ranks_the_one_that_matters(searched):
    md = searched["md"]
    text, page = md.read_text(), (md.parent / "report.html").read_text()
    png = (md.parent / "knobs.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 5000
    assert "](knobs.png)" in text and 'src="knobs.png"' in page and "Search: knob importances" in page
    lr = _row(text, "Search: knob importances", "train.lr")
    wd = _row(text, "Search: knob importances", "train.weight_decay")
    assert float(lr[1]) > 0.5 > float(wd[1])  # val_bpb depends on lr only
    assert float(lr[1]) + float(wd[1]) == pytest.approx(1.0, abs=2e-3)  # 3 decimals each
    assert lr[3].startswith("loguniform 0.0001..0.1") and wd[3].startswith("uniform 0..0.2")
    # the value at each arm's best trial is near the bowl's bottom, 10^-2.5
    best = dict(cell.split(": ") for cell in lr[2].split(", "))
    assert set(best) == {"rope", "learned"} and all(abs(math.log10(float(v)) + 2.5) < 0.5 for v in best.values())


def test_search_importances_on_the_parent_run(searched, store):
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=store["uri"]).get_run(searched["parent"])  # read back from the sqlite store
    space = json.loads(run.data.params["sweep.search"])  # what start_parent recorded for the sweep file
    assert space["train.lr"]["attributes"] == {"low": 1e-4, "high": 0.1, "log": True, "step": None}
    imp = {k: v for k, v in run.data.metrics.items() if k.startswith("importance/")}
    assert set(imp) == {"importance/train.lr", "importance/train.weight_decay"}
    assert sum(imp.values()) == pytest.approx(1.0) and imp["importance/train.lr"] > imp["importance/train.weight_decay"]
    row = _row(searched["md"].read_text(), "Search: knob importances", "train.lr")
    assert float(row[1]) == pytest.approx(imp["importance/train.lr"], abs=5e-4)


def test_sweep_without_search_says_why_importances_are_absent(report):
    part = report.read_text().split("## Search: knob importances", 1)[1].split("\n## ", 1)[0]
    assert "Knob importances are absent because the sweep searched no knob" in part
    assert not (report.parent / "knobs.png").exists()


def test_knob_importances_need_two_trials_that_differ():
    """Too few finished trials, or a knob that took one value: the section says why, nothing fails."""
    from stlm.sweep.analysis import knobs
    from stlm.sweep.analysis.arms import analyse
    from stlm.sweep.analysis.trials import Trial

    space = json.dumps(
        {"train.lr": {"name": "FloatDistribution", "attributes": {"low": 1e-4, "high": 0.1, "log": True, "step": None}}}
    )

    def analysis(*lrs, status="finished"):
        trials = [
            Trial(
                run_id=f"r{i}",
                run_name="",
                arm="A",
                seed=i,
                status=status if i else "finished",
                params={"search.train.lr": str(lr)},
                metrics={"val_bpb": 2.0 + i},
            )
            for i, lr in enumerate(lrs)
        ]
        a = analyse(
            trials, name="s", parent_run_id="p", tracking_uri="u", metrics=["val_bpb"], modes=["min"], control="A"
        )
        return knobs.analyse_knobs(a, space)

    assert "fewer than 2 finished trials" in analysis(1e-3, 2e-3, status="failed").absent
    one = analysis(1e-3, 1e-3)
    assert "no searched knob varies" in one.absent and one.constant == ["train.lr"]
    two = analysis(1e-3, 1e-2)
    assert not two.absent and two.importances == {"train.lr": 1.0} and two.knobs[0].log_axis


def test_knobs_of_a_sweep_that_recorded_no_space_are_inferred_and_importances_are_seeded():
    """An older sweep (no sweep.search on its parent run): the knobs are its trials' search.* params, the
    ranges those seen; fANOVA is seeded, so the same trials give the report the same numbers."""
    from stlm.sweep.analysis import knobs
    from stlm.sweep.analysis.arms import analyse
    from stlm.sweep.analysis.trials import Trial

    trials = [
        Trial(
            run_id=f"r{i}",
            run_name="",
            arm="AB"[i % 2],
            seed=i // 2,
            status="finished",
            params={
                "search.train.lr": str(10 ** (-4 + 0.3 * i)),
                "search.model.n_layers": str(2 + i % 3),
                "search.arch.kv_index": "0",
                "train.seed": str(i // 2),
            },
            metrics={"val_bpb": 2.0 + (-4 + 0.3 * i + 2.5) ** 2},
        )
        for i in range(10)
    ]
    a = analyse(trials, name="s", parent_run_id="p", tracking_uri="u", metrics=["val_bpb"], modes=["min"], control="A")
    runs = [knobs.analyse_knobs(a, None) for _ in range(2)]
    r = runs[0]
    assert [k.name for k in r.knobs] == ["model.n_layers", "train.lr"] and not r.declared  # arch.*, seeds: not knobs
    assert r.importances == runs[1].importances and r.importances["train.lr"] > r.importances["model.n_layers"]
    lr = next(k for k in r.knobs if k.name == "train.lr")
    assert lr.log_axis and lr.searched_range() == "seen 0.0001..0.05012"  # 2.7 decades: log x
