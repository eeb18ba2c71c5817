"""Sweep files: schema, arms and budget, the Optuna space, --dry-run of every shipped sweep, bad input.

Fast: pure logic plus real Optuna studies; nothing here starts Ray (see test_sweep_e2e.py).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stlm.errors import StlmError
from stlm.offline import is_local
from stlm.sweep.plan.schema import CONFIG_KEYS
from stlm.sweep.plan.space import SearchSpace
from stlm.sweep.plan.sweep import load_sweep
from stlm.sweep.run.driver import main as sweep_main

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"


def write_sweep(tmp_path: Path, body: dict, name: str = "s.yaml") -> Path:
    """A sweep file next to a copy of the quickstart base config."""
    (tmp_path / "base.yaml").write_text((REPO / "configs" / "quickstart.yaml").read_text())
    body = {"name": "t", "base": "base.yaml", **body}
    p = tmp_path / name
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


# --------------------------------------------------------------------------- shipped sweep files


def test_the_expected_sweep_files_ship():
    names = {p.stem for p in SWEEPS}
    for want in (
        "quickstart",
        "positional_encoding",
        "ffn_type",
        "weight_tying",
        "ffn_sharing",
        "dropout_schedule",
        "byte_level",
        "lr_schedule",
        "search_10m",
        "search_50m",
        "search_100m",
    ):
        assert want in names


def fitted(path: Path, shared_data: Path) -> list[str]:
    """Overrides that fit a shipped sweep to this machine and to the shared data, offline, and keep its
    plan (arms, sizes, steps, sequences per step): CPUs only, the cores there are, a micro-batch that fits
    the memory (grad_accum keeps the batch), the local corpus, GPT-2 vocabulary and benchmarks."""
    from stlm.sweep.run.memory import trial_memory
    from stlm.sweep.run.preflight import local_resources

    sweep, have = load_sweep(path), local_resources()
    r = sweep.spec.resources
    (per_step,) = {a.cfg.train.batch_size * a.cfg.train.grad_accum for a in sweep.arms}
    batch = min(a.cfg.train.batch_size for a in sweep.arms)

    def memory(b: int) -> float:
        return trial_memory(load_sweep(path, [f"train.batch_size={b}"]))

    while memory(batch) > have["memory"] and batch % 2 == 0:
        batch //= 2
    return [
        "resources.gpus_per_worker=0",
        f"resources.cpus_per_worker={max(1, int(have['CPU']) // r.workers)}",
        f"train.batch_size={batch}",
        f"train.grad_accum={per_step // batch}",
        f"data.source={shared_data / 'corpora' / 'tinystories'}",
        f"data.gpt2_vocab_file={shared_data / 'tokenizers' / 'gpt2' / 'gpt2.tiktoken'}",
        f"eval.data_dir={shared_data / 'benchmarks'}",
    ]


@pytest.fixture
def connects():
    """Every address this test process connects a socket to (pytest-socket still guards each)."""
    seen = []
    guarded = socket.socket.connect

    def recording(sock, address):
        seen.append(address)
        return guarded(sock, address)

    socket.socket.connect = recording
    yield seen
    if socket.socket.connect is recording:  # pytest-socket may have put the real one back already
        socket.socket.connect = guarded


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_file_passes_dry_run(path, capsys, shared_data, connects):
    """As shipped, a dry run opens no socket to a host but this one (the session is offline, STLM_OFFLINE=1:
    pre-flight lists the hub data and GPT-2 download it did not try, and the GPUs this machine lacks).
    Fitted to this machine, every shipped sweep passes pre-flight (exit 0) with its whole plan."""
    try:
        sweep_main([str(path), "--dry-run"])
    except StlmError as e:
        assert "pre-flight found" in str(e) and "cannot be reached" not in str(e), str(e)
    capsys.readouterr()
    rc = sweep_main([str(path), *fitted(path, shared_data), "--dry-run"])
    assert rc == 0
    assert not [a for a in connects if isinstance(a, tuple) and not is_local(a[0])], connects
    out = capsys.readouterr().out
    assert "pre-flight: data, tokenizers and eval data found; each trial's request fits this machine." in out
    assert "nothing launched" in out
    sweep = load_sweep(path)  # the plan as shipped: fitting it to this machine changed none of the below
    t = sweep.arms[0].cfg.train
    assert f"training: {t.batch_size * t.grad_accum} sequences per step" in out
    assert f"= {sweep.num_trials}" in out
    for arm in sweep.arms:
        assert arm.name in out
        assert f"{arm.count.total:,}" in out  # exact parameter count of every arm
        assert f"{arm.count.flops_per_token:,}" in out
    if sweep.spec.budget:  # every arm is within the budget's tolerance
        b = sweep.spec.budget
        for arm in sweep.arms:
            assert abs(arm.count.total - arm.size) <= b.tolerance * arm.size or not arm.solved, arm.name
    if sweep.spec.search.architecture:
        assert "(100%)" in out
    # arms are matched to the control, not just the target: the dry run states the largest gap, and
    # every shipped ablation keeps it within 0.5% (or names the arm and the granularity that prevents it)
    if len(sweep.arms) > 1:
        gaps = re.findall(r"^largest pairwise parameter gap(?: at \S+)?: ([0-9.]+)%", out, re.M)
        assert gaps, out
        for gap in gaps:
            assert float(gap) <= 0.5 or re.search(r"^  \S+: \w+ moves in steps of", out, re.M), out
        assert all(float(g) <= 0.5 for g in gaps), f"{path.stem}: largest gap {max(gaps)}%"
        for arm in sweep.arms:
            ctrl = sweep.control_of(arm).count.total
            assert f"{(arm.count.total - ctrl) / ctrl:+.2%}" in out  # each arm's gap to the control


def test_a_gap_the_granularity_cannot_close_is_explained(tmp_path, capsys):
    p = write_sweep(
        tmp_path,
        {
            "budget": {"target": "1M", "tolerance": 0.02, "free": "ffn_dim"},
            "grid": {"model.positional": ["rope", "learned"]},
        },
    )
    assert sweep_main([str(p), "model.multiple_of=16", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "largest pairwise parameter gap: 0.83% (above 0.5%)" in out
    assert (
        "learned: ffn_dim moves in steps of 16, 24,576 parameters a step here; 984,192 is -0.83% from the "
        "control's 992,384, and the next size above (1,008,768, +1.65%) is farther from the control" in out
    )


def test_a_gpu_sweep_on_a_gpuless_machine_is_refused_naming_the_fix(shared_data, tmp_path):
    """Everything else fitted, the shipped GPU request is the one problem pre-flight names: exit 2, the
    numbers and the override that fixes it, nothing written. No GPU is visible to the CLI on any host."""
    path = REPO / "sweeps" / "ffn_sharing.yaml"
    overrides = [o for o in fitted(path, shared_data) if not o.startswith("resources.gpus_per_worker")]
    r = _cli(str(path), *overrides, "--dry-run", cwd=tmp_path, CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == (
        "error: pre-flight found 1 problem in sweep 'ffn_sharing'; nothing was started or written:\n"
        "  1. resources: each trial asks for 1 worker(s) x 1 GPU = 1 GPUs, and this machine (a local Ray) has 0. "
        "Run on CPUs with resources.gpus_per_worker=0 on the command line, or attach to a GPU cluster with --address."
    )
    assert "nothing launched" not in r.stdout and list(tmp_path.iterdir()) == []


def test_compute_matched_sweep_gives_every_arm_the_controls_flops(capsys, shared_data):
    path = REPO / "sweeps" / "ffn_sharing_compute.yaml"
    assert sweep_main([str(path), *fitted(path, shared_data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    sweep = load_sweep(path)
    per_step = 64 * 512  # batch 64 x context 512, one worker
    flops = {a.name: a.count.flops_per_token * a.cfg.train.max_steps * per_step for a in sweep.arms}
    ctrl = flops["none"]
    assert sweep.arm("none").cfg.train.max_steps == 10000  # the control keeps its steps
    assert all(abs(f - ctrl) / ctrl <= 0.005 for f in flops.values()), flops
    assert sweep.arm("ffn_all").cfg.train.max_steps == round(10000 * 324_258_816 / 1_116_982_272)  # 2903
    gap = float(re.search(r"largest pairwise training-FLOPs gap: ([0-9.]+)%", out).group(1))
    assert gap <= 0.5
    for a in sweep.arms:  # the dry run prints steps, tokens and total FLOPs of every arm
        assert re.search(
            rf"^{re.escape(a.name)} .* {a.cfg.train.max_steps} .* {re.escape(format(flops[a.name], '.4g'))} ", out, re.M
        ), a.name
    # trials resolve to the same steps as their arm (the runner trains space.resolve's config)
    space = SearchSpace(sweep)
    assert space.resolve({"arm": "ffn_all", "seed": 1}).train.max_steps == 2903


def test_absolute_token_and_flop_budgets(tmp_path):
    arms = {"grid": {"model.positional": ["rope", "learned"]}}
    p = write_sweep(tmp_path, {"budget": {"tokens": "1M"}, **arms})
    sweep = load_sweep(p)
    assert all(a.cfg.train.max_steps == round(1_000_000 / (16 * 128)) for a in sweep.arms)  # 488 steps of 16 x 128
    p = write_sweep(tmp_path, {"budget": {"target": "1M", "tolerance": 0.02, "free": "ffn_dim", "flops": 2e12}, **arms})
    sweep = load_sweep(p)
    for a in sweep.arms:
        total = a.count.flops_per_token * a.cfg.train.max_steps * 16 * 128
        assert abs(total - 2e12) / 2e12 < 0.005
    bad = [
        ({"tokens": "1M", "flops": 1e12}, "budget.flops fixes"),
        ({"compute": "match"}, None),
        ({"compute": "equal"}, "budget.compute"),
        ({"tolerance": 0.01}, "give a parameter target"),
    ]
    for budget, msg in bad:
        p = write_sweep(tmp_path, {"budget": budget, **arms})
        if msg is None:
            load_sweep(p)
        else:
            with pytest.raises(StlmError, match=msg):
                load_sweep(p)
    p = write_sweep(tmp_path, {"budget": {"compute": "match"}, "grid": {"train.max_steps": [10, 20]}})
    with pytest.raises(StlmError, match="train.max_steps is solved from the compute budget"):
        load_sweep(p)


def test_quickstart_is_a_small_cpu_sweep():
    sweep = load_sweep(QUICKSTART)
    spec = sweep.spec
    assert [a.name for a in sweep.arms] == ["rope", "learned"] and sweep.control_arm == "rope"
    assert sweep.num_trials >= 6 and "train.lr" in spec.search.params
    assert spec.resources.gpus_per_worker == 0 and spec.resources.workers == 1
    assert all(a.count.total < 2_000_000 for a in sweep.arms)
    # arms differ only in the ablated choice and what the budget solve gives back
    rope, learned = (a.cfg.model for a in sweep.arms)
    assert (rope.d_model, rope.n_layers, rope.n_heads) == (learned.d_model, learned.n_layers, learned.n_heads)


# --------------------------------------------------------------------------- arms, seeds, overrides


def test_grid_product_named_arms_and_overrides(tmp_path):
    p = write_sweep(
        tmp_path,
        {
            "grid": {"model.positional": ["rope", "learned"], "model.ffn": ["swiglu", "gelu"]},
            "seeds": [3, 4],
        },
    )
    sweep = load_sweep(p, ["train.max_steps=7"])
    names = [a.name for a in sweep.arms]
    assert names == [
        "positional=rope,ffn=swiglu",
        "positional=rope,ffn=gelu",
        "positional=learned,ffn=swiglu",
        "positional=learned,ffn=gelu",
    ]
    assert sweep.control_arm == names[0]  # default control: the first arm
    assert all(a.cfg.train.max_steps == 7 for a in sweep.arms)
    assert sweep.arms[3].cfg.model.positional == "learned" and sweep.arms[3].cfg.model.ffn == "gelu"
    # cells are seed-major: an interrupted sweep has every arm on the first seed
    assert sweep.cells[:4] == [(n, 3) for n in names]


def test_budget_rematches_every_arm(tmp_path):
    p = write_sweep(
        tmp_path,
        {
            "budget": {"target": "1M", "tolerance": 0.02, "free": "ffn_dim"},
            "grid": {"model.ffn": ["swiglu", "gelu"]},
        },
    )
    sweep = load_sweep(p)
    swiglu, gelu = sweep.arms
    for a in sweep.arms:
        assert abs(a.count.total - 1_000_000) <= 20_000
    assert gelu.cfg.model.effective_ffn_dim > swiglu.cfg.model.effective_ffn_dim  # two matrices: wider


def test_infeasible_arm_fails_before_launch_with_nearest_sizes(tmp_path):
    p = write_sweep(
        tmp_path,
        {
            "budget": {"target": "50k", "tolerance": 0.01, "free": "ffn_dim"},
            "grid": {"model.positional": ["rope", "learned"]},
        },
    )
    with pytest.raises(StlmError) as e:
        load_sweep(p)
    msg = str(e.value)
    assert "arm 'rope'" in msg and "nearest feasible" in msg and "50,000" in msg


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"grid": {"model.positonal": ["rope"]}}, "'model.positional'"),
        ({"grid": {"model.positional_encoding": ["rope"]}}, "'model.positional'"),
        ({"arms": [{"name": "a", "set": {"train.learning_rate": 1e-3}}]}, "train.lr"),
        ({"search": {"params": {"train.lrr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}}, "'train.lr'"),
        ({"serach": {}}, "'search'"),
        ({"grid": {"model.positional": ["rope", "spiral"]}}, "model.positional"),
        ({"search": {"algorithm": "cmaes"}}, "tpe"),
        ({"search": {"params": {"train.lr": {"type": "loguniform", "low": 0, "high": 1e-2}}}}, "low > 0"),
        ({"scheduler": {"type": "pbt"}}, "pbt is not supported"),
        ({"control": "ropee", "grid": {"model.positional": ["rope", "learned"]}}, "Did you mean 'rope'"),
        ({"grid": {"model": ["x"]}}, "config section"),
        (
            {
                "grid": {"train.lr": [1e-3, 2e-3]},
                "search": {"params": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
            },
            "or searched, not both",
        ),
        ({"search": {"architecture": True}}, "needs a `budget`"),
        ({"metric": ["val_bpb", "params"], "mode": ["min"]}, "one mode per metric"),
    ],
)
def test_bad_sweeps_name_the_key(tmp_path, body, needle):
    with pytest.raises(StlmError) as e:
        load_sweep(write_sweep(tmp_path, body))
    assert needle in str(e.value)


def test_every_axis_key_is_a_config_leaf():
    assert "model.positional" in CONFIG_KEYS and "train.lr" in CONFIG_KEYS
    assert "model.sharing.mode" in CONFIG_KEYS and "model" not in CONFIG_KEYS


# --------------------------------------------------------------------------- the Optuna space


def _ask_all(space: SearchSpace, sampler=None):
    """Drive the define-by-run space exactly as Ray's OptunaSearch does: enqueue the partial points, ask."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler or space.sampler())
    points = space.points()
    for p in points:
        study.enqueue_trial(p)
    configs = []
    for i in range(len(points)):
        trial = study.ask()
        extra = space(trial) or {}
        configs.append({**trial.params, **extra})
        study.tell(trial, float(i % 3))
    return points, configs


