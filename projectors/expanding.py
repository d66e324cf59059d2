"""Token-expanding projector: each vision token becomes M consecutive LLM tokens (`expand{M}x_mlp2x_gelu`).

Where one vision token holds several things an LLM reads as separate words (the synthetic world's one
patch per grid cell holds a position, a size, a colour and a shape), M output slots per token let the
projector write them as M word-like embeddings instead of packing them into one.
"""
from __future__ import annotations

import torch
from torch import nn

from projectors.base import Projector


class ExpandingProjector(Projector):
    """linear_1 -> GELU -> linear_2 (width M * D_llm), each token's output split into M consecutive tokens."""

    def __init__(self, name: str, vision_hidden_size: int, llm_hidden_size: int, factor: int) -> None:
        super().__init__()
        if factor < 2:
            raise ValueError(f"projector {name!r}: expansion factor must be >= 2, got {factor} (use mlp2x_gelu for 1)")
        self.name = name
        self.factor = factor
        self.linear_1 = nn.Linear(vision_hidden_size, llm_hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(llm_hidden_size, factor * llm_hidden_size)

    def output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens * self.factor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, t, _ = features.shape
        # [n, T, M * D] -> [n, T * M, D]: token t's M slots stay together, in order.
        return self.linear_2(self.act(self.linear_1(features))).reshape(n, t * self.factor, -1)
