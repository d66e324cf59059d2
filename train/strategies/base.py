"""The `Strategy` interface the training loop talks to, and the helpers its implementations share.

A strategy owns everything that differs between one process, DDP (torchrun) and DeepSpeed ZeRO:
wrapping model + optimizer, backward, the optimizer step with clipping, metric all-reduce, gathering
weights for saving, and optimizer state files. The loop never calls `torch.distributed` directly.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import nn

from train import distributed
from train.distributed import DistEnv

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]

OPTIMIZER_FILE = "optimizer.pt"


class Strategy(ABC):
    """How one training step is executed across processes."""

    @property
    @abstractmethod
    def rank(self) -> int:
        """Global rank of this process (0 when single-process)."""

    @property
    @abstractmethod
    def world_size(self) -> int:
        """Number of processes taking part."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Device this process trains on (CPU unless a GPU is assigned)."""
        return torch.device("cpu")

    @abstractmethod
    def setup(self, model: nn.Module, optimizer_factory: OptimizerFactory) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Wrap the model (DDP / DeepSpeed engine) and build its optimizer from `optimizer_factory(unwrapped)`."""

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of `loss` (already scaled by the loop for accumulation)."""

    @abstractmethod
    def clip_and_step(self, max_norm: float) -> float:
        """Clip gradients to `max_norm` (<= 0: no clipping), step the optimizer; return the pre-clip grad norm."""

    @abstractmethod
    def zero_grad(self) -> None:
        """Clear gradients after a step."""

    @abstractmethod
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all processes (in place and returned)."""

    @abstractmethod
    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's module inside any wrapper."""

    @abstractmethod
    def state_dict_for_save(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full (gathered, under ZeRO-3) state dict of the unwrapped model; meaningful on the main rank."""

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Gathered values of the trainable parameters only (a checkpoint's weights); collective like
        `state_dict_for_save`. ZeRO-3 overrides it so that frozen partitions are never gathered."""
        full = self.state_dict_for_save(model)
        return {n: full[n] for n, p in self.unwrap(model).named_parameters() if p.requires_grad and n in full}

    @abstractmethod
    def barrier(self) -> None:
        """Wait for all processes."""

    def broadcast_object(self, value: object) -> object:
        """Rank 0's `value` on every rank (a picklable object; every rank calls it)."""
        return value

    def all_gather_object(self, value: object) -> list[object]:
        """Every rank's `value`, in rank order, on every rank (a picklable object; every rank calls it)."""
        return [value]

    @abstractmethod
    def save_optimizer(self, directory: str) -> None:
        """Write this strategy's optimizer state into `directory` (every rank calls it)."""

    @abstractmethod
    def load_optimizer(self, directory: str) -> None:
        """Restore the optimizer state written by `save_optimizer`."""

    def loss_module(self, model: nn.Module) -> nn.Module:
        """The module a pass outside the training step (the packing self-check) calls with a Batch for the VLM's
        `TokenLoss`: the unwrapped VLM behind a plain `LossView` (no DDP / engine bookkeeping; ZeRO-3's gathering
        hooks are on the modules themselves). FSDP2 returns its root, whose forward gathers the weights outside
        its units (embeddings, LM head)."""
        from train.strategies.loss_view import LossView

        return LossView(self.unwrap(model))

    @property
    def shards_checkpoints(self) -> bool:
        """Whether checkpoints hold each rank's shards of the trainable weights and optimizer state
        (`save_sharded` / `load_sharded`, FSDP2 through torch.distributed.checkpoint; a run may resume them on
        another number of processes) instead of one gathered `trainable.safetensors` beside the optimizer files."""
        return False

    def save_sharded(self, directory: str, model: nn.Module) -> None:
        """Write the trainable weights and the optimizer state as shards into `directory` (every rank calls it)."""
        raise NotImplementedError(f"{type(self).__name__} writes gathered checkpoints")

    def load_sharded(self, directory: str, model: nn.Module) -> None:
        """Restore what `save_sharded` wrote, resharded to this run's processes."""
        raise NotImplementedError(f"{type(self).__name__} reads gathered checkpoints")

    def no_sync(self, model: nn.Module):  # noqa: ANN201 - a context manager
        """Context to skip gradient synchronisation on non-final micro-batches (DDP); a no-op by default."""
        import contextlib

        return contextlib.nullcontext()

    def full_parameters(self, model: nn.Module, modify: bool = False,
                        only: list[nn.Parameter] | None = None):  # noqa: ANN201 - a context manager
        """Context in which `unwrap(model)` holds full, readable (and, with `modify`, writable) weights on every
        rank (`only`: just those parameters). A no-op here; ZeRO-3 gathers partitions
        (e.g. `deepspeed.zero.GatheredParameters(..., modifier_rank=0)`)."""
        import contextlib

        return contextlib.nullcontext()

    def model_init_context(self):  # noqa: ANN201 - a context manager
        """Context in which the recipe loads the model. A no-op here; DeepSpeed ZeRO-3 loads the LLM partitioned
        across ranks in it (no rank ever holds the whole model)."""
        import contextlib

        return contextlib.nullcontext()

    @property
    def partitions_parameters(self) -> bool:
        """Whether every parameter, frozen ones too, is partitioned across ranks (ZeRO-3), so that no rank may run
        any module alone: a rank-local encoder pass would leave the others' collectives waiting."""
        return False

    def use_cached_vision_features(self) -> None:
        """Told before `setup` when the vision features come from a cache filled before training, so that no
        forward pass runs the vision encoder. A no-op here; ZeRO-3 then leaves the encoder out of the passes that
        keep text-only micro-batches in step with the others."""

    @property
    def full_grads_on_parameters(self) -> bool:
        """Whether, after the last backward of a step and before `clip_and_step`, every trainable parameter's `.grad`
        holds its full, reduced gradient (one process, DDP), so that per-group norms can be read there (spike
        reports). False by default: ZeRO keeps partitioned gradients in its own buffers, FSDP2 holds shards."""
        return False

    @property
    def keeps_master_weights(self) -> bool:
        """Whether the strategy keeps fp32 master weights of bf16 parameters itself (DeepSpeed's bf16 optimizer)."""
        return False

    def autocast(self, precision: str):  # noqa: ANN201 - a context manager
        """Context for forward passes: bf16 autocast on the strategy's device, nothing for fp32.

        DeepSpeed overrides this with a no-op (its engine casts by its JSON config)."""
        import contextlib

        if precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def close(self) -> None:
        """Release process groups etc. at the end of a run (every rank calls it)."""

    def abort(self) -> None:
        """Release process groups etc. after this rank failed: no collective, since the other ranks may be
        anywhere (waiting on one would hang this rank too)."""

    @classmethod
    def from_train_config(cls, config: object) -> "Strategy":
        """Build from a `train.config.TrainConfig` (precision, deepspeed_config, batch sizes...)."""
        return cls()


class ProcessGroupStrategy(Strategy):
    """A strategy over torchrun's process group: rank, world size and device are `self.env`'s (set by the
    subclass from `train.distributed`), metrics are summed and processes wait through `train.distributed`."""

    env: DistEnv

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def device(self) -> torch.device:
        return self.env.device

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(tensor)

    def barrier(self) -> None:
        distributed.barrier()

    def abort(self) -> None:
        distributed.destroy()

    def broadcast_object(self, value: object) -> object:
        return distributed.broadcast_object(value)

    def all_gather_object(self, value: object) -> list[object]:
        return distributed.all_gather_object(value)


def clip_and_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip the gradients of `params` to `max_norm` (0: no clipping), step, and return the pre-clip norm."""
    if max_norm and max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
    optimizer.step()
    return float(norm)


def load_optimizer_state(optimizer: torch.optim.Optimizer, directory: str, device: torch.device | str) -> None:
    """Load `OPTIMIZER_FILE` from a checkpoint (tensors only: weights_only=True), or say it is missing."""
    path = os.path.join(directory, OPTIMIZER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no optimizer state in checkpoint {directory!r} (expected {OPTIMIZER_FILE})")
    optimizer.load_state_dict(torch.load(path, map_location=device, weights_only=True))