def test_every_cell_runs_and_optuna_samples_the_knobs(tmp_path):
    p = write_sweep(
        tmp_path,
        {
            "grid": {"model.positional": ["rope", "learned"]},
            "seeds": [0, 1],
            "search": {
                "algorithm": "tpe",
                "samples": 3,
                "params": {
                    "train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                    "train.warmup_steps": {"type": "int", "low": 0, "high": 40},
                    "model.dropout.residual": {"type": "categorical", "choices": [0.0, 0.1]},
                },
            },
        },
    )
    sweep = load_sweep(p)
    space = SearchSpace(sweep)
    points, configs = _ask_all(space)
    assert len(points) == sweep.num_trials == 12
    # the pinned cells come back exactly, each (arm, seed) `samples` times
    assert [(c["arm"], c["seed"]) for c in configs] == [(p["arm"], p["seed"]) for p in points]
    for cell in sweep.cells:
        assert sum((c["arm"], c["seed"]) == cell for c in configs) == 3
    lrs = [c["train.lr"] for c in configs]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == len(lrs)  # really sampled
    assert all(0 <= c["train.warmup_steps"] <= 40 for c in configs)
    cfg = space.resolve(configs[5])
    assert cfg.train.lr == configs[5]["train.lr"] and cfg.train.seed == configs[5]["seed"]
    assert cfg.model.positional == configs[5]["arm"]
    _recorded_space_holds(space, configs, ["model.dropout.residual", "train.lr", "train.warmup_steps"])


