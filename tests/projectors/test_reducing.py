"""Tests for the token-reducing projectors: pixel shuffle and average pooling over the patch grid."""
from __future__ import annotations

import pytest
import torch

from projectors.registry import build_projector


@pytest.mark.parametrize("name", ["pixel_shuffle2x_mlp2x_gelu", "avgpool2x_mlp2x_gelu"])
def test_grid_errors(name: str) -> None:
    proj = build_projector(name, 8, 8)
    with pytest.raises(ValueError, match="CLS"):
        proj.output_tokens(17)  # 16 patches + CLS
    with pytest.raises(ValueError, match="CLS"):
        proj(torch.randn(1, 17, 8))
    with pytest.raises(ValueError, match="not divisible by factor 2"):
        proj.output_tokens(9)
    with pytest.raises(ValueError, match="square"):
        proj.output_tokens(12)


def test_pixel_shuffle_groups_neighbouring_patches() -> None:
    proj = build_projector("pixel_shuffle2x_mlp2x_gelu", 1, 4)
    # a 4x4 grid with value = token index; the first output token must gather tokens 0, 1, 4, 5
    grid = torch.arange(16.0).reshape(1, 16, 1)
    side = grid.transpose(1, 2).reshape(1, 1, 4, 4)
    reduced = proj.reduce(side)
    assert reduced.shape == (1, 4, 4)
    assert reduced[0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert reduced[0, 3].tolist() == [10.0, 11.0, 14.0, 15.0]


def test_avgpool_averages_blocks() -> None:
    proj = build_projector("avgpool2x_mlp2x_gelu", 1, 4)
    side = torch.arange(16.0).reshape(1, 1, 4, 4)
    reduced = proj.reduce(side)
    assert reduced[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
