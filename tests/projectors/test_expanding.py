"""Tests for the token-expanding projector: M slots per vision token, in order, and its errors."""
from __future__ import annotations

import pytest
import torch

from projectors.registry import build_projector


def test_each_token_becomes_m_consecutive_slots() -> None:
    proj = build_projector("expand3x_mlp2x_gelu", 4, 6)
    assert proj.output_tokens(9) == 27
    features = torch.randn(2, 9, 4)
    out = proj(features)
    assert out.shape == (2, 27, 6)
    # Slots 3t..3t+2 depend on token t alone: changing token 4 changes exactly slots 12, 13, 14.
    changed = features.clone()
    changed[:, 4] += 1.0
    diff = (proj(changed) - out).abs().amax(dim=(0, 2))
    assert torch.nonzero(diff > 0).flatten().tolist() == [12, 13, 14]
    # and slot k of a token is the k-th D-wide block of linear_2's output
    direct = proj.linear_2(proj.act(proj.linear_1(features[:, 4])))
    torch.testing.assert_close(out[:, 13], direct[:, 6:12])


def test_factor_one_is_refused() -> None:
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        build_projector("expand1x_mlp2x_gelu", 4, 4)


def test_anyres_refuses_expanding_projector() -> None:
    from vlm.anyres_features import check_anyres

    class Encoder:
        num_tokens = num_patches = 9

    with pytest.raises(ValueError, match="not supported"):
        check_anyres(None, Encoder(), build_projector("expand5x_mlp2x_gelu", 4, 4), "expand5x_mlp2x_gelu")
