"""Where a run trains: its rank in the world, the device and precision it resolves to, the device's peak FLOPs
for MFU, and the seeds."""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from stlm.config import TrainConfig
from stlm.errors import StlmError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def detect(cls) -> World:
        """From an initialised torch.distributed process group (Ray Train, torchrun), else one process."""
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
            return cls(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
        return cls()


def resolve_device(tc: TrainConfig, world: World) -> torch.device:
    name = tc.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise StlmError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu.")
        if world.distributed:
            try:  # Ray Train knows which GPU it gave this worker
                # lazy: Ray, only inside a Ray Train worker
                import ray.train.torch

                return ray.train.torch.get_device()
            except Exception:
                return torch.device("cuda", world.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if name == "mps" and not torch.backends.mps.is_available():
        raise StlmError("train.device=mps but MPS is not available; use train.device=auto or cpu.")
    return torch.device(name)


def resolve_amp(tc: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32. auto = bf16 on CUDA, fp32 elsewhere."""
    if tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    (r"H100.*PCIe", 756e12),
    (r"H100 NVL", 835e12),
    (r"H200|H100", 989e12),
    (r"A100", 312e12),
    (r"L40S", 362e12),
    (r"L40\b", 181e12),
    (r"\bL4\b", 121e12),
    (r"RTX 4090", 165e12),
]


def peak_flops(device: torch.device) -> float | None:
    """bf16 dense peak FLOP/s of `device`, or None where unknown (then no mfu is reported)."""
    if device.type != "cuda":
        return None
    return peak_flops_for(torch.cuda.get_device_name(device))


def peak_flops_for(name: str) -> float | None:
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, name):
            return flops
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # pinned host memory makes the copy asynchronous
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
