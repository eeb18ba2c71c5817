"""`--resume` continues only the plan a sweep started with (issue 28, item 6): the sweep file edited since (a seed
added, an arm's setting changed) is refused naming every difference, before anything is written or Ray starts;
the unchanged file, or one whose data paths were made absolute when it started, resumes. No Ray: the experiment
directory is the one a started sweep leaves (plan.pkl, plan.json, Tune's state file)."""

from __future__ import annotations

import json
import pickle

import pytest

from stlm.cli import main
from stlm.sweep.plan.sweep import absolutize, load_sweep
from stlm.sweep.resilience import layout
from stlm.sweep.resilience.fingerprint import differences, fingerprint

SWEEP = """\
name: tiny
config:
  model: {tokenizer: bytes, d_model: 32, n_layers: 1, n_heads: 2, context_length: 32}
  data: {source: %s, max_chars: 20000}
  train: {max_steps: 20, batch_size: 4, lr: 3.0e-3}
grid:
  model.positional: [rope, learned]
seeds: [0]
search:
  samples: 1
  params:
    train.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
"""


def _started(tmp_path, source="generated", overrides=(), fingerprinted=True):
    """A sweep file and the experiment directory of that sweep once started: (file, directory)."""
    f = tmp_path / "tiny.yaml"
    f.write_text(SWEEP % source)
    sweep = load_sweep(f, list(overrides))
    absolutize(sweep)  # as the driver writes it
    exp = tmp_path / "exp"
    (exp / layout.TUNE).mkdir(parents=True)
    (exp / layout.TUNE / "experiment_state-2025-01-01_00-00-00.json").write_text("{}")
    (exp / layout.PLAN).write_bytes(pickle.dumps(sweep))
    if fingerprinted:
        (exp / layout.PLAN_FINGERPRINT).write_text(json.dumps(fingerprint(sweep)))
    return f, exp


def _resume(capsys, f, exp, *extra):
    code = main(["sweep", str(f), *extra, "--resume", "--dry-run", "--experiment-dir", str(exp)])
    out = capsys.readouterr()
    return code, out.out + out.err


def _listing(exp):
    return sorted(str(p.relative_to(exp.parent)) for p in exp.parent.rglob("*"))


def test_differences_name_each_changed_key(tmp_path):
    f = tmp_path / "tiny.yaml"
    f.write_text(SWEEP % "generated")
    old = fingerprint(load_sweep(f))
    assert differences(old, fingerprint(load_sweep(f))) == []
    changed = differences(old, fingerprint(load_sweep(f, ["seeds=[0,1]", "search.samples=2", "train.batch_size=8"])))
    assert changed[0] == "seeds: [0] -> [0, 1]"
    assert '"samples": 1} -> ' in changed[1] and '"samples": 2}' in changed[1]
    assert "train.batch_size (every arm): 4 -> 8" in changed  # said once, not per arm
    renamed = differences(old, fingerprint(load_sweep(f, ["grid.model.positional=[rope,alibi]"])))
    assert 'the arms: ["rope", "learned"] -> ["rope", "alibi"]' in renamed


@pytest.mark.parametrize("fingerprinted", [True, False])  # False: a directory written before plan.json
def test_an_edited_sweep_file_is_refused_and_the_unchanged_one_resumes(tmp_path, capsys, monkeypatch, fingerprinted):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "corpus.txt"
    data.write_text("Some text to train on. " * 200)
    # started from a relative data path, which the plan holds made absolute
    f, exp = _started(tmp_path, source="corpus.txt", fingerprinted=fingerprinted)
    assert pickle.loads((exp / layout.PLAN).read_bytes()).arms[0].cfg.data.source == str(data)
    before = _listing(exp)
    code, out = _resume(capsys, f, exp)
    assert code == 0, out
    assert "--dry-run: nothing launched" in out

    f.write_text(f.read_text().replace("seeds: [0]", "seeds: [0, 1]").replace("[rope, learned]", "[rope, alibi]"))
    code, out = _resume(capsys, f, exp)
    assert code == 2
    assert "Traceback" not in out
    for said in ("seeds: [0] -> [0, 1]", '["rope", "learned"] -> ["rope", "alibi"]', "--overwrite", "--experiment-dir"):
        assert said in out, out
    f.write_text(SWEEP % "corpus.txt")
    code, out = _resume(capsys, f, exp, "train.lr=0.005")  # an arm's setting changed on the command line
    assert code == 2 and "train.lr (every arm): 0.003 -> 0.005" in out, out
    assert _listing(exp) == before


def test_resume_without_overrides_keeps_the_ones_the_sweep_started_with(tmp_path, capsys):
    f, exp = _started(tmp_path, overrides=["train.max_steps=10"])
    assert _resume(capsys, f, exp)[0] == 0
    code, out = _resume(capsys, f, exp, "train.max_steps=12")
    assert code == 2 and "train.max_steps (every arm): 10 -> 12" in out, out


def test_a_real_resume_is_refused_before_ray_or_a_lock(tmp_path, capsys):
    f, exp = _started(tmp_path)
    f.write_text(f.read_text().replace("samples: 1", "samples: 3"))
    before = _listing(exp)
    code = main(["sweep", str(f), "--resume", "--experiment-dir", str(exp)])
    out = capsys.readouterr()
    assert code == 2 and '"samples": 3' in out.err and "Nothing was written" in out.err, out
    assert _listing(exp) == before  # no lock beside it, no sweep.json, no mlflow.db
    assert not (tmp_path / "mlflow.db").exists()
