"""The config is the contract every part reads: strict, typed, and with no dead keys."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stlm.config import CHOICES, Config, build_config, flatten, load_config, to_dict
from stlm.errors import StlmError

REPO = Path(__file__).resolve().parents[1]


def _error(data: dict, overrides=()) -> str:
    with pytest.raises(StlmError) as e:
        build_config(data, overrides)
    return str(e.value)


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = build_config({})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(p) == cfg


def test_unknown_key_names_the_dotted_path_and_the_closest_key():
    msg = _error({"model": {"sharing": {"mdoe": "ffn_all"}}})
    assert "model.sharing.mdoe" in msg and "model.sharing.mode" in msg


def test_value_outside_allowed_set_lists_the_allowed_values():
    msg = _error({"model": {"positional": "ropee"}})
    assert "model.positional" in msg and "'ropee'" in msg
    for allowed in CHOICES["model.positional"]:
        assert allowed in msg
    assert "Did you mean 'rope'" in msg


def test_wrong_type_names_key_and_value():
    msg = _error({"train": {"max_steps": "lots"}})
    assert "train.max_steps" in msg and "'lots'" in msg and "integer" in msg
    msg = _error({"model": {"qk_norm": "maybe"}})
    assert "model.qk_norm" in msg


def test_overrides_parse_yaml_scalars_and_human_sizes():
    cfg = build_config({}, ["train.lr=3e-4", "model.n_kv_heads=2", "model.qk_norm=true", "data.max_chars=2M",
                            "eval.tasks=blimp,arc_easy"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.n_kv_heads == 2 and cfg.model.qk_norm is True
    assert cfg.data.max_chars == 2_000_000
    assert cfg.eval.tasks == ["blimp", "arc_easy"]
    assert "train.lrr" in _error({}, ["train.lrr=1"])
    assert "key.sub=value" in _error({}, ["train.lr"])


def test_cross_field_checks_name_the_keys():
    assert "model.n_heads" in _error({"model": {"d_model": 100, "n_heads": 3}})
    assert "model.n_kv_heads" in _error({"model": {"n_heads": 4, "n_kv_heads": 3}})
    assert "model.vocab_size" in _error({"model": {"tokenizer": "gpt2", "vocab_size": 1000}})
    assert "model.dropout.residual" in _error({"model": {"dropout": {"residual": 1.5}}})


def test_missing_and_malformed_files_are_one_paragraph_errors(tmp_path):
    with pytest.raises(StlmError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: [1, 2\n")
    with pytest.raises(StlmError, match="not valid YAML.*line"):
        load_config(bad)


def test_cli_turns_user_errors_into_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  ffn: swigluu\n")
    r = subprocess.run([sys.executable, "-m", "stlm.cli", "count", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "model.ffn" in r.stderr and "Traceback" not in r.stderr


def _all_key_paths(cls, prefix=""):
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        tp = f.type if not isinstance(f.type, str) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            yield from _all_key_paths(type(default), path + ".")
        else:
            yield path, tp


def _attributes_read_in_package() -> set[str]:
    """Every `x.name` attribute read and every getattr(x, "name") in stlm/, outside config.py."""
    names: set[str] = set()
    for py in (REPO / "stlm").rglob("*.py"):
        if py.name == "config.py" and py.parent.name == "stlm":
            continue
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr":
                if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    names.add(str(node.args[1].value))
    return names


def test_every_config_key_is_read_by_the_code():
    """No dead keys: each leaf of the config tree is read somewhere in the package."""
    read = _attributes_read_in_package()
    dead = [path for path, _ in _all_key_paths(Config) if path.rsplit(".", 1)[-1] not in read]
    assert not dead, f"config keys never read by the code: {dead}"


def test_flatten_gives_one_param_per_leaf():
    flat = flatten(to_dict(build_config({})))
    assert set(flat) == {p for p, _ in _all_key_paths(Config)}
