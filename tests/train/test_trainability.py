"""Tests for train.trainability: each part's state per recipe and LLM mode, a part against the recipe stops the run
by name before the engine starts, a frozen part that changes in step 1 stops it, merge-lora keeps the vision tower."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from train.recipe_registry import get_recipe
from train.recipes import build_model, prepare_model, run
from train.strategies.single import SingleProcessStrategy
from train.trainability import TrainabilityCheck, TrainabilityError, audit


def _prepared(cfg):  # noqa: ANN001, ANN202
    model = build_model(cfg)
    prepare_model(model, cfg)
    return model


def _check(model, cfg) -> TrainabilityCheck:  # noqa: ANN001
    return TrainabilityCheck(model, get_recipe(cfg.recipe), cfg.trainable.llm_mode, cfg.trainable.unfreeze_vision_last_n)


@pytest.mark.parametrize("over, expected", [
    (dict(recipe="align", model={"template": None}), {"vision": "frozen", "projector": "trains", "llm": "frozen"}),
    (dict(), {"vision": "frozen", "projector": "trains", "llm": "trains"}),
    (dict(llm_mode="lora"), {"vision": "frozen", "projector": "trains", "llm": "frozen", "lora": "trains"}),
    (dict(llm_mode="frozen"), {"vision": "frozen", "projector": "trains", "llm": "frozen"}),
    (dict(unfreeze_vision_last_n=1), {"vision": "partly trains", "projector": "trains", "llm": "trains"}),
])
def test_each_part_is_in_the_state_its_recipe_asks(make_cfg, over, expected) -> None:
    cfg = make_cfg(**over)
    model = _prepared(cfg)
    states = {name: group.state for name, group in audit(model).items()}
    assert states == expected
    line = _check(model, cfg).check_start()
    assert line.startswith("what trains: vision ") and "projector trains" in line


def test_gradient_checkpointing_is_reported(make_cfg) -> None:
    cfg = make_cfg(gradient_checkpointing=True)
    model = _prepared(cfg)
    assert audit(model)["llm"].checkpointed and "llm trains, checkpointed" in _check(model, cfg).check_start()


def test_a_part_training_against_the_recipe_stops_the_run_by_name(make_cfg) -> None:
    """An LLM left trainable in phase 1 (as a freezing bug would) stops the Trainer before the engine starts."""
    from train.loop import Trainer
    from train.recipes import build_data

    cfg = make_cfg(recipe="align", model={"template": None})
    model = _prepared(cfg)
    model.llm.requires_grad_(True)
    strategy = SingleProcessStrategy()
    with pytest.raises(TrainabilityError, match="the llm part trains .* want it frozen"):
        Trainer(cfg, model, build_data(cfg, model, strategy), strategy)
    assert strategy.optimizer is None  # stopped before the strategy built anything


def test_a_frozen_part_that_changes_in_the_first_step_stops_the_run(make_cfg) -> None:
    cfg = make_cfg()
    model = _prepared(cfg)
    check = _check(model, cfg)
    check.before_first_step()
    with torch.no_grad():
        next(model.vision_encoder.parameters()).add_(1e-3)  # what an optimizer holding the frozen tower would do
    with pytest.raises(TrainabilityError, match="the frozen vision part changed in the first optimizer step"):
        check.after_first_step(SingleProcessStrategy())


def test_a_run_prints_what_trains_and_checks_step_one(make_cfg, tmp_path: Path, capsys) -> None:
    cfg = make_cfg(recipe="align", model={"template": None}, max_steps=1, output_dir=str(tmp_path / "run"))
    result = run(cfg)
    assert result.steps == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "what trains: vision frozen; projector trains; llm frozen" in out


@pytest.mark.slow
def test_merge_lora_leaves_the_vision_tower_unchanged(make_cfg, tiny_world, tmp_path: Path) -> None:
    from train.merge_lora import merge_directory
    from vlm.model import VisionLanguageModel

    cfg = make_cfg(llm_mode="lora", max_steps=1, output_dir=str(tmp_path / "lora"))
    run(cfg)
    merge_directory(str(tmp_path / "lora"), str(tmp_path / "merged"))
    base, merged = VisionLanguageModel.load(tiny_world["base"]), VisionLanguageModel.load(tmp_path / "merged")
    for (name, a), (_, b) in zip(base.vision_encoder.named_parameters(), merged.vision_encoder.named_parameters()):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "merged" / "vlm_config.json").read_text())["projector"] == "mlp2x_gelu"
