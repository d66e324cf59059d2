"""Preference losses (DPO with conservative label smoothing, IPO) over the pairs of a preference `Batch`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlm.batch import Batch

# The per-step sums reported beside the loss (all-reduced over ranks, divided by the pairs): see `PairStats`.
STAT_NAMES = ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected")


@dataclass(frozen=True)
class PreferenceObjective:
    """`prefer.loss` / `beta` / `label_smoothing` of the config."""

    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0


def preference_objective(cfg: Any) -> PreferenceObjective | None:
    """The objective of a `prefer` run's config (a `train.config.TrainConfig`); None for the other recipes."""
    if cfg.recipe != "prefer":
        return None
    return PreferenceObjective(cfg.prefer.loss, cfg.prefer.beta, cfg.prefer.label_smoothing)


def pair_losses(objective: PreferenceObjective, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                reference_chosen: torch.Tensor, reference_rejected: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen reward, rejected reward) from the replies' summed log-probabilities.

    h = (pi_c - ref_c) - (pi_r - ref_r). DPO: -logsigmoid(beta h), with label smoothing ls
    (1 - ls) * -logsigmoid(beta h) + ls * -logsigmoid(-beta h) (conservative DPO). IPO: (h - 1 / (2 beta))^2.
    Rewards: beta * (pi - ref), detached."""
    chosen = policy_chosen - reference_chosen
    rejected = policy_rejected - reference_rejected
    h = chosen - rejected
    beta, ls = objective.beta, objective.label_smoothing
    if objective.loss == "dpo":
        losses = (1 - ls) * F.softplus(-beta * h) + ls * F.softplus(beta * h)  # softplus(-x) = -logsigmoid(x)
    elif objective.loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {objective.loss!r}; known: ['dpo', 'ipo']")
    return losses, beta * chosen.detach(), beta * rejected.detach()


def preference_loss(objective: PreferenceObjective, model: nn.Module, batch: Batch,
                    vision_features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss over the batch's pairs, [4] sums of `STAT_NAMES`) from one forward of the (wrapped) model:
    the policy's reply log-probabilities through the chunked supervised-only head, the reference's from the
    batch (the pre-pass's cache)."""
    if batch.reference_logps is None:
        raise RuntimeError(f"preference batch without reference log-probabilities (records {batch.ids[:4]}): the "
                           "reference pre-pass did not run")
    out = model(batch, vision_features=vision_features, per_row=True)
    policy = -out.per_row.double()  # CE summed per row = minus the reply's log-probability
    reference = batch.reference_logps.to(policy.device, torch.float64)
    n = batch.num_rows // 2
    losses, chosen, rejected = pair_losses(objective, policy[:n], policy[n:], reference[:n], reference[n:])
    stats = torch.stack([(chosen > rejected).double().sum(), (chosen - rejected).sum(), chosen.sum(), rejected.sum()])
    return losses.sum().float(), stats
