"""Preference losses against hand computations; the config rules of the `prefer` recipe."""
from __future__ import annotations

import pytest
import torch

from train.errors import ConfigError
from train.preference import PreferenceObjective, pair_losses
from train.rules import check_config

# Two pairs' summed reply log-probabilities: policy chosen / rejected, reference chosen / rejected.
PI_C, PI_R = torch.tensor([-3.0, -6.0], dtype=torch.float64), torch.tensor([-5.0, -4.0], dtype=torch.float64)
REF_C, REF_R = torch.tensor([-4.0, -6.0], dtype=torch.float64), torch.tensor([-4.5, -4.0], dtype=torch.float64)
# h = (pi_c - ref_c) - (pi_r - ref_r): pair 0: 1.0 - (-0.5) = 1.5; pair 1: 0 - 0 = 0


def test_dpo_matches_a_hand_computation() -> None:
    # pair 0: -logsigmoid(0.1 * 1.5) = log(1 + e^-0.15) = log(1.8607080) = 0.6209571; pair 1: log 2 = 0.6931472
    losses, chosen, rejected = pair_losses(PreferenceObjective("dpo", beta=0.1), PI_C, PI_R, REF_C, REF_R)
    assert losses.tolist() == pytest.approx([0.6209571, 0.6931472], abs=1e-7)
    assert chosen.tolist() == pytest.approx([0.1, 0.0]) and rejected.tolist() == pytest.approx([-0.05, 0.0])


def test_dpo_label_smoothing_is_the_conservative_mix() -> None:
    # pair 0: 0.9 * 0.6209571 + 0.1 * log(1 + e^0.15) = 0.5588614 + 0.1 * 0.7709571 = 0.6359571; pair 1: log 2
    losses, _, _ = pair_losses(PreferenceObjective("dpo", beta=0.1, label_smoothing=0.1), PI_C, PI_R, REF_C, REF_R)
    assert losses.tolist() == pytest.approx([0.6359571, 0.6931472], abs=1e-7)


def test_ipo_matches_a_hand_computation() -> None:
    # (h - 1 / (2 beta))^2 with beta = 0.1: (1.5 - 5)^2 = 12.25 and (0 - 5)^2 = 25; beta = 0.5: (1.5 - 1)^2 = 0.25
    losses, _, _ = pair_losses(PreferenceObjective("ipo", beta=0.1), PI_C, PI_R, REF_C, REF_R)
    assert losses.tolist() == pytest.approx([12.25, 25.0])
    losses, _, _ = pair_losses(PreferenceObjective("ipo", beta=0.5), PI_C, PI_R, REF_C, REF_R)
    assert losses.tolist() == pytest.approx([0.25, 1.0])


def test_dpo_gradient_raises_chosen_and_lowers_rejected() -> None:
    pi_c, pi_r = PI_C.clone().requires_grad_(), PI_R.clone().requires_grad_()
    losses, _, _ = pair_losses(PreferenceObjective("dpo", beta=0.1), pi_c, pi_r, REF_C, REF_R)
    losses.sum().backward()
    # d/d pi_c of softplus(-beta h) = -beta * sigmoid(-beta h): pair 1 (h = 0): -0.1 * 0.5 = -0.05
    assert pi_c.grad.tolist()[1] == pytest.approx(-0.05) and pi_r.grad.tolist()[1] == pytest.approx(0.05)
    assert (pi_c.grad < 0).all() and (pi_r.grad > 0).all()


@pytest.mark.parametrize("override, message", [
    ({"prefer": {"beta": 0.0}}, "prefer.beta must be > 0"),
    ({"prefer": {"label_smoothing": 0.5}}, "label_smoothing must be within"),
    ({"prefer": {"loss": "ipo", "label_smoothing": 0.1}}, "applies to prefer.loss=dpo only"),
    ({"data": {"packing": True}}, "recipe=prefer does not pack"),
])
def test_prefer_rules(make_prefer_cfg, override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(make_prefer_cfg(**override))
    check_config(make_prefer_cfg())  # the defaults pass
