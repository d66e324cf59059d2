"""Run-time facts of a training process: precision, seeding, accumulation and peak memory."""
from __future__ import annotations

import random

import numpy as np
import torch


def grad_accum_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """global_batch / (micro_batch * world_size), which must divide exactly."""
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ValueError(f"global_batch_size={global_batch} is not divisible by micro_batch_size={micro_batch} x "
                         f"world_size={world_size} = {per_step}")
    return global_batch // per_step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on a bf16-capable GPU, else fp32; bf16 on a CPU is refused with the reason."""
    gpu_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if gpu_bf16 else "fp32"
    if precision == "bf16" and not gpu_bf16:
        from train.distributed import cuda_unavailable_reason

        why = f" ({cuda_unavailable_reason()})" if not torch.cuda.is_available() else ""
        raise ValueError(f"precision=bf16 needs a GPU with bf16 support, but training runs on {device}{why} "
                         "(bf16 on this CPU runs at under 1 GFLOP/s): use precision=fp32 or precision=auto")
    return precision


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory, or this process's peak resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
