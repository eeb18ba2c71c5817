"""Training: the one loop (standalone and in Ray Train workers), AdamW, schedules, checkpoints.

from stlm.train import train, load_model
metrics = train(cfg, report=lambda metrics, checkpoint_dir: ...)
model, cfg, tokenizer = load_model("runs/baseline-10m")
"""

from stlm.train.checkpoint import load_model
from stlm.train.device import World
from stlm.train.loop import NonFiniteLossError, train

__all__ = ["train", "load_model", "NonFiniteLossError", "World"]
