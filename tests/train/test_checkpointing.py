"""Tests for train.checkpointing and the final output: atomic dirs, pruning, RNG, phase-1 reload as a full model."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from train.checkpointing import (latest_checkpoint, list_checkpoints, resolve_resume, rng_state, set_rng_state)
from train.recipes import run


def test_rng_state_roundtrip() -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_keep_last_and_ignores_partial_dirs(make_cfg, tmp_path) -> None:
    cfg = make_cfg(save_every=1, keep_last=2, max_steps=4)
    partial = tmp_path / "run" / "checkpoints" / ".step-00000009.tmp"
    partial.mkdir(parents=True)
    run(cfg)
    names = [p.name for p in list_checkpoints(cfg.checkpoint.output_dir)]
    assert names == ["step-00000003", "step-00000004"]
    assert latest_checkpoint(cfg.checkpoint.output_dir).name == "step-00000004"
    assert resolve_resume("none", cfg.checkpoint.output_dir) is None
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        resolve_resume(str(tmp_path), cfg.checkpoint.output_dir)


def test_phase1_output_reloads_as_full_model_and_feeds_phase2(make_cfg, tmp_path) -> None:
    from vlm.model import VisionLanguageModel

    align = make_cfg(recipe="align", model={"template": None}, output_dir=str(tmp_path / "p1"), max_steps=2)
    run(align)
    model = VisionLanguageModel.load(tmp_path / "p1")
    assert model.config.template == "plain"
    from safetensors.torch import load_file

    weights = load_file(str(next((tmp_path / "p1" / "checkpoints").glob("step-*")) / "trainable.safetensors"))
    for name, value in model.projector.state_dict().items():
        assert torch.equal(value, weights[f"projector.{name}"])
    ids = torch.tensor([[5, 6, 7]])
    assert model(input_ids=ids).logits.shape[:2] == (1, 3)
    phase2 = make_cfg(model={"init_from": str(tmp_path / "p1"), "template": "vicuna_v1"},
                      output_dir=str(tmp_path / "p2"), max_steps=1)
    result = run(phase2)
    assert result.steps == 1
    again = VisionLanguageModel.load(tmp_path / "p2")
    assert again.config.template == "vicuna_v1"


def test_instruct_inheriting_plain_template_is_an_error(make_cfg, tmp_path) -> None:
    from train.config import ConfigError

    run(make_cfg(recipe="align", model={"template": None}, output_dir=str(tmp_path / "p1"), max_steps=1))
    with pytest.raises(ConfigError, match="template 'plain'"):
        run(make_cfg(model={"init_from": str(tmp_path / "p1"), "template": None}, output_dir=str(tmp_path / "p2")))


def test_in_process_resume_from_a_middle_checkpoint_is_exact(make_cfg, tmp_path) -> None:
    import shutil

    full = run(make_cfg(save_every=3, keep_last=3, max_steps=6, output_dir=str(tmp_path / "a"),
                        data={"group_by": "modality_length"}))
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000003", tmp_path / "mid")
    again = run(make_cfg(save_every=3, max_steps=6, output_dir=str(tmp_path / "b"), resume=str(tmp_path / "mid"),
                         data={"group_by": "modality_length"}))
    assert again.resumed_from == tmp_path / "mid"
    assert again.losses == full.losses[3:]
    with pytest.raises(ValueError, match="global_batch_size"):
        run(make_cfg(global_batch_size=8, max_steps=6, output_dir=str(tmp_path / "c"), resume=str(tmp_path / "mid")))
