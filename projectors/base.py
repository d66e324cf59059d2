"""The projector interface: [n, T, D_vision] vision tokens to [n, K, D_llm] LLM-space tokens."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Projector(nn.Module, ABC):
    """Maps vision tokens into the LLM embedding space; states its output token count K for T inputs."""

    #: registry name this projector was built from (e.g. "mlp2x_gelu")
    name: str
    #: whether HF `LlavaForConditionalGeneration` (linear_1 -> act -> linear_2) can express it
    hf_exportable: bool = False

    @abstractmethod
    def output_tokens(self, num_input_tokens: int) -> int:
        """K for T input tokens (raises ValueError when T does not fit, e.g. a non-square grid)."""

    @abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[n, T, D_vision] -> [n, K, D_llm]."""
