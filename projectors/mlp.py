"""Token-preserving projectors: `linear`, `mlp{N}x_gelu` and `identity` (K = T)."""
from __future__ import annotations

import torch
from torch import nn

from projectors.base import Projector


class MLPProjector(Projector):
    """N linear layers with GELU between them; submodules `linear_1`, `act`, `linear_2`, ... as in HF Llava."""

    def __init__(self, name: str, vision_hidden_size: int, llm_hidden_size: int, depth: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"projector {name!r}: depth must be >= 1, got {depth}")
        self.name = name
        self.depth = depth
        # Only linear_1 -> act -> linear_2 (with bias) maps onto LlavaMultiModalProjector.
        self.hf_exportable = depth == 2
        self.linear_1 = nn.Linear(vision_hidden_size, llm_hidden_size)
        self.act = nn.GELU()
        for i in range(2, depth + 1):
            self.add_module(f"linear_{i}", nn.Linear(llm_hidden_size, llm_hidden_size))

    def output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(features)
        for i in range(2, self.depth + 1):
            hidden = getattr(self, f"linear_{i}")(self.act(hidden))
        return hidden


class LinearProjector(Projector):
    """A single linear map (LLaVA-1.0's projector)."""

    def __init__(self, name: str, vision_hidden_size: int, llm_hidden_size: int) -> None:
        super().__init__()
        self.name = name
        self.linear = nn.Linear(vision_hidden_size, llm_hidden_size)

    def output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class IdentityProjector(Projector):
    """Passes vision tokens through unchanged; only valid when both widths agree."""

    def __init__(self, name: str, vision_hidden_size: int, llm_hidden_size: int) -> None:
        super().__init__()
        if vision_hidden_size != llm_hidden_size:
            raise ValueError(
                f"projector 'identity' needs equal widths, but the vision encoder gives {vision_hidden_size} "
                f"and the LLM expects {llm_hidden_size}; use 'linear' or 'mlp2x_gelu' instead"
            )
        self.name = name

    def output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
