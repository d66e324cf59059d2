"""DDP under torchrun: gradients averaged over ranks by `DistributedDataParallel` (gloo on CPU, nccl on GPU)."""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from train import distributed
from train.strategies.base import OPTIMIZER_FILE, OptimizerFactory, ProcessGroupStrategy, clip_and_step, load_optimizer_state
from train.strategies.loss_view import LossView, vlm_of


class DDPStrategy(ProcessGroupStrategy):
    """One model replica per process; `no_sync` skips the all-reduce on non-final micro-batches.

    `find_unused_parameters` defaults to True because a text-only micro-batch leaves the projector
    without gradients, which plain DDP treats as an error.
    """

    def __init__(self, backend: str | None = None, find_unused_parameters: bool = True) -> None:
        self.env = distributed.init_distributed(backend)
        self.find_unused_parameters = find_unused_parameters
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def from_train_config(cls, config: Any) -> "DDPStrategy":
        return cls()

    @property
    def full_grads_on_parameters(self) -> bool:
        return True

    def setup(self, model: nn.Module, optimizer_factory: OptimizerFactory) -> tuple[nn.Module, torch.optim.Optimizer]:
        model.to(self.device)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("DDP: the model has no trainable parameters")
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # DDP broadcasts rank 0's parameters and buffers here, so every replica starts identical.
            wrapped: nn.Module = DistributedDataParallel(
                LossView(model), device_ids=ids, find_unused_parameters=self.find_unused_parameters
            )
        else:
            wrapped = LossView(model)
        self.model = wrapped
        self.optimizer = optimizer_factory(model)
        return wrapped, self.optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model: nn.Module):  # noqa: ANN201 - a context manager
        if isinstance(model, DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()

    def clip_and_step(self, max_norm: float) -> float:
        assert self.model is not None and self.optimizer is not None, "setup() first"
        params = [p for p in self.unwrap(self.model).parameters() if p.requires_grad and p.grad is not None]
        return clip_and_step(params, self.optimizer, max_norm)

    def zero_grad(self) -> None:
        assert self.optimizer is not None, "setup() first"
        self.optimizer.zero_grad(set_to_none=True)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return vlm_of(model.module if isinstance(model, DistributedDataParallel) else model)

    def state_dict_for_save(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.unwrap(model).state_dict()

    def save_optimizer(self, directory: str) -> None:
        # Replicas hold identical optimizer states after every step: rank 0 writes the one file.
        assert self.optimizer is not None, "setup() first"
        if self.is_main:
            torch.save(self.optimizer.state_dict(), os.path.join(directory, OPTIMIZER_FILE))

    def load_optimizer(self, directory: str) -> None:
        assert self.optimizer is not None, "setup() first"
        load_optimizer_state(self.optimizer, directory, self.device)

    def close(self) -> None:
        if dist.is_initialized():
            distributed.barrier()
        distributed.destroy()
