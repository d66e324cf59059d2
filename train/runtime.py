"""Run-time facts of a training process: precision, seeding, accumulation and peak memory."""
from __future__ import annotations

import random

import numpy as np
import torch


def grad_accum_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """global_batch / (micro_batch * world_size), which divides exactly (`train.rules.batch_split`)."""
    return global_batch // (micro_batch * world_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on a bf16-capable GPU, else fp32 (bf16 on a CPU is refused by `train.rules.precision_on`)."""
    gpu_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if gpu_bf16 else "fp32"
    return precision


def reset_peak_memory(device: torch.device) -> None:
    """Start a new GPU peak (a CPU's peak resident set size cannot be reset: there it stays the run's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory since the last `reset_peak_memory`, or this process's peak resident set size on a
    CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
