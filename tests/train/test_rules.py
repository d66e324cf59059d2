"""Tests for train.rules: each rule between config values, and that they all run before any weight loads."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from train.config import ConfigError
from train.recipe_registry import RECIPES
from train.rules import batch_split, check, check_config, check_model, precision_on, vision_unfreezing

CPU = torch.device("cpu")
DEEPSPEED = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
ANYRES = {"spec": "hf:/tmp/vit", "image_aspect_ratio": "anyres", "image_grid_pinpoints": [[32, 64]]}


@pytest.mark.parametrize(("over", "message"), [
    ({"global_batch_size": 0}, "must be positive"),
    ({"micro_batch_size": -1}, "must be positive"),
    ({"max_steps": -1, "epochs": 0}, "epochs > 0 or schedule.max_steps > 0"),
    ({"model": {"init_from": None}}, "model.init_from or both model.vision and model.llm"),
    ({"data": {"data_path": []}}, "data.data_path"),
    ({"data": {"max_skip_ratio": 1.5}}, r"data.guards.max_skip_ratio must be within \[0, 1\]"),
    ({"data": {"skip_warmup": 0}}, "data.guards.skip_warmup"),
    ({"data": {"pack_length": 512}}, "data.packing is false"),
    ({"data": {"packing": True, "pack_length": 64}}, "shorter than data.max_length=256"),
    ({"keep_last": 0}, "checkpoint.keep_last must be >= 1"),
    ({"optim": {"betas": [0.9]}}, "optim.betas must hold two numbers"),
    ({"optim": {"scheduler": "cosine_annealing"}}, "optim.scheduler: 'cosine_annealing' is not one of"),
    ({"strategy": "deepspeed"}, "needs engine.deepspeed_config"),
    ({"recipe": "align", "llm_mode": "lora"}, "keeps the LLM frozen; llm_mode='lora'"),
    ({"recipe": "align", "unfreeze_vision_last_n": 2}, "trains projector only; unfreeze_vision_last_n"),
    ({"unfreeze_vision_last_n": 2, "feature_cache": True}, "needs a frozen vision encoder"),
    ({"model": {"init_from": None, "template": None, "vision": {"spec": "hf:/tmp/vit"}, "llm": "/tmp/llm"}},
     "model.template is required when building a new model for recipe=instruct"),
    ({"llm_mode": "qlora", "strategy": "deepspeed", "deepspeed_config": str(DEEPSPEED / "zero3.json")},
     "llm_mode=qlora cannot run under DeepSpeed ZeRO-3"),
    ({"llm_mode": "qlora", "strategy": "fsdp"}, "llm_mode=qlora cannot run under engine.strategy=fsdp"),
    ({"engine": {"strategy": "ddp", "compile": True}}, "engine.compile=true runs under engine.strategy=single or fsdp"),
    ({"engine": {"fsdp": {"cpu_offload": True}}}, "cpu_offload=true needs engine.strategy=fsdp"),
])
def test_each_config_rule_names_its_keys(make_cfg, over, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(make_cfg(**over))


def test_a_good_config_passes_and_qlora_under_zero2_is_allowed(make_cfg) -> None:
    check(make_cfg(), 1, CPU)
    check_config(make_cfg(llm_mode="qlora", strategy="deepspeed", deepspeed_config=str(DEEPSPEED / "zero2.json")))
    check_config(make_cfg(recipe="align", model={"template": None}))  # "full" reads as the recipe's default


def test_engine_settings_the_machine_must_support(make_cfg, monkeypatch) -> None:
    from train.rules import engine_on

    engine_on(make_cfg(engine={"strategy": "fsdp", "compile": True}), CPU)  # g++ is on this machine
    with pytest.raises(ConfigError, match="cpu_offload=true offloads from a GPU, but training runs on cpu"):
        engine_on(make_cfg(engine={"strategy": "fsdp", "fsdp": {"cpu_offload": True}}), CPU)
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(ConfigError, match="'no-such-compiler' not found"):
        engine_on(make_cfg(engine={"compile": True}), CPU)


def test_batch_sizes_divide_over_the_processes() -> None:
    batch_split(256, 32, 8)
    with pytest.raises(ConfigError, match="not divisible"):
        batch_split(10, 4, 1)
    with pytest.raises(ConfigError, match=r"global_batch_size=8 is not divisible .* world_size=3 = 6"):
        batch_split(8, 2, 3)


def test_bf16_refused_on_cpu() -> None:
    precision_on("auto", CPU)
    precision_on("fp32", CPU)
    with pytest.raises(ValueError, match="needs a GPU"):
        precision_on("bf16", CPU)


def test_vision_unfreezing_follows_the_row() -> None:
    vision_unfreezing(RECIPES["instruct"], 24)
    with pytest.raises(ConfigError, match="recipe=align trains projector only"):
        vision_unfreezing(RECIPES["align"], 1)


def test_model_rules_read_the_checkpoint_config_or_the_new_model(make_cfg, tiny_world) -> None:
    anyres = SimpleNamespace(vision=SimpleNamespace(anyres=True), template="vicuna_v1")
    with pytest.raises(ConfigError, match="feature_cache.enabled=true with image_aspect_ratio anyres"):
        check_model(make_cfg(feature_cache=True), anyres)
    new = make_cfg(recipe="align", feature_cache=True, model={"init_from": None, "vision": ANYRES, "llm": "/tmp/l"})
    with pytest.raises(ConfigError, match="anyres"):
        check_model(new, None)
    plain = SimpleNamespace(vision=SimpleNamespace(anyres=False), template="plain")
    with pytest.raises(ConfigError, match="would inherit its template 'plain'"):
        check_model(make_cfg(model={"template": None}), plain)
    check_model(make_cfg(), plain)  # model.template given: nothing inherited
    (tiny_world["root"] / "with_adapters").mkdir(exist_ok=True)
    adapters = tiny_world["root"] / "with_adapters"
    from vlm.checkpoint import LORA_ADAPTER_DIR

    (adapters / LORA_ADAPTER_DIR).mkdir(exist_ok=True)
    with pytest.raises(ConfigError, match="holds LoRA adapters"):
        check_model(make_cfg(llm_mode="qlora", model={"init_from": str(adapters)}), plain)
    with pytest.raises(ConfigError, match="model.init_from=/no/such/dir: no vlm_config.json"):
        check(make_cfg(model={"init_from": "/no/such/dir"}), 1, CPU)


def test_rules_run_before_any_weight_loads(make_cfg, monkeypatch) -> None:
    import train.recipes
    from train.recipes import run

    def no_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was loaded before the rules were checked")

    monkeypatch.setattr(train.recipes, "build_model", no_load)
    monkeypatch.setattr(train.recipes, "load_train_records", no_load)
    # bf16 on a CPU and a checkpoint that does not exist: the rule speaks, not the loader
    with pytest.raises(ConfigError, match="precision=bf16 needs a GPU"):
        run(make_cfg(precision="bf16", model={"init_from": "/no/such/checkpoint"}))
    with pytest.raises(ConfigError, match="keeps the LLM frozen"):
        run(make_cfg(recipe="align", model={"template": None}, llm_mode="lora"))
    with pytest.raises(ConfigError, match="not divisible"):
        run(make_cfg(global_batch_size=5))


# ---------------------------------------------------------------------------- `vlm train`: one line, exit 2
@pytest.mark.parametrize(("overrides", "message"), [
    (["engine.precision=bf16"], "precision=bf16 needs a GPU"),
    (["schedule.global_batch_size=6", "schedule.micro_batch_size=4"], "global_batch_size=6 is not divisible"),
    (["recipe=align", "model.template=null", "trainable.unfreeze_vision_last_n=1"],
     "unfreeze_vision_last_n needs a recipe that trains the vision encoder"),
])
def test_cli_exits_2_with_one_line(make_cfg, tmp_path, capsys, overrides, message) -> None:
    from app.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_cfg(output_dir=str(tmp_path / "out")).to_dict()))
    assert main(["train", str(path), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlm train: ") and message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # stopped before the run wrote anything


def test_a_single_process_strategy_under_torchrun_is_refused(monkeypatch) -> None:
    """Two processes with engine.strategy=single would each train the whole run and write the same output_dir."""
    from train.rules import one_of_many

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one of 2 processes .* engine.strategy=single runs one process"):
        one_of_many("single", 1)
    one_of_many("ddp", 2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    one_of_many("single", 1)
