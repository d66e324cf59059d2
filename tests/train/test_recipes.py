"""Tests for train.recipes and the `vlm train` CLI: recipe rules, building from parts, overrides from the command line."""
from __future__ import annotations

import pytest
import yaml

from train.config import ConfigError
from train.recipe_registry import RECIPES, get_recipe
from train.recipes import prepare_model, build_model, run


def test_recipe_registry_is_exact() -> None:
    assert sorted(RECIPES) == ["align", "instruct", "prefer"]
    with pytest.raises(ValueError, match="known"):
        get_recipe("Align")


def test_align_refuses_lora(make_cfg) -> None:
    cfg = make_cfg(recipe="align", model={"template": None}, llm_mode="lora")
    with pytest.raises(ConfigError, match="keeps the LLM frozen"):
        prepare_model(build_model(cfg), cfg)


def test_align_builds_from_parts_with_plain_template(make_cfg, tiny_world, monkeypatch) -> None:
    import json
    from pathlib import Path

    parts = tiny_world["root"] / "parts"
    monkeypatch.chdir(parts)  # relative paths, as in configs/synthetic_align.yaml
    vision = {"spec": "hf:vision_clip", "select_layer": -2}
    cfg = make_cfg(recipe="align", model={"init_from": None, "template": None, "vision": vision,
                                          "llm": "llm_llama"}, max_steps=1)
    model = build_model(cfg)
    assert model.config.template == "plain"
    assert Path(model.config.llm) == (parts / "llm_llama").resolve()
    assert model.config.vision.spec == f"hf:{(parts / 'vision_clip').resolve()}"
    assert json.loads(json.dumps(model.config.to_dict()))["projector"] == "mlp2x_gelu"


def test_cli_runs_with_overrides(make_cfg, tmp_path, capsys) -> None:
    from app.cli import main

    cfg = make_cfg(output_dir=str(tmp_path / "cli"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["train", str(path), "schedule.max_steps=1", "optim.lr=1e-4"]) == 0
    assert "done: 1 steps" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "cli" / "train_config.yaml").read_text())
    assert saved["schedule"]["max_steps"] == 1 and saved["optim"]["lr"] == pytest.approx(1e-4)
    assert main(["train", str(path), "optim.learnin_rate=1"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert main(["train", str(path), "trainable.llm_mode=lora", "--print-config", "--resume", "auto"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["checkpoint"]["resume"], printed["trainable"]["llm_mode"]) == ("auto", "lora")


def test_gradient_checkpointing_and_feature_cache_keep_losses(make_cfg, tmp_path) -> None:
    """Recomputing activations, or reading encoder features from the cache, must not change the numbers."""
    base = dict(recipe="align", model={"template": None}, max_steps=4)
    plain = run(make_cfg(**base, output_dir=str(tmp_path / "a")))
    ckpt = run(make_cfg(**base, gradient_checkpointing=True, output_dir=str(tmp_path / "b")))
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-6)
    cached = run(make_cfg(**base, feature_cache=True, feature_cache_dir=str(tmp_path / "fc"),
                          output_dir=str(tmp_path / "c")))
    assert cached.losses == pytest.approx(plain.losses, rel=1e-6)
    assert any((tmp_path / "fc").rglob("*")), "the cache must have been written"
    again = run(make_cfg(**base, feature_cache=True, feature_cache_dir=str(tmp_path / "fc"),
                         output_dir=str(tmp_path / "d")))
    assert again.losses == pytest.approx(plain.losses, rel=1e-6)
