"""An ablation across scales, for real on the CPU: 3 tiny sizes x 2 arms x 2 seeds through Ray Tune +
Ray Train + MLflow. The report fits each arm's power law and the trend of its difference from the
control, draws the plot, and the terminal summary, sweep.json, the report and the parent MLflow run
give the same numbers by the same rule."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from test_sweep_e2e import REPO, _child_runs, _env

from stlm.sweep.analysis.compare import scale_fits

SIZES = ["300k", "600k", "1.2M"]


def _sweep_file(tmp_path):
    (tmp_path / "base.yaml").write_text((REPO / "configs" / "quickstart.yaml").read_text())
    body = {
        "name": "scales",
        "base": "base.yaml",
        "config": {
            "model": {"n_heads": 2, "multiple_of": 4, "ffn_dim": None},
            "train": {
                "max_steps": 10,
                "eval_interval": 5,
                "log_interval": 5,
                "warmup_steps": 2,
                "batch_size": 8,
                "eval_batches": 2,
            },
            "data": {"max_chars": 400000, "bpe_train_chars": 200000},
        },
        "budget": {"target": SIZES, "tolerance": 0.05, "free": "d_model"},
        "grid": {"model.positional": ["rope", "learned"]},
        "control": "rope",
        "seeds": [0, 1],
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent": 3},
        "tracking": {"experiment": "scales"},
    }
    p = tmp_path / "scales.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def expected_trend(xs: list[float], ds: list[float]) -> tuple[float, str]:
    """The least-squares slope of ds against xs and the trend its 95% t interval gives, by numpy
    and scipy.stats.t: the product's rule written again, to check the product against."""
    from scipy.stats import t as student_t

    n = len(xs)
    x, d = np.asarray(xs), np.asarray(ds)
    slope, intercept = np.polyfit(x, d, 1)
    stderr = math.sqrt(float(((d - (slope * x + intercept)) ** 2).sum()) / (n - 2) / float(((x - x.mean()) ** 2).sum()))
    half = float(student_t.ppf(0.975, n - 2)) * stderr
    if slope - half <= 0 <= slope + half:
        return slope, "no trend detectable at 95%"
    return slope, "grows with scale" if (slope > 0) == (d.mean() > 0) else "shrinks with scale"


@pytest.mark.parametrize(
    "diff_of_size,trend",
    [
        (lambda logn: 0.02 + 0.05 * logn, "grows with scale"),  # positive and growing
        (lambda logn: -0.02 - 0.05 * logn, "grows with scale"),  # negative and growing in size
        (lambda logn: 0.4 - 0.05 * logn, "shrinks with scale"),  # positive and falling
        (lambda logn: 0.1, "no trend detectable at 95%"),  # a constant difference, only noise around it
    ],
)
def test_the_scale_trend_is_what_constructed_data_must_give(diff_of_size, trend):
    """3 sizes x 3 seeds with a known difference from the control at each size, plus seed noise."""
    noise = {0: 0.004, 1: -0.003, 2: -0.001}
    points, control_of = [], {}
    for size, n in (("1M", 1e6), ("4M", 4e6), ("16M", 16e6)):
        control_of[f"rope@{size}"], control_of[f"learned@{size}"] = f"rope@{size}", f"rope@{size}"
        for seed, e in noise.items():
            rope = 3.0 - 0.1 * math.log(n) + e
            points.append((f"rope@{size}", seed, n, rope))
            points.append((f"learned@{size}", seed, n, rope + diff_of_size(math.log(n / 1e6)) + e * (seed - 1)))
    fit = scale_fits(points, control_of)["learned"]
    assert fit["pairs"] == 9 and fit["trend"] == trend
    xs = [math.log(n) for _, _, n, _ in points[::2]]
    ds = [b[3] - a[3] for a, b in zip(points[::2], points[1::2])]
    slope, want = expected_trend(xs, ds)
    assert want == trend and fit["slope"] == pytest.approx(slope, rel=1e-9)
    assert fit["exponent"] < 0 and "exponent" in scale_fits(points, control_of)["rope"]  # bpb falls with size


