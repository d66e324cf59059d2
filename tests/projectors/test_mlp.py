"""Tests for the token-preserving projectors: linear, mlp{N}x_gelu, identity."""
from __future__ import annotations

import pytest
import torch

from projectors.registry import build_projector


def test_mlp2x_gelu_matches_hf_layout() -> None:
    proj = build_projector("mlp2x_gelu", 8, 16)
    assert proj.hf_exportable
    assert sorted(proj.state_dict()) == ["linear_1.bias", "linear_1.weight", "linear_2.bias", "linear_2.weight"]
    x = torch.randn(2, 5, 8)
    expected = proj.linear_2(torch.nn.functional.gelu(proj.linear_1(x)))
    torch.testing.assert_close(proj(x), expected, rtol=0, atol=0)
    for other in ["linear", "mlp1x_gelu", "mlp3x_gelu", "pixel_shuffle2x_mlp2x_gelu", "avgpool2x_mlp2x_gelu"]:
        assert not build_projector(other, 8, 16).hf_exportable, other


def test_identity_needs_equal_widths() -> None:
    with pytest.raises(ValueError, match="equal widths.*24.*40"):
        build_projector("identity", 24, 40)
    x = torch.randn(1, 4, 8)
    assert torch.equal(build_projector("identity", 8, 8)(x), x)