def _recorded_space_holds(space: SearchSpace, configs: list[dict], knobs: list[str]) -> None:
    """The distributions the parent run records (sweep.search, for the report's importances) name the
    searched knobs, not the cell, and hold every sampled point (Optuna's create_trial checks it)."""
    import optuna

    dists = space.distributions()
    assert sorted(dists) == knobs
    for c in configs:
        optuna.trial.create_trial(params={k: c[k] for k in dists}, distributions=dists, value=0.0)


def test_architecture_search_never_leaves_the_budget(tmp_path):
    p = write_sweep(
        tmp_path,
        {
            "config": {"model": {"ffn_dim": None, "multiple_of": 8}},
            "budget": {"target": "1M", "tolerance": 0.03, "free": "d_model"},
            "search": {
                "algorithm": "tpe",
                "samples": 40,
                "architecture": {"n_layers": [2, 6], "n_heads": [2, 4], "ffn_multiple": [2.0, 4.0], "lr": [1e-3, 1e-2]},
            },
        },
    )
    sweep = load_sweep(p)
    space = SearchSpace(sweep)
    _, configs = _ask_all(space)
    shapes = set()
    for c in configs:
        assert not c.get("arch.infeasible")
        cfg = space.resolve(c)  # stlm.models.solve_budget succeeds: the point is feasible
        from stlm.models import count_params

        assert abs(count_params(cfg.model).total - 1_000_000) <= 30_000
        assert cfg.model.n_heads % cfg.model.kv_heads == 0
        assert 2 <= cfg.model.n_layers <= 6 and 1e-3 <= cfg.train.lr <= 1e-2
        shapes.add((cfg.model.n_layers, cfg.model.n_heads, cfg.model.kv_heads))
    assert len(shapes) > 5  # the shape really is searched
    assert space.stats["infeasible"] == 0 and space.stats["points"] == 40
    _recorded_space_holds(
        space, configs, ["model.ffn_multiple", "model.n_heads", "model.n_kv_heads", "model.n_layers", "train.lr"]
    )


