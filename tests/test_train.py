"""The training loop on a tiny model and the built-in generated corpus (real modules, real text)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from stlm.config import TrainConfig, build_config, flatten, to_dict
from stlm.errors import StlmError
from stlm.train import checkpoint as ckpt
from stlm.train.device import World, peak_flops_for
from stlm.train.loop import NonFiniteLossError, train, train_step
from stlm.train.optim import build_optimizer, param_groups
from stlm.train.schedules import lr_multiplier

METRIC_KEYS = {
    "step",
    "tokens",
    "train_loss",
    "val_loss",
    "val_bpb",
    "lr",
    "dropout_scale",
    "grad_norm",
    "tokens_per_s",
    "elapsed_s",
}


def tiny(cache_dir, out_dir, **train_kw) -> dict:
    """A 2-layer d_model 64 byte-level model on ~200k characters of the generated corpus."""
    train_cfg = {
        "max_steps": 40,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 5,
        "eval_interval": 10,
        "log_interval": 1,
        "eval_batches": 2,
        "out_dir": str(out_dir),
        "seed": 0,
    }
    train_cfg.update(train_kw)
    return {
        "model": {"tokenizer": "bytes", "n_layers": 2, "d_model": 64, "n_heads": 2, "context_length": 64},
        "data": {"source": "generated", "max_chars": 200_000, "cache_dir": str(cache_dir)},
        "train": train_cfg,
    }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stlm-cache")


@pytest.fixture(scope="module")
def data(cache_dir, tmp_path_factory):
    from stlm.data import prepare

    return prepare(build_config(tiny(cache_dir, tmp_path_factory.mktemp("runs"))))


def run(cfg_dict, data, **kw):
    """train() collecting the per-step loss curve (log_interval=1) and the reports."""
    curve, reports = [], []
    user_report = kw.pop("report", None)

    def report(m, d):
        reports.append((m, d))
        if user_report:
            user_report(m, d)

    final = train(
        build_config(cfg_dict),
        data=data,
        on_log=lambda m: curve.append((m["step"], m["train_loss"])),
        report=report,
        **kw,
    )
    return final, curve, reports


# --------------------------------------------------------------------------- pure logic


def test_lr_schedules_have_their_shapes():
    def mults(**kw):
        tc = TrainConfig(**{"max_steps": 100, "warmup_steps": 10, "min_lr_ratio": 0.1, **kw})
        return np.array([lr_multiplier(s, tc) for s in range(100)])

    for name in ("cosine", "wsd", "constant"):
        m = mults(schedule=name)
        assert np.allclose(m[:10], np.arange(1, 11) / 10), name  # linear warmup reaching 1 at the last warmup step
        assert m.max() <= 1.0 + 1e-12 and m.min() > 0
    cos = mults(schedule="cosine")
    assert np.all(np.diff(cos[10:]) < 0) and cos[-1] == pytest.approx(0.1, abs=1e-3)  # decays monotonically to min
    assert cos[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: midpoint
    w = mults(schedule="wsd", decay_fraction=0.2)
    assert np.all(w[10:80] == 1.0)  # stable until the last 20% of steps
    assert np.all(np.diff(w[80:]) < 0) and w[-1] == pytest.approx(0.1)  # linear decay to min_lr_ratio
    assert np.allclose(np.diff(w[80:]), -0.9 / 20)
    assert np.all(mults(schedule="constant")[10:] == 1.0)
    assert np.all(mults(schedule="cosine", min_lr_ratio=0.0)[-1] < 0.01)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("Tesla T4", None),
    ],
)
def test_peak_flops_table(name, peak):
    assert peak_flops_for(name) == peak


def test_weight_decay_groups_skip_norms_biases_and_embeddings():
    from stlm.models import build_model

    cfg = build_config(
        {
            "model": {
                "tokenizer": "bytes",
                "n_layers": 2,
                "d_model": 64,
                "n_heads": 2,
                "context_length": 64,
                "bias": True,
                "positional": "learned",
            }
        }
    )
    model = build_model(cfg.model)
    decay, no_decay = param_groups(model, cfg.train)
    assert decay["weight_decay"] == cfg.train.weight_decay and no_decay["weight_decay"] == 0.0
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert embeddings, "the model has embedding tables"
    assert all(p.ndim == 2 and id(p) not in embeddings for p in decay["params"])  # only matrices are decayed
    assert all(
        p.ndim < 2 or id(p) in embeddings or "emb" in n.rsplit(".", 1)[-1]
        for n, p in zip(no_decay["names"], no_decay["params"])
    )
    assert any(p.ndim == 1 for p in no_decay["params"]) and embeddings <= {id(p) for p in no_decay["params"]}
    n_all = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_all  # every parameter exactly once
    (everything,) = param_groups(model, TrainConfig(decay_norms_and_embeddings=True))
    assert len(everything["params"]) == n_all and everything["weight_decay"] == 0.1
    opt = build_optimizer(model, cfg.train, torch.device("cpu"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


# --------------------------------------------------------------------------- training behaviour


def test_same_seed_same_curve_and_the_model_learns(cache_dir, tmp_path, data):
    cfg = tiny(cache_dir, tmp_path / "a", max_steps=60, eval_interval=20)
    final_a, curve_a, reports = run(cfg, data)
    final_b, curve_b, _ = run(tiny(cache_dir, tmp_path / "b", max_steps=60, eval_interval=20), data)
    assert curve_a == curve_b and len(curve_a) == 60  # bitwise identical loss curves on CPU
    assert final_a["val_bpb"] == final_b["val_bpb"]
    # the metric names are part of the interface (sweeps, reports, MLflow)
    assert [m["step"] for m, _ in reports] == [20, 40, 60]
    assert set(reports[0][0]) == METRIC_KEYS  # no mfu on CPU
    assert set(final_a) == METRIC_KEYS | {"params", "flops_per_token"}
    assert final_a["tokens"] == 60 * 8 * 64
    # it learns: the loss falls well below the first steps', validation bpb falls too
    first = np.mean([loss for _, loss in curve_a[:5]])
    last = np.mean([loss for _, loss in curve_a[-5:]])
    assert last < 0.75 * first, (first, last)
    assert reports[-1][0]["val_bpb"] < reports[0][0]["val_bpb"] < 0.7 * math.log2(257)  # far below uniform bytes
    # a different seed gives a different curve
    _, curve_c, _ = run(tiny(cache_dir, tmp_path / "c", max_steps=5, eval_interval=5, seed=1), data)
    assert curve_c != curve_a[:5]


def test_resume_continues_the_exact_curve(cache_dir, tmp_path, data):
    full, curve_full, _ = run(tiny(cache_dir, tmp_path / "full"), data)

    class Stop(Exception):
        pass

    def stop_at_20(metrics, checkpoint_dir):
        if metrics["step"] == 20:
            assert Path(checkpoint_dir, "model.pt").is_file()
            raise Stop

    cfg = tiny(cache_dir, tmp_path / "cut")
    with pytest.raises(Stop):
        run(cfg, data, report=stop_at_20)
    path = ckpt.latest_checkpoint(tmp_path / "cut" / "run")
    assert path.name == "step_000020"
    assert not list((tmp_path / "cut" / "run").glob(".*tmp*"))  # no half-written temp dirs left
    resumed, curve_rest, reports = run(cfg, data, resume_from=str(path))
    assert [s for s, _ in curve_rest] == list(range(21, 41))
    assert curve_rest == curve_full[20:]  # bitwise the same continuation
    assert resumed["val_bpb"] == full["val_bpb"]
    a = ckpt.load_model_state(tmp_path / "full" / "run")
    b = ckpt.load_model_state(tmp_path / "cut" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dropout_schedule_is_applied_and_resumes(cache_dir, tmp_path, data):
    cfg = tiny(cache_dir, tmp_path, max_steps=10, eval_interval=5)
    cfg["model"]["dropout"] = {"residual": 0.1, "schedule": "linear", "start": 1.0, "end": 0.0}
    _, _, reports = run(cfg, data)
    from stlm.models.layers.dropout import dropout_scale

    c = build_config(cfg)
    assert [m["dropout_scale"] for m, _ in reports] == [dropout_scale(c.model.dropout, s, 10) for s in (4, 9)]
    assert reports[0][0]["dropout_scale"] > reports[1][0]["dropout_scale"]


def test_nonfinite_loss_stops_with_a_clear_error(cache_dir, tmp_path, data, monkeypatch):
    import stlm.train.loop

    real_build = stlm.train.loop.build_model
    calls = {"n": 0}

    def poisoned_build(model_cfg, tokenizer=None):
        model = real_build(model_cfg, tokenizer)

        def hook(module, args, output):  # the 7th forward pass (step 7) returns a NaN loss
            calls["n"] += 1
            if calls["n"] == 7:
                logits, loss = output
                return logits, loss * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(stlm.train.loop, "build_model", poisoned_build)  # the name the loop calls
    with pytest.raises(NonFiniteLossError, match=r"nan at step 7 \(last good loss [0-9.]+ at step 6\)") as e:
        run(tiny(cache_dir, tmp_path, log_interval=5, eval_interval=5, max_steps=20), data)
    assert isinstance(e.value, StlmError) and "train.lr" in str(e.value)
    # step 5 was checkpointed; nothing after the NaN was
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_000005"]


def test_huge_learning_rate_is_caught(cache_dir, tmp_path, data):
    with pytest.raises(NonFiniteLossError, match="at step"):
        run(tiny(cache_dir, tmp_path, lr=1e9, warmup_steps=0, grad_clip=0.0, log_interval=5, max_steps=40), data)


def test_grad_accumulation_matches_the_big_batch(cache_dir, data):
    from stlm.data.loader import TokenBatcher
    from stlm.models import build_model

    cfg = build_config(tiny(cache_dir, "/unused", grad_clip=0.0))
    x, y = TokenBatcher(data.train, 8, 64, seed=0).next()
    updated = []
    for batches in ([(x, y)], [(x[:4], y[:4]), (x[4:], y[4:])]):
        torch.manual_seed(0)
        model = build_model(cfg.model, data.tokenizer)
        # plain SGD: the update is the gradient itself (Adam's first step is ~lr * sign(g), too coarse to compare)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        loss, gnorm = train_step(model, opt, batches, grad_clip=0.0, amp_dtype=None, device=torch.device("cpu"))
        updated.append(([p.detach().clone() for p in model.parameters()], float(loss), float(gnorm)))
    (p1, l1, g1), (p2, l2, g2) = updated
    assert l1 == pytest.approx(l2, rel=1e-5) and g1 == pytest.approx(g2, rel=1e-4)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(p1, p2))


# --------------------------------------------------------------------------- the command line + MLflow


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    from stlm.tracking import tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"  # absolute: Ray moves a trial's cwd
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    assert tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path.resolve()}/sub/x.db"  # explicit wins


def test_stlm_train_cli_logs_to_mlflow_and_resumes(cache_dir, tmp_path, monkeypatch):
    import yaml
    from mlflow.tracking import MlflowClient

    from stlm.data import prepare
    from stlm.data.loader import val_windows
    from stlm.eval.bpb import evaluate_bpb
    from stlm.train.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STLM_QUIET", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny(cache_dir, "runs", max_steps=20, log_interval=5, eval_interval=10)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))

    assert main(["tiny.yaml", "train.lr=2e-3"]) == 0  # tracking defaults to sqlite:///<cwd>/mlflow.db
    run_dir = tmp_path / "runs" / "tiny"
    assert ckpt.latest_checkpoint(run_dir).name == "step_000020"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("stlm")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FINISHED" and r.info.run_name == "tiny"
    assert r.data.params["train.lr"] == "0.002" and r.data.params["model.d_model"] == "64"
    assert int(r.data.params["params.total"]) > 0 and "flops_per_token" in r.data.params
    assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [5, 10, 15, 20]
    assert [m.step for m in client.get_metric_history(r.info.run_id, "val_bpb")] == [10, 20]
    assert "config.yaml" in [a.path for a in client.list_artifacts(r.info.run_id)]
    n_keys = len(flatten(to_dict(build_config(cfg))))
    assert len(r.data.params) == n_keys + 2  # every config key (+ params.total, flops_per_token)
    from stlm import tracking

    other = tracking.create_run(client, "batching", run_name="many-params")
    tracking.log_params(client, other, {f"p{i}": i for i in range(250)})  # MLflow takes at most 100 per call
    assert len(client.get_run(other).data.params) == 250

    # the same run name again needs --resume; with it, training continues from step 20 in the same MLflow run
    with pytest.raises(StlmError, match="--resume"):
        main(["tiny.yaml", "train.lr=2e-3"])
    assert main(["tiny.yaml", "train.lr=2e-3", "train.max_steps=30", "--resume"]) == 0
    (r2,) = client.search_runs([exp.experiment_id])
    assert r2.info.run_id == r.info.run_id and r2.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(r.info.run_id, "val_bpb")] == [10, 20, 30]
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == [
        "step_000020",
        "step_000030",
    ]  # train.keep_checkpoints=2

    # load_model gives back the trained model: its bpb is the one the run reported
    model, loaded_cfg, tok = ckpt.load_model(run_dir)
    assert loaded_cfg.train.max_steps == 30 and not model.training
    windows = val_windows(prepare(loaded_cfg).val, 64, loaded_cfg.train.eval_batches * loaded_cfg.train.batch_size)
    bpb = evaluate_bpb(model, windows, tok.byte_lengths, "cpu")["val_bpb"]
    reported = client.get_metric_history(r.info.run_id, "val_bpb")[-1].value
    assert bpb == pytest.approx(reported, rel=1e-6)


# --------------------------------------------------------------------------- data parallel


def _ddp_worker(rank: int, world_size: int, cfg_dict: dict, port: int, out: str) -> None:
    import torch.distributed as dist

    import stlm.train.loop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    built, init = [], {}
    real_build = stlm.train.loop.build_model

    def build_and_keep(*a, **k):  # a handle on the model, and a copy of its weights before training
        model = real_build(*a, **k)
        built.append(model)
        init.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return model

    stlm.train.loop.build_model = build_and_keep  # the name the loop calls
    try:
        reports = []
        final = train(build_config(cfg_dict), report=lambda m, d: reports.append((m["step"], d)))
        torch.save(
            {"final": final, "reports": reports, "world": World.detect(), "state": built[0].state_dict(), "init": init},
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_stay_in_sync(cache_dir, tmp_path, data):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny(cache_dir, tmp_path / "runs", max_steps=6, eval_interval=3, log_interval=3, batch_size=2, grad_accum=2)
    mp.spawn(_ddp_worker, args=(2, cfg, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == World(0, 2, 0) and r1["world"].rank == 1
    # identical weights on both ranks after 6 data-parallel steps, and they moved from the init
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    names = list(r0["init"])  # every trainable parameter
    assert len(names) > 10
    unmoved = [k for k in names if torch.equal(r0["init"][k], r0["state"][k])]
    assert not unmoved, f"parameters still at their init after 6 steps: {unmoved}"
    saved = ckpt.load_model_state(tmp_path / "runs" / "run")
    assert all(torch.equal(saved[k], r0["state"][k]) for k in saved)
    # report is called on every rank (a barrier under Ray); only rank 0 writes checkpoints
    assert [s for s, _ in r0["reports"]] == [s for s, _ in r1["reports"]] == [3, 6]
    assert all(d is not None for _, d in r0["reports"]) and all(d is None for _, d in r1["reports"])
    # both ranks saw the same all-reduced metrics; tokens count both ranks' batches
    assert r0["final"] == {
        **r1["final"],
        "elapsed_s": r0["final"]["elapsed_s"],
        "tokens_per_s": r0["final"]["tokens_per_s"],
    }
    assert r0["final"]["tokens"] == 6 * (2 * 2) * 64 * 2  # steps * (batch * accum) * context * ranks
