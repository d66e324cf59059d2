"""Tests for train.config: YAML loading in sections, typed overrides, unknown keys, the flat keys of before."""
from __future__ import annotations

from pathlib import Path

import pytest

from train.config import (MOVED, ConfigDeprecationWarning, ConfigError, TrainConfig, config_from_dict, load_config,
                          save_config)
from train.rules import check_config

BASE = """
recipe: align
model:
  vision: {spec: "hf:/tmp/vit", select_layer: -2}
  llm: /tmp/llm
  projector: mlp2x_gelu
data:
  data_path: [a.json]
  image_folder: imgs
schedule: {global_batch_size: 8, micro_batch_size: 2}
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
    check_config(cfg)


def test_overrides_are_typed_and_nested(base_yaml: Path) -> None:
    cfg = load_config(base_yaml, ["optim.lr=3e-4", "schedule.micro_batch_size=4", "data.group_by=length",
                                  "model.vision.select_layer=-1", "trainable.gradient_checkpointing=true",
                                  "trainable.lora.target_modules=[q_proj,v_proj]", "data.data_path=b.json"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.schedule.micro_batch_size == 4
    assert cfg.data.group_by == "length"
    assert cfg.model.vision.select_layer == -1
    assert cfg.trainable.gradient_checkpointing is True
    assert cfg.trainable.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.data_path == ["b.json"]


def test_int_widens_to_float_but_not_the_reverse(base_yaml: Path) -> None:
    assert load_config(base_yaml, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match="micro_batch_size: expected an integer"):
        load_config(base_yaml, ["schedule.micro_batch_size=2.5"])


def test_unknown_key_lists_valid_keys(base_yaml: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(base_yaml, ["optim.learning_rate=1"])
    assert "learning_rate" in str(err.value) and "'lr'" in str(err.value) and "projector_lr" in str(err.value)
    with pytest.raises(ConfigError, match="valid keys"):
        config_from_dict({"recipe": "align", "batch": 3})
    with pytest.raises(ConfigError, match="no sub-keys"):
        load_config(base_yaml, ["schedule.seed.x=1"])


def test_bad_values_name_the_key(base_yaml: Path) -> None:
    with pytest.raises(ConfigError, match="llm_mode: 'half' is not one of"):
        load_config(base_yaml, ["trainable.llm_mode=half"])
    with pytest.raises(ConfigError, match="gradient_checkpointing: expected true/false"):
        load_config(base_yaml, ["trainable.gradient_checkpointing=3"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(base_yaml, ["schedule.seed"])
    with pytest.raises(ConfigError, match="null is not allowed"):
        load_config(base_yaml, ["schedule.seed=null"])


def test_validate_catches_incoherent_configs() -> None:
    with pytest.raises(ConfigError, match="init_from"):
        check_config(TrainConfig(data=config_from_dict({"data": {"data_path": ["x"]}}).data))
    cfg = config_from_dict({"model": {"init_from": "d"}, "data": {"data_path": ["x"]},
                            "engine": {"strategy": "deepspeed"}})
    with pytest.raises(ConfigError, match="deepspeed_config"):
        check_config(cfg)


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
        check_config(cfg)
    lora = load_config(root / "llava15_finetune_lora.yaml")
    assert (lora.trainable.lora.r, lora.trainable.lora.alpha, lora.optim.lr, lora.optim.projector_lr) == (128, 256, 2e-4, 2e-5)
    pre = load_config(root / "llava15_pretrain.yaml")
    assert (pre.recipe, pre.schedule.global_batch_size, pre.optim.lr, pre.model.template) == ("align", 256, 1e-3, "plain")
    ft = load_config(root / "llava15_finetune.yaml")
    assert (ft.recipe, ft.schedule.global_batch_size, ft.optim.lr, ft.data.max_length) == ("instruct", 128, 2e-5, 2048)
    next_pre = load_config(root / "llava_next_pretrain.yaml")
    vision = next_pre.model.vision
    assert (vision.image_aspect_ratio, vision.image_grid_pinpoints[0], next_pre.feature_cache.enabled) == ("anyres", [336, 672], False)
    next_ft = load_config(root / "llava_next_finetune.yaml")
    assert (next_ft.optim.lr, next_ft.optim.vision_lr, next_ft.trainable.unfreeze_vision_last_n) == (1e-5, 2e-6, 24)


def test_synthetic_phases_share_one_feature_cache() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    align, instruct = (load_config(root / f"synthetic_{name}.yaml") for name in ("align", "instruct"))
    # Both phases keep the ViT frozen: phase 2 reads the features phase 1 computed instead of re-encoding.
    assert instruct.feature_cache.enabled is True and align.feature_cache.enabled is None  # None: auto, on for a frozen encoder
    assert align.feature_cache.dir == instruct.feature_cache.dir is not None


def test_sections_group_the_keys() -> None:
    cfg = TrainConfig()
    assert list(cfg.to_dict()) == ["recipe", "model", "data", "schedule", "optim", "trainable", "engine", "checkpoint",
                                   "log", "feature_cache", "prefer"]
    assert list(cfg.to_dict()["data"])[-2:] == ["guards", "audit"]
    assert (cfg.schedule.global_batch_size, cfg.engine.strategy, cfg.checkpoint.resume, cfg.log.log_every) == \
        (8, "single", "auto", 1)
    assert (cfg.data.guards.max_skip_ratio, cfg.data.audit.sample, cfg.feature_cache.enabled) == (0.01, 2000, None)
    assert (cfg.prefer.loss, cfg.prefer.beta, cfg.prefer.label_smoothing, cfg.prefer.reference_cache) == \
        ("dpo", 0.1, 0.0, "auto")
    for new in MOVED.values():  # every flat key of before has its place
        node: object = cfg
        for part in new.split("."):
            node = getattr(node, part)


FLAT = """
recipe: align
model: {vision: {spec: "hf:/tmp/vit"}, llm: /tmp/llm}
data: {data_path: [a.json], strict: true, max_skip_ratio: 0.5, audit_sample: 0, audit_strict: true}
global_batch_size: 8
micro_batch_size: 2
seed: 3
llm_mode: frozen
lora: {r: 4}
precision: fp32
output_dir: runs/old
resume: none
tensorboard: false
feature_cache: false
feature_cache_dir: /tmp/features
"""


def test_flat_keys_of_before_load_into_their_sections_with_one_warning_each(tmp_path: Path) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text(FLAT)
    with pytest.warns(ConfigDeprecationWarning) as caught:
        cfg = load_config(path)
    messages = [str(w.message) for w in caught]
    assert "config key 'output_dir' is deprecated, use 'checkpoint.output_dir'" in " | ".join(messages)
    assert any("'data.audit_sample' is deprecated, use 'data.audit.sample'" in m for m in messages)
    assert len(messages) == len(set(messages)) == 15
    assert (cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size, cfg.schedule.seed) == (8, 2, 3)
    assert (cfg.trainable.llm_mode, cfg.trainable.lora.r, cfg.engine.precision) == ("frozen", 4, "fp32")
    assert (cfg.checkpoint.output_dir, cfg.checkpoint.resume, cfg.log.tensorboard) == ("runs/old", "none", False)
    assert (cfg.feature_cache.enabled, cfg.feature_cache.dir) == (False, "/tmp/features")
    assert (cfg.data.guards.strict, cfg.data.guards.max_skip_ratio) == (True, 0.5)
    assert (cfg.data.audit.sample, cfg.data.audit.strict) == (0, True)


def test_flat_overrides_of_before_are_read_with_a_warning(base_yaml: Path) -> None:
    import warnings

    moved = "'global_batch_size' is deprecated, use 'schedule.global_batch_size'"
    with pytest.warns(ConfigDeprecationWarning) as caught:
        cfg = load_config(base_yaml, ["global_batch_size=16", "output_dir=runs/x", "data.strict=true",
                                      "data.audit_sample=0", "feature_cache=false", "lora.r=8", "seed=7"])
    assert len(caught) == 7 and moved in str(caught[0].message)
    assert (cfg.schedule.global_batch_size, cfg.checkpoint.output_dir, cfg.schedule.seed) == (16, "runs/x", 7)
    assert (cfg.data.guards.strict, cfg.data.audit.sample) == (True, 0)
    assert (cfg.feature_cache.enabled, cfg.trainable.lora.r) == (False, 8)
    with warnings.catch_warnings():  # the new keys warn about nothing
        warnings.simplefilter("error", ConfigDeprecationWarning)
        load_config(base_yaml, ["schedule.global_batch_size=16", "feature_cache.enabled=true", "feature_cache.dir=x"])
    with pytest.raises(ConfigError, match=r"both seed \(deprecated\) and schedule.seed"):
        with pytest.warns(ConfigDeprecationWarning):
            config_from_dict({"seed": 1, "schedule": {"seed": 2}})


def test_a_saved_config_round_trips_in_sections_and_an_old_flat_one_loads(base_yaml: Path, tmp_path: Path) -> None:
    import yaml

    cfg = load_config(base_yaml, ["schedule.max_steps=5", "data.guards.strict=true", "trainable.lora.r=4"])
    save_config(cfg, tmp_path / "train_config.yaml")
    saved = yaml.safe_load((tmp_path / "train_config.yaml").read_text())
    assert saved["schedule"]["max_steps"] == 5 and saved["data"]["guards"]["strict"] is True
    assert "max_steps" not in saved and "strict" not in saved["data"]
    assert load_config(tmp_path / "train_config.yaml") == cfg
    # a train_config.yaml written before the sections (flat) reads as the same config
    flat = {k: v for k, v in saved.items() if k in ("recipe", "model", "data", "optim")}
    for section in ("schedule", "engine", "checkpoint", "log"):
        flat.update(saved[section])
    flat.update(saved["trainable"], feature_cache=saved["feature_cache"]["enabled"],
                feature_cache_dir=saved["feature_cache"]["dir"])
    data = flat["data"]
    data.update(data.pop("guards"))
    audit = data.pop("audit")
    data.update(audit_sample=audit["sample"], audit_strict=audit["strict"])
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(flat, sort_keys=False))
    with pytest.warns(ConfigDeprecationWarning):
        assert load_config(tmp_path / "old.yaml") == cfg


def test_print_config_shows_the_sections(base_yaml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from app.cli import main

    assert main(["train", str(base_yaml), "micro_batch_size=4", "--print-config"]) == 0
    captured = capsys.readouterr()
    printed = yaml.safe_load(captured.out)
    assert printed["schedule"]["micro_batch_size"] == 4 and printed["data"]["audit"]["sample"] == 2000
    assert {"schedule", "trainable", "engine", "checkpoint", "log", "feature_cache"} <= set(printed)
    assert captured.err.strip().splitlines() == [
        "vlm train: config key 'micro_batch_size' is deprecated, use 'schedule.micro_batch_size' (the old key is read "
        "until the next release)"]
