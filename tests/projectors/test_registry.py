"""Tests for the exact-name projector registry and each projector's K and widths."""
from __future__ import annotations

import pytest
import torch

from projectors.registry import build_projector, known_projectors


@pytest.mark.parametrize(
    "name,t,k",
    [
        ("linear", 16, 16),
        ("identity", 16, 16),
        ("mlp1x_gelu", 16, 16),
        ("mlp2x_gelu", 16, 16),
        ("mlp3x_gelu", 9, 9),
        ("pixel_shuffle2x_mlp2x_gelu", 16, 4),
        ("pixel_shuffle4x_mlp2x_gelu", 16, 1),
        ("avgpool2x_mlp2x_gelu", 16, 4),
        ("avgpool3x_mlp2x_gelu", 36, 4),
    ],
)
def test_shapes_and_backward(name: str, t: int, k: int) -> None:
    torch.manual_seed(0)
    proj = build_projector(name, 24, 24 if name == "identity" else 40)
    assert proj.name == name
    assert proj.output_tokens(t) == k
    x = torch.randn(3, t, 24, requires_grad=True)
    y = proj(x)
    assert y.shape == (3, k, 24 if name == "identity" else 40)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "bad", ["mlp2x_gelu_foo", "xmlp2x_gelu", "mlp0x_gelu", "mlp02x_gelu", "MLP2X_GELU", "mlp", "pixel_shuffle2x", "avgpool1x_mlp2x_gelu"]
)
def test_unknown_or_invalid_names_fail(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        build_projector(bad, 8, 8)
    assert repr(bad) in str(err.value)


def test_unknown_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"known: .*identity.*linear.*mlp\{N\}x_gelu.*pixel_shuffle\{F\}x_mlp2x_gelu"):
        build_projector("qformer", 8, 8)
    assert "avgpool{F}x_mlp2x_gelu" in known_projectors()
