"""The single-process strategy: one process, one device, plain PyTorch."""
from __future__ import annotations

import os
from typing import Iterable

import torch
from torch import nn

from train.strategies.base import OPTIMIZER_FILE, OptimizerFactory, Strategy, clip_and_step, load_optimizer_state
from train.strategies.decoder_layers import compile_decoder_layers
from train.strategies.loss_view import LossView, vlm_of


class SingleProcessStrategy(Strategy):
    """One process, one device: plain PyTorch."""

    def __init__(self, device: torch.device | str | None = None, compile: bool = False) -> None:
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self.compile = compile
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def from_train_config(cls, config: object) -> "SingleProcessStrategy":
        return cls("cuda:0" if torch.cuda.is_available() else "cpu", compile=config.engine.compile)

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def full_grads_on_parameters(self) -> bool:
        return True

    def setup(self, model: nn.Module, optimizer_factory: OptimizerFactory) -> tuple[nn.Module, torch.optim.Optimizer]:
        model.to(self._device)
        if self.compile:
            compile_decoder_layers(model.llm)
        self.model = LossView(model)
        self.optimizer = optimizer_factory(model)
        return self.model, self.optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _trainable(self) -> Iterable[torch.Tensor]:
        assert self.model is not None, "setup() first"
        return [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]

    def clip_and_step(self, max_norm: float) -> float:
        assert self.optimizer is not None, "setup() first"
        return clip_and_step(list(self._trainable()), self.optimizer, max_norm)

    def zero_grad(self) -> None:
        assert self.optimizer is not None, "setup() first"
        self.optimizer.zero_grad(set_to_none=True)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def unwrap(self, model: nn.Module) -> nn.Module:
        return vlm_of(model)

    def state_dict_for_save(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.unwrap(model).state_dict()

    def barrier(self) -> None:
        return None

    def save_optimizer(self, directory: str) -> None:
        assert self.optimizer is not None, "setup() first"
        torch.save(self.optimizer.state_dict(), os.path.join(directory, OPTIMIZER_FILE))

    def load_optimizer(self, directory: str) -> None:
        assert self.optimizer is not None, "setup() first"
        load_optimizer_state(self.optimizer, directory, self._device)