@pytest.mark.slow
def test_three_sizes_two_arms_two_seeds_fit_the_scale_trend(tmp_path):
    sweep = _sweep_file(tmp_path)
    exp_dir = tmp_path / "exp"
    proc = subprocess.run(
        [sys.executable, "-m", "stlm.sweep", str(sweep), "--experiment-dir", str(exp_dir)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    # every arm ran at every size, paired by seed
    _, runs = _child_runs(exp_dir)
    cells = sorted((r.data.tags["stlm.arm"], r.data.tags["stlm.seed"]) for r in runs)
    assert cells == sorted((f"{arm}@{s}", str(seed)) for arm in ("rope", "learned") for s in SIZES for seed in (0, 1))
    params = {r.data.tags["stlm.arm"]: int(r.data.params["params.total"]) for r in runs}
    assert params["rope@300k"] < params["rope@600k"] < params["rope@1.2M"]

    # the scale fit and its plot
    report = exp_dir / "report"
    assert (report / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report / "report.md").read_text()
    assert "## Across sizes (300k, 600k, 1.2M)" in text
    info = json.loads((exp_dir / "sweep.json").read_text())
    rec = info["comparison"]
    fit = rec["scale"]["learned"]
    assert fit["pairs"] == 6 and fit["slope_lo"] <= fit["slope"] <= fit["slope_hi"]
    # the trend the runs' own numbers must give: learned - rope at the same size and seed against log(params)
    cell = {
        (r.data.tags["stlm.arm"], r.data.tags["stlm.seed"]): (
            int(r.data.params["params.total"]),
            r.data.metrics["val_bpb"],
        )
        for r in runs
    }
    xs = [math.log(cell[(f"rope@{s}", seed)][0]) for s in SIZES for seed in "01"]
    ds = [cell[(f"learned@{s}", seed)][1] - cell[(f"rope@{s}", seed)][1] for s in SIZES for seed in "01"]
    slope, trend = expected_trend(xs, ds)
    assert fit["trend"] == trend and fit["slope"] == pytest.approx(slope, rel=1e-6)
    assert "exponent" in rec["scale"]["rope"] and rec["scale"]["rope"]["fit_n"] == 6

    # one set of numbers: terminal == sweep.json == report == the parent run's metrics
    report_rec = json.loads((report / "comparison.json").read_text())
    for arm, r in rec["arms"].items():
        for k, v in r.items():
            if isinstance(v, float):
                assert report_rec["arms"][arm][k] == pytest.approx(v, rel=1e-9), (arm, k)
    assert report_rec["scale"]["learned"]["slope"] == pytest.approx(fit["slope"], rel=1e-9)
    for arm in ("learned@300k", "learned@1.2M"):
        r = rec["arms"][arm]
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(arm + " ") and " mean " in ln)
        assert f"mean {r['mean']:.4f}" in line and f"vs rope@{arm.split('@')[1]}: {r['diff']:+.4f}" in line
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {arm} |"))
        assert f"| {r['mean']:.4f} |" in row and f"| {r['diff']:+.4f} |" in row
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(tracking_uri=info["tracking_uri"]).get_run(info["parent_run_id"])
    metrics = parent.data.metrics
    assert metrics["compare/learned_1.2M/val_bpb/diff"] == pytest.approx(rec["arms"]["learned@1.2M"]["diff"], rel=1e-9)
    assert metrics["compare/learned_300k/val_bpb/diff_hi"] == pytest.approx(
        rec["arms"]["learned@300k"]["diff_hi"], rel=1e-9
    )
    assert metrics["compare/rope_600k/val_bpb/mean"] == pytest.approx(rec["arms"]["rope@600k"]["mean"], rel=1e-9)
    assert metrics["scale/learned/val_bpb/diff_slope"] == pytest.approx(fit["slope"], rel=1e-9)
    # two seeds: the sweep says the intervals are not informative and what it could have detected
    assert "Fewer than 3 paired seeds" in proc.stdout and "Fewer than 3 paired seeds" in text
    assert re.search(r"detectable at 95% \(80% power\) is [0-9.]+ with 2 seeds, [0-9.]+ with 5", text)
    assert not math.isnan(rec["arms"]["learned@600k"]["diff"])
