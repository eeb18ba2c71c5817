"""Typed configuration: one commented dataclass per concern, loaded from YAML.

    cfg = load_config("configs/baseline-10m.yaml", overrides=["train.lr=1e-3"])

Every key is validated before anything runs: an unknown key names the closest valid
key, a wrong type names the expected type, and a value outside its allowed set lists
the allowed values. Errors always carry the dotted key path (``model.ffn``).

A swappable part (``model.ffn``, ``model.positional``, ...) is a string whose allowed
values are the keys of the registry that implements it; those registries live beside
the code (stlm.models.layers.*) and are checked against CHOICES in a test.

    schema.py    the dataclasses (ModelConfig, DataConfig, TrainConfig, EvalConfig, TrackingConfig, Config) and CHOICES
    loading.py   YAML -> Config: coercion, overrides, validation; Config -> YAML
"""

from stlm.config.loading import (
    EMPTY_FILE_HINT,
    build_config,
    dump_yaml,
    flatten,
    from_dict,
    load_config,
    parse_int,
    parse_override,
    path_key,
    read_yaml,
    set_dotted,
    to_dict,
    validate,
)
from stlm.config.schema import (
    CHOICES,
    ByteLevelConfig,
    Config,
    DataConfig,
    DropoutConfig,
    EvalConfig,
    ModelConfig,
    SharingConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "ByteLevelConfig",
    "CHOICES",
    "Config",
    "DataConfig",
    "DropoutConfig",
    "EMPTY_FILE_HINT",
    "EvalConfig",
    "ModelConfig",
    "SharingConfig",
    "TrackingConfig",
    "TrainConfig",
    "build_config",
    "dump_yaml",
    "flatten",
    "from_dict",
    "load_config",
    "parse_int",
    "parse_override",
    "path_key",
    "read_yaml",
    "set_dotted",
    "to_dict",
    "validate",
]
