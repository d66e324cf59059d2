"""Token-reducing projectors over the square patch grid: pixel shuffle (space-to-depth) or 2-D average pooling, then an MLP."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from projectors.base import Projector
from projectors.mlp import MLPProjector


def grid_side(name: str, num_tokens: int, factor: int) -> int:
    """Side of the square patch grid for T tokens; a clear error if T is not a square divisible by `factor`."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        hint = (
            " (T - 1 is a square: the encoder seems to keep its CLS token; use select_feature='patch')"
            if math.isqrt(num_tokens - 1) ** 2 == num_tokens - 1 and num_tokens > 1
            else ""
        )
        raise ValueError(f"projector {name!r} needs a square patch grid, but got T={num_tokens} tokens{hint}")
    if side % factor:
        raise ValueError(f"projector {name!r}: grid side {side} (T={num_tokens}) is not divisible by factor {factor}")
    return side


class _GridReducer(Projector):
    """Shared parts: a factor, a grid check, and the MLP that follows the reduction."""

    def __init__(self, name: str, factor: int, mlp_in: int, llm_hidden_size: int) -> None:
        super().__init__()
        if factor < 2:
            raise ValueError(f"projector {name!r}: reduction factor must be >= 2, got {factor}")
        self.name = name
        self.factor = factor
        self.mlp = MLPProjector("mlp2x_gelu", mlp_in, llm_hidden_size, depth=2)

    def output_tokens(self, num_input_tokens: int) -> int:
        side = grid_side(self.name, num_input_tokens, self.factor)
        return (side // self.factor) ** 2

    def reduce(self, grid: torch.Tensor) -> torch.Tensor:
        """[n, D, s, s] -> [n, K, D']."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, t, d = features.shape
        side = grid_side(self.name, t, self.factor)
        grid = features.transpose(1, 2).reshape(n, d, side, side)
        return self.mlp(self.reduce(grid))


class PixelShuffleProjector(_GridReducer):
    """Space-to-depth by F (nanoVLM / Idefics3): each F x F block of tokens becomes one token of width F^2 * D."""

    def __init__(self, name: str, vision_hidden_size: int, llm_hidden_size: int, factor: int) -> None:
        super().__init__(name, factor, vision_hidden_size * factor * factor, llm_hidden_size)

    def reduce(self, grid: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(grid, self.factor).flatten(2).transpose(1, 2)


class AvgPoolProjector(_GridReducer):
    """2-D average pooling by F over the patch grid (LLaVA-NeXT / MobileVLM style), width kept."""

    def __init__(self, name: str, vision_hidden_size: int, llm_hidden_size: int, factor: int) -> None:
        super().__init__(name, factor, vision_hidden_size, llm_hidden_size)

    def reduce(self, grid: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(grid, self.factor).flatten(2).transpose(1, 2)