def test_architecture_bounds_that_cannot_meet_the_budget_are_refused(tmp_path):
    p = write_sweep(
        tmp_path,
        {
            "config": {"model": {"ffn_dim": None}},
            "budget": {"target": "1M", "tolerance": 0.005, "free": "d_model"},
            "search": {"architecture": {"n_layers": [1, 30], "n_heads": [2, 4]}},
        },
    )
    with pytest.raises(StlmError) as e:
        SearchSpace(load_sweep(p))
    assert "cannot meet the budget" in str(e.value) and "n_layers" in str(e.value)


def test_nsga2_and_random_samplers(tmp_path):
    import optuna

    p = write_sweep(
        tmp_path,
        {
            "search": {
                "algorithm": "nsga2",
                "samples": 4,
                "params": {"train.lr": {"type": "uniform", "low": 1e-3, "high": 2e-3}},
            },
            "metric": ["val_bpb", "params"],
            "mode": ["min", "min"],
        },
    )
    sweep = load_sweep(p)
    assert sweep.spec.multi_objective
    assert isinstance(SearchSpace(sweep).sampler(), optuna.samplers.NSGAIISampler)
    p = write_sweep(tmp_path, {"search": {"algorithm": "random"}})
    assert isinstance(SearchSpace(load_sweep(p)).sampler(), optuna.samplers.RandomSampler)


