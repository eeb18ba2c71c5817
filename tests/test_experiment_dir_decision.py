"""What `python -m stlm.sweep` does with an experiment directory, for every state it can find and every
combination of --resume, --overwrite and --dry-run: the pure decision the driver acts on (no Ray, no MLflow)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest

from stlm.sweep.resilience import layout
from stlm.sweep.resilience.state import decide, sweep_state

SWEEP = SimpleNamespace(path=Path("sweeps/quickstart.yaml"), overrides=["train.max_steps=30"])
STORE = "/runs/quick"
START = "python -m stlm.sweep sweeps/quickstart.yaml train.max_steps=30 --experiment-dir /runs/quick"
RESUME = "python -m stlm.sweep sweeps/quickstart.yaml --resume --experiment-dir /runs/quick"
STOPPED_EARLY = "holds a sweep that was stopped before its first saved state"

# (state, resume, overwrite, dry_run) -> (action, what the refusal or note must say, or None)
TABLE = {
    # --resume: a sweep to continue, or a dead end that names the command starting it (--overwrite is moot)
    **{(s, True, o, d): ("dead_end", START) for s in ("empty", "other") for o in (False, True) for d in (False, True)},
    **{("planned", True, o, False): ("restart", "it starts again from its plan") for o in (False, True)},
    **{("started", True, o, False): ("resume", None) for o in (False, True)},
    **{(s, True, o, True): ("describe", None) for s in ("planned", "started") for o in (False, True)},
    # --dry-run alone describes whatever is there: it writes nothing, so it refuses nothing
    **{
        (s, False, o, True): ("describe", None) for s in ("empty", "planned", "started", "other") for o in (False, True)
    },
    # a new sweep
    ("empty", False, False, False): ("fresh", None),
    ("empty", False, True, False): ("fresh", None),
    ("planned", False, False, False): ("overwrite", "starting afresh"),  # nothing there had run
    ("planned", False, True, False): ("overwrite", None),
    ("started", False, False, False): ("refused", RESUME),
    ("started", False, True, False): ("overwrite", None),
    ("other", False, False, False): ("refused", "pass --overwrite to delete them"),
    ("other", False, True, False): ("overwrite", None),
}


def test_the_table_covers_every_state_and_flag_combination():
    states = ("empty", "planned", "started", "other")
    assert set(TABLE) == set(itertools.product(states, (False, True), (False, True), (False, True)))


@pytest.mark.parametrize(("state", "resume", "overwrite", "dry_run"), sorted(TABLE))
def test_decision(state, resume, overwrite, dry_run):
    action, says = TABLE[state, resume, overwrite, dry_run]
    decision = decide(state, resume=resume, overwrite=overwrite, dry_run=dry_run)
    assert decision.action == action

    refusal, note = decision.refusal(SWEEP, STORE), decision.note(STORE)
    if action in ("refused", "dead_end"):
        assert note is None
        assert says in refusal, refusal  # the next command, spelled out to copy
        assert STORE in refusal
        if state == "started":  # continuing keeps the plan: the overrides given now are not repeated
            assert "train.max_steps=30" not in refusal
        return
    assert refusal is None
    if says is None:
        assert note is None
    else:
        assert STOPPED_EARLY in note and says in note and STORE in note

    # --resume reads the directory's plan; a new sweep writes it; an overwrite deletes the MLflow runs
    # only of a sweep that never saved a state (a started one's runs are kept, superseded)
    assert decision.reads_plan == (resume and state in ("planned", "started"))
    assert decision.delete_runs == (action == "overwrite" and state == "planned")


def test_sweep_state_of_a_directory(tmp_path):
    exp = tmp_path / "exp"
    assert sweep_state(exp) == "empty"  # not there at all
    exp.mkdir()
    (tmp_path / "exp.lock").write_text("")
    (exp / "driver.lock").write_text("")
    assert sweep_state(exp) == "empty"  # a driver's lock is not a sweep
    (exp / "notes.txt").write_text("mine")
    assert sweep_state(exp) == "other"
    (exp / layout.PLAN).write_bytes(b"plan")
    assert sweep_state(exp) == "planned"
    (exp / layout.TUNE).mkdir()
    (exp / layout.TUNE / "experiment_state-2024-01-01_00-00-00.json").write_text("{}")
    assert sweep_state(exp) == "started"
