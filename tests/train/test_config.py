"""Tests for train.config: YAML loading, typed overrides, unknown keys."""
from __future__ import annotations

from pathlib import Path

import pytest

from train.config import ConfigError, TrainConfig, config_from_dict, load_config, save_config

BASE = """
recipe: align
model:
  vision: {spec: "hf:/tmp/vit", select_layer: -2}
  llm: /tmp/llm
  projector: mlp2x_gelu
data:
  data_path: [a.json]
  image_folder: imgs
global_batch_size: 8
micro_batch_size: 2
optim: {lr: 1.0e-3}
"""


@pytest.fixture()
def base_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    return path


def test_yaml_loads_into_nested_dataclasses(base_yaml: Path) -> None:
    cfg = load_config(base_yaml)
    assert cfg.recipe == "align"
    assert cfg.model.vision is not None and cfg.model.vision.spec == "hf:/tmp/vit"
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.data_path == ["a.json"]
    cfg.validate()


def test_overrides_are_typed_and_nested(base_yaml: Path) -> None:
    cfg = load_config(base_yaml, ["optim.lr=3e-4", "micro_batch_size=4", "data.group_by=length",
                                  "model.vision.select_layer=-1", "gradient_checkpointing=true",
                                  "lora.target_modules=[q_proj,v_proj]", "data.data_path=b.json"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.micro_batch_size == 4
    assert cfg.data.group_by == "length"
    assert cfg.model.vision.select_layer == -1
    assert cfg.gradient_checkpointing is True
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.data_path == ["b.json"]


def test_int_widens_to_float_but_not_the_reverse(base_yaml: Path) -> None:
    assert load_config(base_yaml, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match="micro_batch_size: expected an integer"):
        load_config(base_yaml, ["micro_batch_size=2.5"])


def test_unknown_key_lists_valid_keys(base_yaml: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(base_yaml, ["optim.learning_rate=1"])
    assert "learning_rate" in str(err.value) and "'lr'" in str(err.value) and "projector_lr" in str(err.value)
    with pytest.raises(ConfigError, match="valid keys"):
        config_from_dict({"recipe": "align", "batch": 3})
    with pytest.raises(ConfigError, match="no sub-keys"):
        load_config(base_yaml, ["seed.x=1"])


def test_bad_values_name_the_key(base_yaml: Path) -> None:
    with pytest.raises(ConfigError, match="llm_mode: 'half' is not one of"):
        load_config(base_yaml, ["llm_mode=half"])
    with pytest.raises(ConfigError, match="gradient_checkpointing: expected true/false"):
        load_config(base_yaml, ["gradient_checkpointing=3"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(base_yaml, ["seed"])
    with pytest.raises(ConfigError, match="null is not allowed"):
        load_config(base_yaml, ["seed=null"])


def test_validate_catches_incoherent_configs() -> None:
    with pytest.raises(ConfigError, match="init_from"):
        TrainConfig(data=config_from_dict({"data": {"data_path": ["x"]}}).data).validate()
    cfg = config_from_dict({"model": {"init_from": "d"}, "data": {"data_path": ["x"]}, "strategy": "deepspeed"})
    with pytest.raises(ConfigError, match="deepspeed_config"):
        cfg.validate()


def test_save_then_load_roundtrips(base_yaml: Path, tmp_path: Path) -> None:
    cfg = load_config(base_yaml, ["optim.projector_lr=2e-5"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"llava15_pretrain.yaml", "llava15_finetune.yaml", "llava15_finetune_lora.yaml",
            "synthetic_align.yaml", "synthetic_instruct.yaml"} <= set(names)
    for name in names:
        cfg = load_config(root / name)
        cfg.validate()
    lora = load_config(root / "llava15_finetune_lora.yaml")
    assert (lora.lora.r, lora.lora.alpha, lora.optim.lr, lora.optim.projector_lr) == (128, 256, 2e-4, 2e-5)
    pre = load_config(root / "llava15_pretrain.yaml")
    assert (pre.recipe, pre.global_batch_size, pre.optim.lr, pre.model.template) == ("align", 256, 1e-3, "plain")
    ft = load_config(root / "llava15_finetune.yaml")
    assert (ft.recipe, ft.global_batch_size, ft.optim.lr, ft.data.max_length) == ("instruct", 128, 2e-5, 2048)
    next_pre = load_config(root / "llava_next_pretrain.yaml")
    vision = next_pre.model.vision
    assert (vision.image_aspect_ratio, vision.image_grid_pinpoints[0], next_pre.feature_cache) == ("anyres", [336, 672], False)
    next_ft = load_config(root / "llava_next_finetune.yaml")
    assert (next_ft.optim.lr, next_ft.optim.vision_lr, next_ft.unfreeze_vision_last_n) == (1e-5, 2e-6, 24)


def test_synthetic_phases_share_one_feature_cache() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    align, instruct = (load_config(root / f"synthetic_{name}.yaml") for name in ("align", "instruct"))
    # Both phases keep the ViT frozen: phase 2 reads the features phase 1 computed instead of re-encoding.
    assert instruct.feature_cache is True and align.feature_cache is None  # None: auto, on for a frozen encoder
    assert align.feature_cache_dir == instruct.feature_cache_dir is not None
