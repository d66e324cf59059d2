"""Tests for train.freezing: a phase-1 step changes the projector and nothing else, bit for bit."""
from __future__ import annotations

import pytest
import torch

from train.freezing import set_trainable, trainable_summary
from train.rules import vision_unfreezing
from train.recipe_registry import RECIPES
from train.recipes import build_model, prepare_model
from train.loop import Trainer
from train.recipes import build_data
from train.strategies.single import SingleProcessStrategy


def test_align_step_changes_only_the_projector(make_cfg) -> None:
    cfg = make_cfg(recipe="align", model={"template": None}, max_steps=1)
    model = build_model(cfg)
    prepare_model(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy = SingleProcessStrategy()
    Trainer(cfg, model, build_data(cfg, model, strategy), strategy).fit()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the projector must have moved"
    assert all(n.startswith("projector.") for n in changed), sorted(changed)
    assert {n for n in before if n.startswith("projector.")} == changed


def test_instruct_modes(make_cfg) -> None:
    model = build_model(make_cfg())
    set_trainable(model, recipe=RECIPES["instruct"], llm_mode="full")
    full = trainable_summary(model)
    assert full["llm"] > 0 and full["projector"] > 0 and "vision" not in full
    set_trainable(model, recipe=RECIPES["instruct"], llm_mode="frozen", unfreeze_vision_last_n=1)
    part = trainable_summary(model)
    assert "llm" not in part and 0 < part["vision"] < sum(p.numel() for p in model.vision_encoder.parameters())
    with pytest.raises(ValueError, match="unknown llm_mode"):
        set_trainable(model, recipe=RECIPES["instruct"], llm_mode="half")
    with pytest.raises(ValueError, match="projector only"):
        vision_unfreezing(RECIPES["align"], 1)  # train.rules, checked before the model loads
