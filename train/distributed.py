"""Process-group setup from torchrun's environment (gloo on CPU, nccl on GPU) and small collective helpers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, rank on its node, number of processes, backend and device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun?)") from exc


def read_env() -> DistEnv:
    """The rank layout torchrun exported (RANK, LOCAL_RANK, WORLD_SIZE); a single process when they are absent."""
    world_size = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local_rank = _int_env("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world_size}")
    if world_size > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise ValueError(f"WORLD_SIZE={world_size} but {missing} unset: launch with torchrun --nproc_per_node=N")
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cuda_unavailable_reason() -> str:
    """Why torch sees no GPU, for error messages: hidden, a CPU-only build, or (likely) a driver too old for its CUDA."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "CUDA_VISIBLE_DEVICES is empty (every GPU hidden)"
    if torch.version.cuda is None:
        return "this torch is a CPU-only build"
    return (f"this torch is built for CUDA {torch.version.cuda} but finds no usable GPU: none installed, or an NVIDIA "
            "driver older than that CUDA needs (compare `nvidia-smi`'s 'CUDA Version')")


def default_backend() -> str:
    """nccl when CUDA is usable, gloo otherwise (CPU)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group torchrun describes (idempotent); a no-op returning rank 0 of 1 without torchrun."""
    env = read_env()
    if not env.distributed:
        return env
    backend = backend or default_backend()
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("backend 'nccl' needs CUDA GPUs; on CPU use backend 'gloo'")
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistEnv(env.rank, env.local_rank, env.world_size, dist.get_backend(), env.device)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every process; nothing to wait for in a single process."""
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes in place (and return it)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value: object) -> object:
    """Rank 0's `value` on every rank (as is when not distributed)."""
    if not is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value: object) -> list[object]:
    """Every rank's `value`, in rank order ([value] when not distributed)."""
    if not is_initialized():
        return [value]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def destroy() -> None:
    """Leave the process group, if any."""
    if is_initialized():
        dist.destroy_process_group()
