"""Text sources, tokenization into cached memmap shards, and batching.

    from stlm.data import prepare
    data = prepare(cfg)            # PreparedData: .tokenizer .train .val .manifest .cache_path

Modules: generated (the built-in story corpus), sources (hub / local / generated),
prepare (tokenize -> shards + manifest), loader (TokenBatcher, val_windows; imports torch,
so it is not imported here: the tokenization workers spawned by prepare stay light).

Note: the name `stlm.data.prepare` is the function; the module is
`importlib.import_module("stlm.data.prepare")`.
"""

from stlm.data.prepare import PreparedData, prepare

__all__ = ["prepare", "PreparedData"]