def test_pareto_front_of_a_multi_objective_sweep():
    from stlm.sweep.analysis.summary import pareto_front

    rows = [
        {"trial_id": "a", "status": "finished", "val_bpb": 1.0, "params": 10},
        {"trial_id": "b", "status": "finished", "val_bpb": 0.9, "params": 20},
        {"trial_id": "c", "status": "finished", "val_bpb": 1.1, "params": 20},  # dominated by a and b
        {"trial_id": "d", "status": "failed", "val_bpb": None, "params": 5},
        {"trial_id": "e", "status": "finished", "val_bpb": 0.8, "params": 30},
    ]
    assert pareto_front(rows, ["val_bpb", "params"], ["min", "min"]) == {"a", "b", "e"}
    assert pareto_front(rows, ["val_bpb", "params"], ["min", "max"]) == {"e"}


# --------------------------------------------------------------------------- bad input through the CLI


def _cli(*args, cwd, **env_vars):
    env = dict(os.environ, STLM_QUIET="1", **env_vars)
    return subprocess.run(
        [sys.executable, "-m", "stlm.sweep", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_bad_input_is_one_paragraph_exit_2(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\ngrid: {model.positional: [rope, learned\n")
    unknown = write_sweep(tmp_path, {"grid": {"model.positonal": ["rope", "learned"]}}, "unknown.yaml")
    infeasible = write_sweep(
        tmp_path, {"budget": {"target": "50k", "tolerance": 0.01, "free": "d_model"}}, "infeasible.yaml"
    )
    cases = [
        (["missing.yaml", "--dry-run"], "does not exist"),
        ([str(bad_yaml), "--dry-run"], "not valid YAML"),
        ([str(unknown), "--dry-run"], "Did you mean 'model.positional'"),
        ([str(infeasible), "--dry-run"], "nearest feasible"),
        ([str(QUICKSTART), "train.max_stepz=3", "--dry-run"], "train.max_steps"),
        ([str(QUICKSTART), "--resume", "--experiment-dir", str(tmp_path / "nothing")], "--resume"),
    ]
    for args, needle in cases:
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        err = r.stderr.strip()
        assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, (args, r.stderr)
        assert err.startswith("error: ") and needle in err, (args, err)
        assert "\n" not in err, (args, err)  # one paragraph


def test_an_unknown_train_controller_choice_is_refused_before_ray_starts(monkeypatch):
    """A typo in STLM_TRAIN_CONTROLLER must not silently pick a path: the driver names the
    variable and the two choices; both choices reach the trials' environment."""
    from stlm.sweep.run.ray_cluster import env_vars

    monkeypatch.setenv("STLM_TRAIN_CONTROLLER", "stock")
    with pytest.raises(StlmError, match=r"STLM_TRAIN_CONTROLLER='stock'.*'in-trial'.*'actor'"):
        env_vars(driver_frees_pgs=True)
    for choice in ("actor", "in-trial"):
        monkeypatch.setenv("STLM_TRAIN_CONTROLLER", choice)
        assert env_vars(driver_frees_pgs=True)["STLM_TRAIN_CONTROLLER"] == choice
    monkeypatch.setenv("STLM_PG_CLEANUP", "dashboard")
    with pytest.raises(StlmError, match=r"STLM_PG_CLEANUP='dashboard'.*'driver'.*'ray'"):
        env_vars(driver_frees_pgs=True)
    monkeypatch.delenv("STLM_PG_CLEANUP")
    # the trials leave Ray Train's placement-group cleaner out only when the driver frees the groups
    assert env_vars(driver_frees_pgs=True)["STLM_PG_CLEANUP"] == "driver"
    assert "STLM_PG_CLEANUP" not in env_vars(driver_frees_pgs=False)
