"""Tests for train.recipe_registry: one row per recipe drives the config's choices, the freezing and the defaults."""
from __future__ import annotations

import typing

import pytest

from train.config import ConfigError, TrainableConfig, TrainConfig, config_from_dict, load_config
from train.freezing import set_trainable, trainable_summary
from train.optim import PART_OF_PREFIX
from train.recipe_registry import LLM_MODES, RECIPES, Recipe, get_recipe
from train.rules import vision_unfreezing


def _recipe_choices() -> tuple[str, ...]:
    return typing.get_args(typing.get_type_hints(TrainConfig)["recipe"])


def test_config_choices_are_the_registry_rows() -> None:
    assert _recipe_choices() == tuple(RECIPES) == ("align", "instruct", "prefer")
    assert typing.get_args(typing.get_type_hints(TrainableConfig)["llm_mode"]) == LLM_MODES
    with pytest.raises(ConfigError, match=r"recipe: 'finetune' is not one of \['align', 'instruct', 'prefer'\]"):
        config_from_dict({"recipe": "finetune"})


def test_a_new_row_is_a_valid_recipe_choice(tmp_path) -> None:
    """Adding a row is all it takes for `recipe: <name>` to load (in a fresh interpreter: the choices are read
    from the registry when the config module is imported)."""
    import subprocess
    import sys

    path = tmp_path / "c.yaml"
    path.write_text("recipe: projector_only_sft\ndata:\n  data_path: [x.json]\n")
    script = (
        "import dataclasses\n"
        "from train.recipe_registry import RECIPES\n"
        "RECIPES['projector_only_sft'] = dataclasses.replace(RECIPES['instruct'], name='projector_only_sft')\n"
        "from train.config import load_config\n"
        f"print(load_config({str(path)!r}).recipe)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "projector_only_sft"
    with pytest.raises(ConfigError, match="not one of"):
        load_config(path)


def test_rows_name_known_parts_and_unknown_names_list_the_known() -> None:
    for name, row in RECIPES.items():
        assert row.name == name and row.trains <= set(PART_OF_PREFIX.values()) and "projector" in row.trains
    with pytest.raises(ValueError, match=r"unknown recipe 'Instruct'; known: \['align', 'instruct', 'prefer'\]"):
        get_recipe("Instruct")


def test_llm_mode_follows_the_row() -> None:
    assert RECIPES["align"].llm_mode("full") == "frozen"  # the config default reads as "the recipe's default"
    assert [RECIPES["instruct"].llm_mode(m) for m in LLM_MODES] == list(LLM_MODES)
    with pytest.raises(ValueError, match="keeps the LLM frozen; llm_mode='qlora' needs a recipe that trains it"):
        RECIPES["align"].llm_mode("qlora")
    with pytest.raises(ValueError, match="unknown llm_mode 'half'"):
        RECIPES["instruct"].llm_mode("half")


def test_freezing_reads_the_row_not_the_name(make_cfg) -> None:
    """A row under any name freezes by its `trains`: here an LLM-only recipe leaves the projector frozen."""
    from train.recipes import build_model

    model = build_model(make_cfg())
    llm_only = Recipe("llm_only", "test row", trains=frozenset({"llm"}), default_template=None,
                      chat_template_required=True, feature_cache_auto=False)
    set_trainable(model, recipe=llm_only, llm_mode="full")
    counts = trainable_summary(model)
    assert counts["llm"] > 0 and "projector" not in counts and "vision" not in counts
    with pytest.raises(ValueError, match="recipe=llm_only trains llm only; unfreeze_vision_last_n"):
        vision_unfreezing(llm_only, 1)  # train.rules, checked before the model loads
